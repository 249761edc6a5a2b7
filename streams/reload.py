"""Hot reload: follow the registry's champion/challenger pointers without a restart.

The worker's timer calls :meth:`ModelWatcher.check` every second. A changed pointer
is loaded (checked against the running spec, and compiled) in a thread outside the
batch lock, then swapped in under it: a batch is always scored by one model, and the
switch never drops or re-scores an event because it does not touch consumption at all.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from entities.spec import Spec
from models.artifact import Artifact, ArtifactError, load
from models.registry import Registry, RegistryError
from models.scorer import Scorer

log = logging.getLogger(__name__)


class ModelWatcher:
    """Keeps a Scorer on the registry's champion, with the challenger in shadow."""

    def __init__(self, registry: Path, spec: Spec, scorer: Scorer, lock: asyncio.Lock) -> None:
        self.registry = Registry(registry)
        self.spec = spec
        self.scorer = scorer
        self.lock = lock
        self.current = self._keys()
        self.reloads = 0

    @staticmethod
    def initial(registry: Path, spec: Spec) -> tuple[Artifact, Artifact | None]:
        """Champion and challenger to start with (a champion is required)."""
        reg = Registry(registry)
        champion = reg.champion()
        if champion is None:
            raise SystemExit(f"no champion in {registry}: `supernova models promote` one first")
        challenger = reg.challenger()
        return load(champion.path, spec), load(challenger.path, spec) if challenger else None

    def _keys(self) -> tuple[str | None, str | None]:
        champion = self.registry.pointer("champion")
        challenger = self.registry.pointer("challenger")
        return (
            champion["artifact"] if champion else None,
            challenger["artifact"] if challenger else None,
        )

    async def check(self) -> bool:
        """Swap models if a pointer changed; True when a swap happened."""
        try:
            keys = self._keys()
        except RegistryError as exc:
            log.error("model pointers unreadable, keeping current models: %s", exc)
            return False
        if keys == self.current or keys[0] is None:
            return False
        try:  # in a thread: compiling a new model (models.compiled) takes seconds
            champion = await asyncio.to_thread(load, self.registry.root / keys[0], self.spec)
            shadow = None
            if keys[1]:
                shadow = await asyncio.to_thread(load, self.registry.root / keys[1], self.spec)
        except (ArtifactError, OSError) as exc:
            log.error("not switching models: %s", exc)
            self.current = keys  # don't retry a broken artifact every second
            return False
        async with self.lock:  # between batches
            old = self.scorer.champion
            self.scorer.swap(champion, shadow)
        self.current = keys
        self.reloads += 1
        log.info(
            "model switch: %s %s -> %s %s (shadow: %s)",
            old.name,
            old.version,
            champion.name,
            champion.version,
            shadow.version if shadow else None,
        )
        return True
