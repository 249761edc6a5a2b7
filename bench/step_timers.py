"""Wall-clock timers around the steps of the worker's batch loop (for ``worker_entry --timing``).

Wraps, without editing ``streams/``, in the modules of the worker's parts: the poll
(``getmany``), decode (per event), the record loads, ``Engine.process`` (append +
features), predict, building the score messages, record encoding for the changelog,
handing batches to the producer, waiting for delivery (``asyncio.gather`` inside
the checkpoint), the RocksDB write and the consumer commit. Whatever ``process``
spends outside these is "other" (loop bookkeeping, metrics, dead-letter and dedupe
checks, cache trimming).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streams.checkpoint as checkpoint_module
import streams.emit as emit_module
import streams.worker as worker_module
from entities.engine import Engine
from entities.events import EventCodec
from entities.record import RecordCodec
from models.scorer import Scorer
from streams.state import RecordCache
from streams.store import PartitionStore


class StepTimers:
    """Totals (seconds) and call counts per step.

    Phases: when ``<path>.mark`` exists at the start of a batch, the totals so far
    are written to ``<path stem>-<mark text>.json`` and start again from zero.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mark = path.with_name(path.name + ".mark")
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.events = 0
        self.batches = 0

    def reset(self) -> None:
        """Start counting from zero (in place: the wrappers hold these dicts)."""
        self.seconds.clear()
        self.calls.clear()
        self.events = 0
        self.batches = 0

    def next_phase(self) -> None:
        """Write and reset the totals if the harness asked for it (a mark file)."""
        if self.mark.exists():
            self.dump(self.path.with_name(f"{self.path.stem}-{self.mark.read_text().strip()}.json"))
            self.mark.unlink()
            self.reset()

    def wrap(self, owner: Any, name: str, step: str) -> None:
        """Time ``owner.name`` (a function or a coroutine function) as ``step``."""
        fn = getattr(owner, name)
        seconds, calls = self.seconds, self.calls
        clock = time.perf_counter
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t = clock()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    seconds[step] += clock() - t
                    calls[step] += 1

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                t = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    seconds[step] += clock() - t
                    calls[step] += 1

            setattr(owner, name, timed)

    def dump(self, path: Path | None = None) -> None:
        """Write the totals as JSON."""
        (path or self.path).write_text(
            json.dumps(
                {
                    "events": self.events,
                    "batches": self.batches,
                    "seconds": dict(self.seconds),
                    "calls": dict(self.calls),
                },
                indent=2,
            )
        )


def install(path: Path) -> StepTimers:
    """Wrap the worker's steps; returns the timers to dump at exit."""
    t = StepTimers(path)
    process = worker_module.BatchWorker.process

    async def counted(self: Any, batches: dict[Any, list[Any]]) -> None:
        t.next_phase()
        t.events += sum(len(records) for records in batches.values())
        t.batches += 1
        await process(self, batches)

    worker_module.BatchWorker.process = counted  # type: ignore[method-assign]
    t.wrap(worker_module.BatchWorker, "process", "process (total)")
    start = worker_module.BatchWorker.start

    async def start_and_wrap(self: Any) -> None:  # the worker's own consumer only, not faust's
        await start(self)
        t.wrap(self.consumer, "getmany", "poll (getmany, incl. idle wait)")
        t.wrap(self.consumer, "commit", "consumer commit")

    worker_module.BatchWorker.start = start_and_wrap  # type: ignore[method-assign]
    t.wrap(EventCodec, "decode", "decode")
    t.wrap(RecordCache, "load", "record load")
    t.wrap(Engine, "process", "engine (append + features)")
    t.wrap(Scorer, "score", "predict")
    t.wrap(emit_module.Emitter, "scores", "score messages (incl. predict)")
    t.wrap(RecordCodec, "encode_snapshot", "record encode (a slice per poll)")
    t.wrap(emit_module, "send_batches", "producer batches (append + send_batch)")
    t.wrap(checkpoint_module, "send_batches", "producer batches (append + send_batch)")
    t.wrap(worker_module.BatchWorker, "checkpoint", "checkpoint boundary")
    t.wrap(checkpoint_module.Checkpoint, "copy_before_change", "record copies before change")
    t.wrap(PartitionStore, "commit", "rocksdb write")
    _time_gc(t)
    gather = _timed_gather(t)
    checkpoint_module.asyncio = types.SimpleNamespace(**{**vars(asyncio), "gather": gather})  # type: ignore[assignment]
    return t


def _timed_gather(t: StepTimers) -> Callable[..., Any]:
    async def gather(*aws: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await asyncio.gather(*aws, **kwargs)
        finally:
            t.seconds["wait for delivery (gather)"] += time.perf_counter() - start
            t.calls["wait for delivery (gather)"] += 1

    return gather


def _time_gc(t: StepTimers) -> None:
    """Time the cyclic garbage collector (it runs inside whatever step allocates)."""
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            step = f"gc generation {info['generation']} (inside the steps above)"
            t.seconds[step] += time.perf_counter() - started[0]
            t.calls[step] += 1

    gc.callbacks.append(on_gc)
