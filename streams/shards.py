"""Replay sharded by entity: ``replay --jobs N``, ``replay --shard i/N`` and ``replay-merge``.

An event reads and writes only its own entity's record, so entities can be replayed
apart: shard ``i`` of ``N`` keeps the events of the entities whose id hashes to
``i`` (:func:`shard_of`, CRC-32 of the UTF-8 id: stable across processes and
machines, unlike Python's salted ``hash()``). Every shard reads the whole input
(and warm-up files) and drops the other entities' events after decoding, so reading
and decoding cost N times over; the engine, features and Parquet writing are split.

A shard's files are replay's files plus an ``input_position`` column: the position
of each scored event in the whole history, the same in every shard because every
shard reads the same files the same way. :func:`merge` interleaves the shards' files
by that column and drops it, which gives exactly the one-process rows in the same
order. Rows that make no event (bad CSV rows) belong to no entity: shard 0 counts
and reports them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import shutil
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.dataset import META_EVENT_TYPE, META_SPEC_HASH

if TYPE_CHECKING:
    from streams.replay import ReplaySummary

log = logging.getLogger(__name__)
POSITION = "input_position"  # column of a shard's files: the scored event's place in the whole history
META_SHARD = "supernova.shard"  # schema metadata of a shard's files: "i/N"
REJECTS_FORWARDED = 100  # rejects a --jobs worker sends back to be shown (all are counted)
_MAX_OWNERS = 1 << 20  # entity ids whose shard is cached


class ShardError(ValueError):
    """A bad ``--shard``/``--jobs`` value or a set of shard outputs that cannot be merged."""


class ShardWorkerError(RuntimeError):
    """A replay worker process failed with an error that could not be sent back as it was."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` -> Shard(i, N); anything else raises ShardError saying what to give."""
        parts = text.split("/")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            index, count = int(parts[0]), int(parts[1])
            if 0 <= index < count:
                return cls(index, count)
        raise ShardError(f"--shard {text}: expected i/N with 0 <= i < N, e.g. 0/4 (the first of 4 shards)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owner(self) -> Callable[[str], bool]:
        """A function: does this shard own ``entity_id``? (cached per id)."""
        cache: dict[str, bool] = {}
        index, count = self.index, self.count

        def owns(entity_id: str) -> bool:
            mine = cache.get(entity_id)
            if mine is None:
                if len(cache) >= _MAX_OWNERS:
                    cache.clear()
                mine = cache[entity_id] = shard_of(entity_id, count) == index
            return mine

        return owns


def shard_of(entity_id: str, count: int) -> int:
    """The shard of an entity among ``count``: CRC-32 of its UTF-8 id, modulo ``count``."""
    return zlib.crc32(entity_id.encode()) % count


def check_jobs(jobs: int) -> None:
    """Refuse a number of processes below 1."""
    if jobs < 1:
        raise ShardError(f"--jobs {jobs}: give 1 or more processes")


# --- merge --------------------------------------------------------------------------------


def merge(shard_outs: Sequence[Path], out: Path) -> dict[str, int]:
    """Combine every shard's output of one replay into ``out``; return rows per file written.

    ``shard_outs`` are what each shard's ``--features-out`` (or ``--scores-out``)
    named: all ``.parquet`` files (then ``out`` is one too), or all directories of
    ``<event_type>.parquet`` (then ``out`` is a directory that gets the same files).
    Exactly shards 0..N-1 of one N must be given, each once, of one spec. Each file is
    written under a temporary name and renamed when every file is complete.
    """
    if not shard_outs:
        raise ShardError("give the output of every shard (e.g. out/shard-0 out/shard-1 ...)")
    for path in shard_outs:
        if not path.exists():
            raise ShardError(f"{path}: not found (a shard's --features-out or --scores-out)")
    files = [p.is_file() for p in shard_outs]
    if all(files):
        if out.suffix != ".parquet":
            raise ShardError(f"--out {out}: the shards wrote single files; give a F.parquet")
        plan = {out: list(shard_outs)}
    elif not any(files):
        names = sorted(p.name for p in shard_outs[0].glob("*.parquet"))
        for path in shard_outs[1:]:
            other = sorted(p.name for p in path.glob("*.parquet"))
            if other != names:
                raise ShardError(f"{path} holds {other}, {shard_outs[0]} {names}: not one replay's shards")
        if not names:
            raise ShardError(f"{shard_outs[0]}: no .parquet files")
        if out.suffix == ".parquet":
            raise ShardError(f"--out {out}: the shards wrote directories; give a directory")
        plan = {out / name: [p / name for p in shard_outs] for name in names}
    else:
        raise ShardError("give either the shards' .parquet files or their directories, not both")
    for parts in plan.values():
        _check_complete(parts)
    written: dict[Path, int] = {}
    next(iter(plan)).parent.mkdir(parents=True, exist_ok=True)
    try:
        for dest, parts in plan.items():
            written[dest] = _merge_files(parts, _tmp(dest))
        for dest in plan:
            _tmp(dest).replace(dest)
    finally:
        for dest in plan:
            _tmp(dest).unlink(missing_ok=True)
    return {str(dest): rows for dest, rows in written.items()}


def _check_complete(parts: list[Path]) -> None:
    """Refuse anything but shards 0..N-1 of one N, each once, of one event type and spec."""
    seen: dict[int, Path] = {}
    count = None
    identity = None
    for path in parts:
        meta = pq.read_schema(path).metadata or {}
        raw = meta.get(META_SHARD.encode())
        if raw is None:
            raise ShardError(f"{path}: not a shard's output (written without --shard)")
        shard = Shard.parse(raw.decode())
        this = (meta.get(META_EVENT_TYPE.encode()), meta.get(META_SPEC_HASH.encode()))
        if count is None:
            count, identity = shard.count, this
        elif shard.count != count or this != identity:
            raise ShardError(f"{path}: shard {shard} of another replay than {parts[0]} (shard ?/{count})")
        if shard.index in seen:
            raise ShardError(f"{path}: shard {shard} is also {seen[shard.index]}")
        seen[shard.index] = path
    missing = [f"{i}/{count}" for i in range(count or 0) if i not in seen]
    if missing:
        raise ShardError(f"missing shard {', '.join(missing)}: merge needs every shard of the replay")


def _merge_files(parts: list[Path], dest: Path) -> int:
    """Rows of the shard files interleaved by input position, without that column, into ``dest``.

    Each file is sorted by position, so this is a k-way merge a record batch at a
    time: memory stays bounded by one batch per shard.
    """
    from streams.replay import DICTIONARY, ROW_GROUP

    readers = [pq.ParquetFile(p) for p in parts]
    schema = readers[0].schema_arrow
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k != META_SHARD.encode()}
    out_schema = schema.remove(schema.get_field_index(POSITION)).with_metadata(metadata)
    dictionary = [c for c in DICTIONARY if c in out_schema.names]
    heads = [_Head(r.iter_batches(batch_size=ROW_GROUP)) for r in readers]
    rows = 0
    with pq.ParquetWriter(dest, out_schema, use_dictionary=dictionary) as writer:
        while True:
            live = [h for h in heads if h.fill()]
            if not live:
                break
            # Every row at or below the smallest last position is in the batches at hand.
            bound = min(h.last() for h in live)
            table = pa.concat_tables([h.take(bound) for h in live]).sort_by(POSITION)
            table = table.drop_columns([POSITION]).replace_schema_metadata(metadata)
            writer.write_table(table, row_group_size=ROW_GROUP)
            rows += table.num_rows
    return rows


class _Head:
    """The unmerged rows of one shard file's current record batch."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches
        self.table: pa.Table | None = None
        self.positions = np.empty(0, np.int64)

    def fill(self) -> bool:
        """Load the next non-empty batch if this one is used up; False at the end of the file."""
        while self.table is None or self.table.num_rows == 0:
            batch = next(self.batches, None)
            if batch is None:
                return False
            self.table = pa.Table.from_batches([batch])
            self.positions = self.table.column(POSITION).to_numpy()
        return True

    def last(self) -> int:
        return int(self.positions[-1])

    def take(self, bound: int) -> pa.Table:
        """The rows at or below ``bound`` (a prefix), removed from this head."""
        assert self.table is not None
        k = int(np.searchsorted(self.positions, bound, side="right"))
        taken = self.table.slice(0, k)
        self.table, self.positions = self.table.slice(k), self.positions[k:]
        return taken


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


# --- --jobs: shards in worker processes, then merge ----------------------------------------


def replay_jobs(
    jobs: int,
    features_out: Path | None,
    scores_out: Path | None,
    on_reject: Callable[[Any], None] | None,
    **task: Any,
) -> ReplaySummary:
    """Replay in ``jobs`` processes, one shard each, and merge: the one-process output.

    ``task`` holds the other arguments of :func:`streams.replay.replay`. The summary
    adds up the shards' counts; its seconds are this call's wall clock (start-up and
    merge included). Rejects are shown after the run, shard by shard (the first
    REJECTS_FORWARDED of each). If a worker fails, the others are stopped, no output
    takes its final name, and its error is raised here.
    """
    from streams.replay import ReplaySummary

    started = time.perf_counter()
    anchor = next((p for p in (features_out, scores_out) if p is not None), None)
    if anchor is not None:
        anchor.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".replay-shards-", dir=anchor.parent if anchor else None))
    try:
        outs = [
            (_shard_out(features_out, work, i, "features"), _shard_out(scores_out, work, i, "scores"))
            for i in range(jobs)
        ]
        tasks = [
            {**task, "shard": Shard(i, jobs), "features_out": outs[i][0], "scores_out": outs[i][1]}
            for i in range(jobs)
        ]
        results = _run_workers(tasks)
        for k, final in enumerate((features_out, scores_out)):
            if final is not None:
                merge([p for o in outs if (p := o[k]) is not None], final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = ReplaySummary()
    for shard_summary, rejects in results:
        for f in fields(ReplaySummary):
            setattr(summary, f.name, getattr(summary, f.name) + getattr(shard_summary, f.name))
        if on_reject is not None:
            for item in rejects:
                on_reject(item)
    summary.seconds = time.perf_counter() - started
    return summary


def _shard_out(final: Path | None, work: Path, i: int, kind: str) -> Path | None:
    """Where shard ``i`` writes: a file if the final output is one, else a directory."""
    if final is None:
        return None
    return work / f"shard-{i}" / (f"{kind}.parquet" if final.suffix == ".parquet" else kind)


def _run_workers(tasks: list[dict[str, Any]]) -> list[tuple[ReplaySummary, list[Any]]]:
    """Run each task in its own process; the first failure stops the others and is raised."""
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (pyarrow)
    procs: list[Any] = []
    conns: dict[Connection, int] = {}
    try:
        for i, task in enumerate(tasks):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(send, task), name=f"replay-shard-{i}", daemon=True)
            proc.start()
            send.close()  # the child holds the only write end: EOF when it dies
            procs.append(proc)
            conns[recv] = i
        results: list[Any] = [None] * len(tasks)
        while conns:
            for ready in wait(list(conns)):
                conn = cast(Connection, ready)
                i = conns.pop(conn)
                shard = tasks[i]["shard"]
                try:
                    status, *payload = conn.recv()
                except EOFError:
                    procs[i].join(5)
                    raise ShardWorkerError(
                        f"replay shard {shard} exited (code {procs[i].exitcode}) without a result"
                    ) from None
                if status == "error":
                    exc, remote_tb = cast(tuple[BaseException, str], payload)
                    exc.add_note(f"in replay shard {shard} (its traceback:)\n{remote_tb}")
                    raise exc
                results[i] = payload
        return results
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()


def _worker_main(conn: Connection, task: dict[str, Any]) -> None:
    """A worker process: replay one shard, send ("ok", summary, rejects) or ("error", exc, tb)."""
    from streams.replay import replay

    rejects: list[Any] = []

    def keep(item: Any) -> None:
        if len(rejects) < REJECTS_FORWARDED:
            if isinstance(item, tuple):  # (event, reason): the attrs type lives in this process only
                item = (msgspec.structs.replace(item[0], attrs=None), item[1])
            rejects.append(item)

    try:
        summary = replay(**task, on_reject=keep)
        conn.send(("ok", summary, rejects))
    except BaseException as exc:
        remote_tb = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            exc = ShardWorkerError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", exc, remote_tb))
    finally:
        conn.close()
