"""The worker's answers to ``/entities/{entity_id}``: what it knows of one entity.

Read-only queries over the partitions a worker holds (``BatchWorker.parts``): the
record in memory (or read from the store), its fixed attributes as
``streams.security.shown_fixed`` allows them, and the last features and score per
scored type, without the features that read personal fields unless ``--expose-pii``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streams.partitioning import MISROUTED_HINT
from streams.security import shown_fixed

if TYPE_CHECKING:  # streams.worker serves these from streams.app
    from entities.record import SupernovaRecord
    from streams.state import Partition
    from streams.worker import BatchWorker


def entity(worker: BatchWorker, entity_id: str) -> dict[str, Any] | None:
    """What the worker knows of an entity: in the partition its key hashes to, else any held here.

    An entity found elsewhere arrived there: its producer partitions differently.
    """
    p = worker.routing.partition(entity_id.encode())
    found = _held(worker, entity_id, p)
    if found is None:
        return None
    part, record = found
    last = part.last.get(entity_id, {})
    where: dict[str, Any] = {"partition": part.tp.partition}
    if part.tp.partition != p:
        where["hashed_partition"] = p
        where["misrouted"] = f"its events arrived on partition {part.tp.partition}, not {p}: {MISROUTED_HINT}"
    emitter = worker.emitter
    return {
        "entity_id": entity_id,
        **where,
        **shown_fixed(record.fixed, set() if worker.cfg.expose_pii else worker.spec.fixed.pii),
        "repeated_sizes": record.sizes(),
        "lifetime_count": {k: v.get("", [0])[0] for k, v in record.lifetime.items()},
        "duplicates": record.duplicates,
        # Per scored event type: the features and score of the entity's last event of that
        # type, kept while its record is in memory (``--cache-mb``), like the record.
        "in_memory": entity_id in part.cache.records,
        "features": {  # without those that read personal fields (unless --expose-pii)
            t: {
                name: x
                for name, x in zip(emitter.feature_names[t], v[2], strict=True)
                if name not in emitter.withheld[t]
            }
            for t, v in last.items()
        },
        "last_score": {t: {"score": v[0], "event_id": v[1]} for t, v in last.items()},
    }


def not_found(worker: BatchWorker, entity_id: str) -> str:
    """Why ``entity`` found nothing: which partition would hold the entity, and whether it is here."""
    p = worker.routing.partition(entity_id.encode())
    held = "held by this worker, which has no record of it" if p in worker.parts else "held by another worker"
    return f"entity {entity_id!r} not found on this worker: its key hashes to partition {p}, {held}"


def _held(worker: BatchWorker, entity_id: str, hashed: int) -> tuple[Partition, SupernovaRecord] | None:
    """The partition (the hashed one first) and record of an entity held here."""
    for q in sorted(worker.parts, key=lambda q: q != hashed):
        part = worker.parts[q]
        record = part.cache.peek(entity_id)
        if record is not None:
            return part, record
    return None
