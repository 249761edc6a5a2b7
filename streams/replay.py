"""Replay: a recorded file through the same core as the worker, into Parquet.

One feature file per scored event type: ``event_id, entity_id, ts`` + one column
per feature of that type in spec order + ``label``; with a model per type, a file of
scores per type too. ``--features-out F.parquet`` names the file of a spec's only
scored type; any other path is a directory that gets ``<event_type>.parquet`` per
type (:func:`output_paths`). Each file's schema metadata says its event type and
spec hash. Features of each event are point-in-time correct by construction: they
are computed from the record as it was when the event arrived, exactly as the
worker computes them.

``jobs=N`` replays in N processes, entities split among them, and ``shard`` replays
one such shard alone; both give the one-process rows (see :mod:`streams.shards`).
"""

from __future__ import annotations

import gc
import logging
import operator
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entities.engine import BatchResult, Engine, feature_matrix
from entities.events import Event, EventCodec
from entities.record import SupernovaRecord
from entities.spec import Spec, load_spec
from models.dataset import schema_metadata
from streams.adapters import AdapterRef, require_adapter, resolve_adapter
from streams.cache import DEFAULT_REPLAY_CACHE_MB, MB, RecordCache
from streams.history import History
from streams.shards import META_SHARD, POSITION, Shard, ShardError, check_jobs
from streams.sources import Block, Rejected, is_csv
from streams.store import PartitionStore

if TYPE_CHECKING:
    from models.artifact import Artifact

log = logging.getLogger(__name__)
BATCH = 16_384  # events per Engine.process: larger batches repeat each entity more (see entities.engine)
ROW_GROUP = 1 << 16  # scored events per Parquet row group
GC_YOUNG = 50_000  # allocations between young-generation collections (default 700)
COUNT_CHUNK = 10_000  # cached entity ids looked up at once in the spill store, to count entities
TS_TYPE = pa.timestamp("ms", tz="UTC")
# Dictionary pages only where values repeat a lot: a third less time writing.
DICTIONARY = ["entity_id", "model", "model_version"]
NAN = float("nan")
_EVENT_ID = operator.attrgetter("event_id")
_ENTITY_ID = operator.attrgetter("entity_id")
_TS = operator.attrgetter("ts")
_LABEL = operator.attrgetter("label")


@dataclass
class ReplaySummary:
    """Counts and speed of one replay."""

    events: int = 0
    scored: int = 0
    entities: int = 0
    rejected: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        """Events (profile and scored) per wall-clock second."""
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The one-line summary printed at the end."""
        return (
            f"replayed {self.events:,} events ({self.scored:,} scored) for {self.entities:,} "
            f"entities; rejected {self.rejected:,}, duplicates {self.duplicates:,}; "
            f"{self.seconds:.1f} s, {self.events_per_s:,.0f} events/s"
        )


class OutputError(ValueError):
    """An output path that does not fit the spec: the message says what to give instead."""


def output_paths(spec: Spec, out: Path | None, option: str = "--features-out") -> dict[str, Path]:
    """Event type -> output file: ``out`` itself if it ends in ``.parquet``, else ``out/<type>.parquet``.

    A single ``.parquet`` file holds one type's rows, so it is refused for a spec
    that scores several types.
    """
    if out is None:
        return {}
    types = spec.scored_types
    if out.suffix == ".parquet":
        if len(types) > 1:
            raise OutputError(
                f"{option} {out}: the spec scores {len(types)} event types {types}; give a directory "
                "(it gets one <event_type>.parquet per type)"
            )
        return {types[0]: out}
    return {t: out / f"{t}.parquet" for t in types}


class _Output:
    """Each scored type's output, fed from the batches: rows are grouped by ``event.type``."""

    def __init__(
        self,
        spec: Spec,
        features_out: dict[str, Path],
        models: dict[str, Artifact],
        scores_out: dict[str, Path],
        shard: Shard | None = None,
    ) -> None:
        """With a ``shard``, each file also gets the input position of its rows and says its shard."""
        spec_hash = spec.hash()
        extra = {META_SHARD: str(shard)} if shard is not None else {}
        self.by_type = {
            t: _TypeOutput(
                spec.feature_names_of(t),
                features_out.get(t),
                models.get(t),
                scores_out.get(t),
                {**schema_metadata(t, spec_hash), **extra},
                positions=shard is not None,
            )
            for t in spec.scored_types
            if t in features_out or t in scores_out
        }
        self.single = spec.scored_types[0] if len(spec.scored_types) == 1 else None

    def add(self, result: BatchResult, positions: list[int] | None = None) -> None:
        """The scored events of one batch, each to its type's output (``positions``: of a shard)."""
        if not result.scored or not self.by_type:
            return
        if self.single is not None:
            self.by_type[self.single].add(result.scored, result.rows, result.late, positions)
            return
        groups: dict[str, list[int]] = {}
        for k, event in enumerate(result.scored):
            try:
                groups[event.type].append(k)
            except KeyError:
                groups[event.type] = [k]
        for event_type, at in groups.items():
            out = self.by_type.get(event_type)
            if out is not None:
                out.add(
                    [result.scored[k] for k in at],
                    [result.rows[k] for k in at],
                    [result.late[k] for k in at],
                    None if positions is None else [positions[k] for k in at],
                )

    def close(self) -> None:
        """Write the rest and give every file its final name."""
        for out in self.by_type.values():
            out.close()

    def discard(self) -> None:
        """Drop every partial file."""
        for out in self.by_type.values():
            out.discard()


class _TypeOutput:
    """One scored type's rows gathered per batch and written to Parquet a row group at a time.

    Each file is written under a temporary name and takes its final name only when
    complete, so a half-written Parquet never takes the final name; memory stays
    bounded by one row group whatever the length of the input.
    """

    def __init__(
        self,
        feature_names: list[str],
        features_out: Path | None,
        artifact: Artifact | None,
        scores_out: Path | None,
        metadata: dict[str, str],
        positions: bool = False,
    ) -> None:
        self.feature_names = feature_names
        self.with_positions = positions
        self.artifact = artifact if scores_out is not None else None
        self.writers: dict[Path, pq.ParquetWriter] = {}
        self.features_out = features_out
        self.scores_out = scores_out if self.artifact is not None else None
        keys = [("event_id", pa.string()), ("entity_id", pa.string()), ("ts", TS_TYPE)]
        position = [(POSITION, pa.int64())] if positions else []
        self.feature_schema = pa.schema(
            [*keys, *((name, pa.float64()) for name in feature_names), ("label", pa.float64()), *position],
            metadata=metadata,
        )
        self.score_schema = pa.schema(
            [
                *keys,
                ("score", pa.float64()),
                ("label", pa.float64()),
                ("late", pa.bool_()),
                ("model", pa.string()),
                ("model_version", pa.string()),
                *position,
            ],
            metadata=metadata,
        )
        for path, schema in ((self.features_out, self.feature_schema), (self.scores_out, self.score_schema)):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.writers[path] = pq.ParquetWriter(_tmp(path), schema, use_dictionary=DICTIONARY)
        self._clear()

    def _clear(self) -> None:
        self.rows = 0
        self.event_id: list[str] = []
        self.entity_id: list[str] = []
        self.ts: list[int] = []
        self.label: list[float] = []
        self.late: list[bool] = []
        self.position: list[int] = []
        self.features: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(
        self, scored: list[Event], rows: list[list[float]], late: list[bool], positions: list[int] | None
    ) -> None:
        """This type's scored events of one batch (flushed once a row group is full)."""
        if not scored or not self.writers:
            return
        matrix = feature_matrix(rows, len(self.feature_names))
        self.features.append(matrix)
        if self.artifact is not None:
            self.scores.append(self.artifact.predict(matrix))
        self.event_id += map(_EVENT_ID, scored)
        self.entity_id += map(_ENTITY_ID, scored)
        self.ts += map(_TS, scored)
        self.label += [NAN if label is None else label for label in map(_LABEL, scored)]
        self.late += late
        if positions is not None:
            self.position += positions
        self.rows += len(scored)
        if self.rows >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        """Write what was gathered as one row group of each file."""
        if not self.rows:
            return
        keys = [
            pa.array(self.event_id, pa.string()),
            pa.array(self.entity_id, pa.string()),
            pa.array(self.ts, TS_TYPE),
        ]
        label = pa.array(self.label, pa.float64())
        position = [pa.array(self.position, pa.int64())] if self.with_positions else []
        if self.features_out is not None:
            matrix = np.concatenate(self.features) if len(self.features) > 1 else self.features[0]
            columns = [pa.array(matrix[:, j]) for j in range(len(self.feature_names))]
            table = pa.Table.from_arrays([*keys, *columns, label, *position], schema=self.feature_schema)
            self.writers[self.features_out].write_table(table)
        if self.scores_out is not None and self.artifact is not None:
            n = self.rows
            table = pa.Table.from_arrays(
                [
                    *keys,
                    pa.array(np.concatenate(self.scores), pa.float64()),
                    label,
                    pa.array(self.late, pa.bool_()),
                    pa.array([self.artifact.name] * n, pa.string()),
                    pa.array([self.artifact.version] * n, pa.string()),
                    *position,
                ],
                schema=self.score_schema,
            )
            self.writers[self.scores_out].write_table(table)
        self._clear()

    def close(self) -> None:
        """Write the rest and give the files their final names."""
        self.flush()
        for path, writer in self.writers.items():
            writer.close()
            _tmp(path).replace(path)
        self.writers.clear()

    def discard(self) -> None:
        """Drop the partial files (the replay starts over or failed)."""
        for path, writer in self.writers.items():
            writer.close()
            _tmp(path).unlink(missing_ok=True)
        self.writers.clear()


def replay(
    spec_path: Path,
    input_path: Path,
    features_out: Path | None = None,
    limit: int | None = None,
    models: Path | Sequence[Path] = (),
    scores_out: Path | None = None,
    on_reject: Callable[[Rejected | tuple[Event, str]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    adapter: AdapterRef = None,
    warmup: Sequence[Path] = (),
    cache_mb: float | None = DEFAULT_REPLAY_CACHE_MB,
    jobs: int = 1,
    shard: Shard | None = None,
    file_order: bool = False,
) -> ReplaySummary:
    """Replay ``input_path`` and write Parquet; return the summary.

    ``cache_mb``: keep at most that many MB of records in memory (per process), the
    rest in a RocksDB beside the output (streams.cache), made only once a record has
    to leave; None or 0 keeps every record in memory. The output is the same either way.

    ``warmup`` files come first in the same history (merged by ts, see
    streams.history): they update records but give no output rows. With
    ``file_order`` events come in file order (warm-ups first), not sorted by ts: what
    a worker fed the files in that order computes, late events included (scored with
    ``late`` within the allowed lateness, rejected beyond it).

    ``features_out`` and ``scores_out`` follow :func:`output_paths`; ``models`` are
    artifact directories, one per scored type (scores need one for every type).
    ``adapter`` maps CSV rows to events (a class or ``FILE.py[:NAME]``).

    ``jobs`` > 1 replays in that many processes, entities split among them, and
    writes the same files as one process (``on_progress`` is not called then).
    ``shard`` replays only that shard's entities, into files that
    :func:`streams.shards.merge` combines with the other shards'.
    """
    check_jobs(jobs)
    spec = load_spec(spec_path)
    codec = EventCodec(spec)
    features_paths = output_paths(spec, features_out, "--features-out")
    scores_paths = output_paths(spec, scores_out, "--scores-out")
    adapter_type = resolve_adapter(adapter)
    for path in (*warmup, input_path):
        if is_csv(path):
            require_adapter(adapter_type, path)
    if jobs > 1:
        if shard is not None:
            raise ShardError("give --jobs or --shard, not both")
        from streams.shards import replay_jobs

        return replay_jobs(
            jobs,
            features_out,
            scores_out,
            on_reject,
            spec_path=spec_path,
            input_path=input_path,
            limit=limit,
            models=models,
            adapter=adapter,
            warmup=warmup,
            cache_mb=cache_mb,
            file_order=file_order,
        )
    artifacts: dict[str, Artifact] = {}
    model_dirs = [models] if isinstance(models, Path | str) else list(models)
    if model_dirs:
        # LightGBM is heavy: only when scoring
        from models.artifact import load_by_type, require_every_type

        artifacts = load_by_type(model_dirs, spec)
        if scores_paths:
            require_every_type(artifacts, spec)
    started = time.perf_counter()
    history = History.of([input_path], codec, adapter_type, warmup, limit, shard, file_order)

    spill_dir = next(iter({**features_paths, **scores_paths}.values()), Path("out")).parent

    def run() -> ReplaySummary:
        output = _Output(spec, features_paths, artifacts, scores_paths if artifacts else {}, shard)
        try:
            with _records(spec, cache_mb, spill_dir) as (engine, cached):
                summary = _run(engine, cached, history, output, on_reject, on_progress)
            output.close()
        except BaseException:
            output.discard()
            raise
        return summary

    with _gc_tuned():
        summary = history.retry_unsorted(run)
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _gc_tuned() -> Iterator[None]:
    """Fewer garbage collections while replaying.

    The replay allocates millions of short-lived objects and keeps a large, stable
    heap (records, modules); with the default thresholds the collector keeps
    re-scanning that heap. Freezing it and collecting the young generation less
    often is safe: nothing is left uncollected, only later.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class _Spilled:
    """Replay's records beyond ``--cache-mb``: a RocksDB that evicted records go to.

    The store is created on the first eviction, so a population within the budget
    never touches the disk.
    """

    def __init__(self, engine: Engine, budget: int, spill_dir: Path) -> None:
        self.engine, self.spill_dir = engine, spill_dir
        self.store: PartitionStore | None = None
        self.cache = RecordCache(engine.spec, engine.codec, self._get_many, budget)

    def _get_many(self, entity_ids: list[str]) -> list[bytes | None]:
        return [None] * len(entity_ids) if self.store is None else self.store.get_many(entity_ids)

    def process(self, batch: list[Event]) -> BatchResult:
        """``Engine.process`` with the batch's records loaded first and the cache trimmed after."""
        self.cache.load(dict.fromkeys(map(_ENTITY_ID, batch)))
        result = self.engine.process(batch)
        self.cache.note_changed(result.changed)
        self.cache.evict(write=self.write)
        return result

    def write(self, records: list[tuple[str, SupernovaRecord]]) -> None:
        """Persist records leaving the cache."""
        if self.store is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self.store = PartitionStore(
                Path(tempfile.mkdtemp(prefix=".supernova-records-", dir=self.spill_dir))
            )
            log.info("records beyond --cache-mb %.0f go to %s", self.cache.budget / MB, self.store.path)
        encode = self.engine.codec.encode
        self.store.commit([(eid, encode(rec)) for eid, rec in records], None, None)

    def entities(self) -> int:
        """Entities seen: the store's records and the cached ones it does not hold.

        Looked up a chunk at a time: writing every cached record out at the end (as
        this did) took ~250 MB more at the peak on a million entities.
        """
        if self.store is None:
            return len(self.cache.records)
        cached = list(self.cache.records)
        unstored = 0
        for at in range(0, len(cached), COUNT_CHUNK):
            unstored += sum(data is None for data in self.store.get_many(cached[at : at + COUNT_CHUNK]))
        return self.store.count_records() + unstored

    def close(self) -> None:
        """Delete the store, if one was made."""
        if self.store is not None:
            self.store.destroy()


@contextmanager
def _records(spec: Spec, cache_mb: float | None, spill_dir: Path) -> Iterator[tuple[Engine, _Spilled | None]]:
    """An engine with all records in memory (``cache_mb`` None or 0), or a cache over a spill store."""
    engine = Engine(spec)
    if not cache_mb:
        yield engine, None
        return
    spilled = _Spilled(engine, int(cache_mb * MB), spill_dir)
    engine.records = spilled.cache.records
    try:
        yield engine, spilled
    finally:
        spilled.close()


def _run(
    engine: Engine,
    cached: _Spilled | None,
    history: History,
    output: _Output,
    on_reject: Callable[[Any], None] | None,
    on_progress: Callable[[int], None] | None,
) -> ReplaySummary:
    summary = ReplaySummary()
    process = engine.process if cached is None else cached.process
    for batch in _batches(history.blocks(), summary, on_reject):
        result = history.output_only(process(batch), batch)
        positions = None
        if history.shard is not None:
            positions = history.positions(result.scored)
            history.release(batch)
        summary.events += len(batch)
        summary.scored += len(result.scored)
        summary.duplicates += result.duplicates
        for event, err in result.rejected:
            summary.rejected += 1
            if on_reject is not None:
                on_reject((event, str(err)))
        output.add(result, positions)
        if on_progress is not None:
            on_progress(len(batch))
    summary.entities = len(engine.records) if cached is None else cached.entities()
    return summary


def _batches(
    blocks: Iterator[Block], summary: ReplaySummary, on_reject: Callable[[Any], None] | None
) -> Iterator[list[Event]]:
    """Batches of BATCH events (the last may be short), gathered from the blocks.

    Rejected rows are counted and reported on the way.
    """
    pending: list[Any] = []
    for block in blocks:
        if block.rejected:
            for item in block.items:
                if isinstance(item, Rejected):
                    summary.rejected += 1
                    if on_reject is not None:
                        on_reject(item)
                else:
                    pending.append(item)
        else:
            pending += block.items
        while len(pending) >= BATCH:
            yield pending[:BATCH]
            del pending[:BATCH]
    if pending:
        yield pending


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
