"""From the messages a poll delivers for a partition to the events to apply, in sequence.

A partition's events must be applied exactly once and in offset order. Three checks
see to it: a fetch that does not continue where the partition left off is dropped
and the consumer seeked back (``in_sequence``); messages that are not valid events
become dead letters (``decode``); events a record already holds, replayed after a
restart, are skipped by input offset (``not_yet_applied``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from entities.events import Event, EventCodec, EventError
from streams.kafka_io import Message
from streams.state import Partition

log = logging.getLogger(__name__)

# Consumer record -> reason -> its dead letter (``Emitter.dead_letter``).
DeadLetter = Callable[[Partition, Any, str, str | None], Message]  # reason, metric label


def in_sequence(consumer: AIOKafkaConsumer, part: Partition, messages: list[Any]) -> list[Any]:
    """The messages that continue exactly where this partition left off.

    A fetch issued around a (re)assignment can deliver messages from another
    position than the one the partition seeked to; applying them would skip
    events. Such a batch is dropped and the consumer seeked back. A gap that
    persists after that seek is real (transaction markers) and is accepted.
    """
    position = part.position
    if messages[-1].offset < position:
        return []
    if messages[0].offset < position:
        return [m for m in messages if m.offset >= position]
    if messages[0].offset > position and part.reseeked != position:
        log.warning("%s: got offset %d, expected %d: seeking back", part.tp, messages[0].offset, position)
        consumer.seek(part.tp, position)
        part.reseeked = position
        return []
    return messages


def decode(
    codec: EventCodec,
    max_future_ms: int,
    part: Partition,
    messages: list[Any],
    dead_letter: DeadLetter,
    dead: list[Message],
) -> tuple[list[Event], dict[int, Any]]:
    """The valid events among ``messages``, and each event's message by ``id(event)``.

    Null keys, invalid events, keys that differ from ``entity_id`` and events more
    than ``max_future_ms`` ahead of the wall clock are appended to ``dead``.
    """
    events: list[Event] = []
    origin: dict[int, Any] = {}
    decode_event = codec.decode
    horizon = int(time.time() * 1000) + max_future_ms
    for message in messages:
        label = None
        if message.key is None:
            reason = "null key"
        else:
            try:
                event = decode_event(message.value if message.value is not None else b"")
            except EventError as err:
                reason = str(err)
            else:
                if event.entity_id.encode() != message.key:
                    reason = f"field 'entity_id': {event.entity_id!r} differs from the message key"
                elif event.ts > horizon:
                    reason = f"field 'ts': {event.ts} is more than {max_future_ms} ms ahead"
                    label = "future"
                else:
                    events.append(event)
                    origin[id(event)] = message
                    continue
        dead.append(dead_letter(part, message, reason, label))
    return events, origin


def not_yet_applied(part: Partition, events: list[Event], origin: dict[int, Any]) -> tuple[list[Event], int]:
    """Drop events a record already holds (replayed after a crash); stamp the rest's offsets.

    Returns the events to apply and how many were dropped. Offsets are exact where
    event-id dedupe is not: a replayed span can reach back further than retention
    keeps ids. The records of these events must be loaded already.
    """
    records = part.engine.records
    new_record = part.engine.record
    fresh = []
    skipped = 0
    for ev in events:
        offset = origin[id(ev)].offset
        rec = records.get(ev.entity_id)
        if rec is None:
            rec = new_record(ev.entity_id)
        if offset <= rec.offset:
            skipped += 1
            continue
        rec.offset = offset
        fresh.append(ev)
    return fresh, skipped
