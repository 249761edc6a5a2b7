"""Hot reload: follow the registry's champion/challenger pointers of each scored type without a restart.

The worker's timer calls :meth:`ModelWatcher.check` every second. A changed pointer
is loaded (checked against the running spec, and compiled) in a thread outside the
batch lock, then swapped into that type's Scorer under it: a batch's events of one
type are always scored by one model, and the switch never drops or re-scores an
event because it does not touch consumption at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from entities.spec import Spec
from models.artifact import Artifact, ArtifactError, load
from models.registry import Registry, RegistryError
from models.scorer import Scorer

log = logging.getLogger(__name__)
Keys = tuple[str | None, str | None]  # (champion, challenger) artifact keys of one type


class ModelWatcher:
    """Keeps each scored type's Scorer on the registry's champion of that type, its challenger in shadow."""

    def __init__(self, registry: Path, spec: Spec, scorers: Mapping[str, Scorer], lock: asyncio.Lock) -> None:
        self.registry = Registry(registry)
        self.spec = spec
        self.scorers = scorers
        self.lock = lock
        self.current = {t: self._keys(t) for t in scorers}
        self.reloads = 0

    @staticmethod
    def initial(registry: Path, spec: Spec) -> dict[str, tuple[Artifact, Artifact | None]]:
        """Champion and challenger of every scored type to start with (each needs a champion)."""
        reg = Registry(registry)
        out = {}
        for event_type in spec.scored_types:
            champion = reg.champion(event_type)
            if champion is None:
                raise SystemExit(
                    f"no champion for scored type {event_type!r} in {registry}: "
                    "`supernova models promote` one first"
                )
            challenger = reg.challenger(event_type)
            out[event_type] = load(champion.path, spec), load(challenger.path, spec) if challenger else None
        return out

    def _keys(self, event_type: str) -> Keys:
        champion = self.registry.pointer("champion", event_type)
        challenger = self.registry.pointer("challenger", event_type)
        return (
            champion["artifact"] if champion else None,
            challenger["artifact"] if challenger else None,
        )

    async def check(self) -> bool:
        """Swap the models of every type whose pointers changed; True when a swap happened."""
        swapped = False
        for event_type in self.scorers:
            swapped |= await self._check(event_type)
        return swapped

    async def _check(self, event_type: str) -> bool:
        try:
            keys = self._keys(event_type)
        except RegistryError as exc:
            log.error("%s: model pointers unreadable, keeping current models: %s", event_type, exc)
            return False
        if keys == self.current[event_type] or keys[0] is None:
            return False
        try:  # in a thread: compiling a new model (models.compiled) takes seconds
            champion = await asyncio.to_thread(load, self.registry.root / keys[0], self.spec)
            shadow = None
            if keys[1]:
                shadow = await asyncio.to_thread(load, self.registry.root / keys[1], self.spec)
            for artifact in (champion, shadow):
                if artifact is not None and artifact.event_type != event_type:
                    raise ArtifactError(
                        f"{artifact.path}: scores {artifact.event_type!r}, not {event_type!r}"
                    )
        except (ArtifactError, OSError) as exc:
            log.error("%s: not switching models: %s", event_type, exc)
            self.current[event_type] = keys  # don't retry a broken artifact every second
            return False
        scorer = self.scorers[event_type]
        async with self.lock:  # between batches
            old = scorer.champion
            scorer.swap(champion, shadow)
        self.current[event_type] = keys
        self.reloads += 1
        log.info(
            "model switch for %s: %s %s -> %s %s (shadow: %s)",
            event_type,
            old.name,
            old.version,
            champion.name,
            champion.version,
            shadow.version if shadow else None,
        )
        return True
