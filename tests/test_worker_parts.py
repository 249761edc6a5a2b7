"""The worker's parts, each alone and without a broker: sequencing and the record cache.

The loop over them (``BatchWorker.process``) runs on the real broker in the other
``test_worker_*`` files; here each part gets the inputs that are hard to provoke
there: fetches from the wrong position, replayed offsets, undecodable stored records,
segments a restore swept.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from streaming import ADAPTER, SAMPLE, SPEC

from entities.engine import Engine
from entities.events import Event
from entities.record import segment_key
from entities.spec import Spec
from streams.cache import RECORD_BYTES
from streams.checkpoint import Checkpointer
from streams.kafka_io import Message
from streams.produce import file_events
from streams.sequencing import decode, in_sequence, not_yet_applied
from streams.state import Partition
from streams.store import PartitionStore


class _Consumer:
    """Records the seeks a part asks for."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _messages(first: int, n: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in range(first, first + n)]


@pytest.fixture
def part(spec: Spec, tmp_path: Path) -> Any:
    p = Partition(TopicPartition("events", 0), PartitionStore(tmp_path / "p0"), Engine(spec), position=10)
    yield p
    p.store.close()


@pytest.fixture(scope="module")
def events() -> list[Event]:
    _, items = file_events(SPEC, SAMPLE, 300, adapter=ADAPTER)
    return [e for e in islice(items, 300) if isinstance(e, Event)]


def test_a_fetch_that_continues_the_position_is_kept_and_one_reaching_back_is_trimmed(
    part: Partition,
) -> None:
    consumer: Any = _Consumer()
    assert [m.offset for m in in_sequence(consumer, part, _messages(10, 3))] == [10, 11, 12]
    assert [m.offset for m in in_sequence(consumer, part, _messages(8, 4))] == [10, 11]
    assert in_sequence(consumer, part, _messages(5, 3)) == []
    assert consumer.seeks == []


def test_a_fetch_from_further_on_is_dropped_once_and_the_consumer_seeked_back(part: Partition) -> None:
    consumer: Any = _Consumer()
    assert in_sequence(consumer, part, _messages(12, 3)) == []
    assert consumer.seeks == [(part.tp, 10)]
    # The same gap after the seek is real (transaction markers): accepted.
    assert [m.offset for m in in_sequence(consumer, part, _messages(12, 3))] == [12, 13, 14]
    assert consumer.seeks == [(part.tp, 10)]


def test_invalid_messages_become_dead_letters_with_their_reason(part: Partition, events: list[Event]) -> None:
    codec, _ = file_events(SPEC, SAMPLE, 0, adapter=ADAPTER)
    good, other = events[0], events[1]
    messages = [
        SimpleNamespace(key=good.entity_id.encode(), value=codec.encode(good), offset=10),
        SimpleNamespace(key=None, value=codec.encode(good), offset=11),
        SimpleNamespace(key=b"someone else", value=codec.encode(other), offset=12),
        SimpleNamespace(key=b"k", value=b"{not json", offset=13),
    ]
    dead: list[Message] = []
    decoded, origin = decode(
        codec,
        86_400_000,
        part,
        messages,
        lambda p, m, reason, label: (m.key, reason.encode(), [], m.offset),
        dead,
    )
    assert [e.event_id for e in decoded] == [good.event_id] and origin[id(decoded[0])] is messages[0]
    assert [d[3] for d in dead] == [11, 12, 13]
    assert dead[0][1] == b"null key"
    assert b"differs from the message key" in (dead[1][1] or b"")


def test_events_a_record_already_holds_are_skipped_by_offset(part: Partition, events: list[Event]) -> None:
    first, second = events[0], next(e for e in events if e.entity_id != events[0].entity_id)
    part.engine.record(first.entity_id).offset = 20  # applied up to offset 20 before a restart
    origin = {id(first): SimpleNamespace(offset=20), id(second): SimpleNamespace(offset=21)}
    fresh, skipped = not_yet_applied(part, [first, second], origin)
    assert fresh == [second] and skipped == 1
    assert part.engine.records[second.entity_id].offset == 21


def test_the_cache_drops_least_recently_used_durable_records_and_their_last_scores(
    part: Partition, events: list[Event]
) -> None:
    cache = part.cache
    ids = list(dict.fromkeys(e.entity_id for e in events))[:5]
    for eid in ids:
        part.engine.record(eid)
        part.last[eid] = {"transaction": (0.5, "e", [])}
    cache.note_changed(ids)  # five empty records: RECORD_BYTES each
    cache.budget = 2 * RECORD_BYTES
    cache.mark_changed({ids[0]})  # not durable yet: stays
    cache.load([ids[2]])  # used again: the most recent
    part.evict()
    assert list(cache.records) == [ids[0], ids[2]] and cache.bytes == 2 * RECORD_BYTES
    assert set(part.last) == {ids[0], ids[2]}  # nothing per entity outlives its record in memory
    assert cache.take_changed() == [ids[0]] and cache.changed == set()


def test_an_undecodable_stored_record_is_quarantined_and_the_entity_starts_afresh(
    part: Partition, events: list[Event]
) -> None:
    good, bad = events[0].entity_id, "poisoned"
    record = part.engine.record(good)
    part.store.commit([(good, part.engine.codec.encode(record)), (bad, b"\x93garbage")], None, None)
    part.engine.records.clear()
    assert part.cache.peek(good) is not None and good not in part.cache.records  # peeking loads nothing
    assert part.cache.load_counting({good, bad}) == 1
    assert good in part.cache.records and bad not in part.cache.records
    assert part.store.get_many([bad]) == [None]


def test_a_record_with_an_undecodable_segment_is_quarantined_whole(
    part: Partition, events: list[Event]
) -> None:
    entity = events[0].entity_id
    part.engine.process([e for e in events if e.entity_id == entity])
    parts = part.engine.codec.encode_parts(part.engine.records[entity])
    segments = [key for key, _ in parts if key.startswith(b"\x00seg\x00")]
    assert segments
    part.store.commit(parts, None, None)
    part.store.commit([(segments[0], b"\x93garbage")], None, None)
    part.engine.records.clear()
    assert part.cache.load_counting({entity}) == 1
    assert entity not in part.cache.records  # it starts afresh
    assert part.store.get_many([entity]) == [None] and part.store.get_raw(segments) == [None] * len(segments)
    quarantined = [cast(bytes, k) for k in part.store.db.keys(from_key=b"\x00quarantine\x00")]
    assert len([k for k in quarantined if k.startswith(b"\x00quarantine\x00")]) == 1 + len(segments)


def test_the_first_checkpoint_after_a_restore_deletes_the_swept_segments_from_the_changelog(
    part: Partition, events: list[Event]
) -> None:
    orphans = [segment_key("c1", 0, bucket, 7) for bucket in (3, 4)]
    checkpointer = Checkpointer(cast(Any, None), {0: part}, cast(Any, None))
    part.checkpointed = part.position
    assert checkpointer.take() is None  # nothing applied, nothing swept: no checkpoint
    part.orphans = list(orphans)
    taken = checkpointer.take()  # nothing applied since the restore: the deletes alone
    assert taken is not None and [s.changed for s in taken.spans] == [[(k, None) for k in orphans]]
    assert part.orphans == [] and checkpointer.take() is None  # sent once
    # With records changed too, the deletes go first: a record may write a swept key again.
    part.orphans = list(orphans)
    event = next(e for e in events if e.type == "transaction")
    part.cache.load([event.entity_id])
    part.cache.mark_changed(part.engine.process([event]).changed)
    part.position += 1
    taken = checkpointer.take()
    assert taken is not None and taken.encode()
    (span,) = taken.spans
    assert span.changed[:2] == [(k, None) for k in orphans]
    record = dict(span.changed[2:])  # the record's head and its new segment
    head = record[event.entity_id.encode()]
    assert len(record) == 2 and head is not None and None not in record.values()
    codec = part.engine.codec
    assert codec.decode(head, [record[k] for k in codec.segment_keys(head)]).sizes() == {"transactions": 1}
