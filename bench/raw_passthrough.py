"""The raw ceiling: consume -> produce with aiokafka, bytes passed through unchanged.

Same client settings as the supernova worker (fetch sizes, acks=all, idempotence,
linger, batch size), same shape (``getmany``, one producer batch per partition,
wait for delivery, commit), no processing: what Kafka I/O alone costs in Python.

    python -m bench.raw_passthrough --bootstrap HOST:PORT --input T --output T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka_io import MAX_PRODUCER_BATCH


async def passthrough(bootstrap: str, source: str, sink: str, group: str, max_batch: int = 5000) -> None:
    """Copy ``source`` to ``sink`` partition by partition until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=MAX_PRODUCER_BATCH,
        max_request_size=4 * MAX_PRODUCER_BATCH,
    )
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_batch,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        isolation_level="read_committed",
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=100, max_records=max_batch)
            futures: list[Any] = []
            for tp, records in got.items():
                batch = producer.create_batch()
                for rec in records:
                    if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                        futures.append(await producer.send_batch(batch, sink, partition=tp.partition))
                        batch = producer.create_batch()
                        batch.append(key=rec.key, value=rec.value, timestamp=None)
                batch.close()  # complete: not kept open for linger_ms (as streams.kafka_io.send_batches)
                futures.append(await producer.send_batch(batch, sink, partition=tp.partition))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in got.items()})
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    """Command line of the passthrough process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    args = p.parse_args()
    asyncio.run(passthrough(args.bootstrap, args.input, args.output, args.group))


if __name__ == "__main__":
    main()
