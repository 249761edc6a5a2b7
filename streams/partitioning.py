"""The partitioner contract: an entity's events, record and changelog entry share one partition.

The partition of a key is Kafka's default: ``murmur2(key) & 0x7fffffff % partitions``,
what the Java client and aiokafka do for a keyed message (``partition_for``). The
worker keeps each entity's record with the input partition its events arrive on,
and ``supernova bootstrap`` writes each record to the partition its key hashes to:
a producer with another partitioner (librdkafka's default is ``consistent_random``,
a CRC32: kcat, confluent-kafka) sends an entity's events elsewhere, where its
record is not. Such producers set ``partitioner=murmur2_random``.

:class:`Routing` caches each key's partition (murmur2 in Python costs a few µs)
and counts the events that arrive on another partition than their key's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from streams.kafka_io import partition_for

log = logging.getLogger(__name__)
# The cache pins each key it holds (~100 B with its dict slot): 1 << 20 keys were ~100 MB
# of a worker's RSS on a population of a million entities. Hot keys stay cached at this size.
MAX_CACHED_KEYS = 1 << 16
MISROUTED_HINT = (
    "the producer's partitioner is not Kafka's default murmur2 of the key "
    "(librdkafka clients such as kcat or confluent-kafka: set partitioner=murmur2_random)"
)


class Routing:
    """Partitions of keys for a topic of ``partitions`` partitions, and misrouted events."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}
        self._warned: set[int] = set()

    def partition(self, key: bytes) -> int:
        """The partition ``key`` hashes to."""
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            p = self._cache[key] = partition_for(key, self.partitions)
        return p

    def misrouted(self, partition: int, records: Iterable[Any]) -> int:
        """How many of these consumer records of ``partition`` belong on another partition.

        Logs the first one of each partition, with what to change.
        """
        cache, n, first = self._cache, 0, None
        for rec in records:
            key = rec.key
            if key is None:
                continue
            p = cache.get(key)
            if p is None:
                p = self.partition(key)
            if p != partition:
                n += 1
                if first is None:
                    first = (key, p)
        if first is not None and partition not in self._warned:
            self._warned.add(partition)
            log.warning(
                "events arrive on partition %d whose key hashes to another partition "
                "(e.g. key %r -> %d): %s; their records are apart from what `supernova bootstrap` wrote "
                "(counted in supernova_events_misrouted_total)",
                partition,
                first[0].decode(errors="replace"),
                first[1],
                MISROUTED_HINT,
            )
        return n
