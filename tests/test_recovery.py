"""streams.recovery.restore through streams.changelog_reader: what a read_committed consumer would copy.

On the real broker: aborted transactions and control batches skipped, a restore that
starts mid-batch (the store's changelog offset after a restore cut short) copies only
what follows, many small fetches give the same store as one, and a restore killed
after some fetches goes on from the offset it stored.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from entities.engine import Engine
from entities.events import EventCodec
from entities.record import SEGMENT_PREFIX
from entities.spec import load_spec
from streams import changelog_reader, recovery
from streams import messages as msg
from streams.kafka_io import CHANGELOG_CONFIG
from streams.store import PartitionStore

pytestmark = pytest.mark.kafka
FRAUD_SPEC = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"


def _headers(start: int) -> list[tuple[str, bytes]]:
    return [(msg.CL_BATCH_START, str(start).encode()), (msg.CL_BATCH_END, str(start + 1).encode())]


async def _topic(bootstrap: str) -> str:
    topic = f"restore-{uuid.uuid4().hex[:8]}-records-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=CHANGELOG_CONFIG)])
    finally:
        await admin.close()
    return topic


async def _write_transactions(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """Committed, aborted, committed again (with a delete); what a read_committed reader must end with."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"t-{topic}")
    await producer.start()
    want: dict[bytes, bytes | None] = {}
    try:
        for n, commit in enumerate([True, False, True]):
            await producer.begin_transaction()
            for i in range(300):
                key, value = f"e{i % 120}".encode(), f"v{n}-{i}".encode() * 20
                if commit and n == 2 and i % 7 == 0:
                    value = None  # type: ignore[assignment]  # a delete
                await producer.send(topic, value, key=key, partition=0, headers=_headers(n))
                if commit:
                    want[key] = value
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    return want


def _stored(store: PartitionStore) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in store.db.items(from_key=b"\x01")}  # type: ignore[arg-type]


def test_restore_skips_aborted_transactions_and_control_batches(kafka_broker, tmp_path: Path) -> None:
    async def run() -> None:
        topic = await _topic(kafka_broker.bootstrap)
        want = await _write_transactions(kafka_broker.bootstrap, topic)
        store = PartitionStore(tmp_path / "s")
        restored = await recovery.restore(kafka_broker.bootstrap, topic, 0, store, {})
        assert restored.records == 600  # the two committed transactions, not the aborted one
        assert restored.resume == 2  # the header of the last committed message
        assert _stored(store) == {k: v for k, v in want.items() if v is not None}
        assert store.changelog_offset() == restored.changelog_end
        store.close()

    asyncio.run(run())


def test_restore_from_the_middle_of_a_batch_and_in_small_fetches(
    kafka_broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        topic = await _topic(kafka_broker.bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            batch = producer.create_batch()  # one batch of 50 messages: offsets 0-49
            for i in range(50):
                batch.append(key=f"k{i}".encode(), value=b"x" * 100, timestamp=None, headers=_headers(i))
            batch.close()
            await (await producer.send_batch(batch, topic, partition=0))
            for i in range(50, 2000):  # then many batches
                await producer.send(topic, b"y" * 500, key=f"k{i}".encode(), partition=0, headers=_headers(i))
            await producer.flush()
        finally:
            await producer.stop()

        whole = PartitionStore(tmp_path / "whole")
        await recovery.restore(kafka_broker.bootstrap, topic, 0, whole, {})

        # A store that already holds offsets 0-19 (a restore cut short inside the first batch).
        part = PartitionStore(tmp_path / "part")
        part.commit([(f"k{i}".encode(), b"x" * 100) for i in range(20)], None, 20)
        monkeypatch.setattr(changelog_reader, "PARTITION_FETCH_BYTES", 4096)  # many fetches
        restored = await recovery.restore(kafka_broker.bootstrap, topic, 0, part, {})
        assert restored.records == 1980
        assert restored.resume == 1999
        assert _stored(part) == _stored(whole)
        assert len(_stored(whole)) == 2000
        whole.close()
        part.close()

    asyncio.run(run())


def test_a_restore_cut_short_goes_on_from_the_offset_it_stored(
    kafka_broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        topic = await _topic(kafka_broker.bootstrap)
        want = await _write_transactions(kafka_broker.bootstrap, topic)
        monkeypatch.setattr(changelog_reader, "PARTITION_FETCH_BYTES", 2048)
        store = PartitionStore(tmp_path / "s")
        fetches = 0

        def refuse_after_three(values: object) -> None:
            nonlocal fetches
            fetches += 1
            if fetches > 3:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError, match="killed"):
            await recovery.restore(kafka_broker.bootstrap, topic, 0, store, {}, check=refuse_after_three)
        cut = store.changelog_offset()
        assert cut > 0
        store.close()  # as after a crash, the store holds what it wrote with its offset
        store = PartitionStore(tmp_path / "s")
        assert store.changelog_offset() == cut
        restored = await recovery.restore(kafka_broker.bootstrap, topic, 0, store, {})
        assert _stored(store) == {k: v for k, v in want.items() if v is not None}
        assert restored.records < 600
        store.close()

    asyncio.run(run())


def test_a_restore_deletes_the_segments_a_checkpoint_cut_by_a_crash_left_unlisted(
    kafka_broker, tmp_path: Path
) -> None:
    """A card's checkpoints on the changelog, the last cut after its head: its deletes never sent."""
    spec = load_spec(FRAUD_SPEC)
    engine, events = Engine(spec), EventCodec(spec)
    codec = engine.codec
    attrs = {"merchant": "m", "category": "c", "amt": 1.5, "merch_lat": 34.0, "merch_long": -81.0}
    messages: list[tuple[bytes, bytes | None]] = []
    for n in range(40):  # a transaction a day: segments fill, then retention drops the oldest
        engine.process(
            [events.build("transaction", f"{n:032x}", "c1", 1_592_741_642_000 + n * 86_400_000, attrs)]
        )
        parts = codec.encode_parts(engine.records["c1"])
        if n == 39:
            deletes = [kv for kv in parts if kv[1] is None]
            assert deletes  # this checkpoint replaced segments
            parts = parts[: -len(deletes)]
        messages += parts

    async def run() -> None:
        topic = await _topic(kafka_broker.bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            for key, value in messages:
                await producer.send(topic, value, key=key, partition=0, headers=_headers(0))
            await producer.flush()
        finally:
            await producer.stop()
        store = PartitionStore(tmp_path / "s")
        got = await recovery.restore(
            kafka_broker.bootstrap, topic, 0, store, {}, listed=codec.listed_segments
        )
        assert got.orphans == [key for key, _ in deletes]  # for the next checkpoint's changelog
        head = store.get_many(["c1"])[0]
        assert head is not None
        keys = [bytes(k) for k in store.db.keys(from_key=SEGMENT_PREFIX)]  # type: ignore[arg-type]
        assert {k for k in keys if k.startswith(SEGMENT_PREFIX)} == set(codec.segment_keys(head))
        restored = codec.decode(head, store.get_raw(codec.segment_keys(head)))
        assert codec.encode(restored) == codec.encode(engine.records["c1"])
        store.close()

    asyncio.run(run())
