"""One history from several event files, merged by ts: ``replay --warmup`` and ``bootstrap``.

With ``file_order`` (``replay --file-order``) the files are not merged: the warm-ups,
then the inputs, each in its own order, out-of-order ts and all, as a worker would
receive them from a topic; the engine then treats late events as the worker does.

Arrival order over several files is the order of their concatenation sorted stably
by ts: at equal ts, earlier files first, and within a file, file order. Each file is
read as a stream (:func:`streams.sources.read_blocks`) and the streams are merged a
slice of a block at a time (a k-way merge), so sorted files cost one pass and
bounded memory whatever their number. A file that turns out not to be sorted is
read again in sorted mode (in memory), alone: the caller starts over
(:meth:`History.retry_unsorted`), as replay does for one file.

Warm-up files update records like any other but give no output rows:
:meth:`History.output_only` drops their scored events from a batch's result.

With a ``shard`` (:mod:`streams.shards`), only the events of that shard's entities
come out, and each keeps its position among all the events of the history
(:meth:`History.positions`): the key that puts the shards' rows back in order.
"""

from __future__ import annotations

import logging
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from entities.engine import BatchResult
from entities.events import Event, EventCodec
from streams.sources import Block, NotSorted, Rejected, read_blocks

if TYPE_CHECKING:
    from streams.shards import Shard

log = logging.getLogger(__name__)
T = TypeVar("T")
_TS = operator.attrgetter("ts")
_BEFORE_ALL = -(2**63)  # merge key of rejected rows ahead of a file's first event


@dataclass(frozen=True)
class HistoryFile:
    """One input of a history: a warm-up file updates records but gives no output rows."""

    path: Path
    warm: bool = False
    limit: int | None = None  # read only the first N rows


class FileNotSorted(NotSorted):
    """A file of the history is not sorted by ts: read everything again with it sorted."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not sorted by ts")
        self.path = path


@dataclass
class History:
    """Several event files as one stream in arrival order."""

    files: list[HistoryFile]
    codec: EventCodec
    adapter: type | None  # CSV rows -> events (None: JSON lines)
    sorted: set[int] = field(default_factory=set)  # files read in sorted mode (found unsorted)
    shard: Shard | None = None  # keep only this shard's entities
    file_order: bool = False  # files one after the other, each in its own order (as a stream receives them)
    _warm: set[int] = field(default_factory=set)  # id() of warm-up events read, not yet processed
    _position: dict[int, int] = field(default_factory=dict)  # id() of a kept event -> its position

    @classmethod
    def of(
        cls,
        inputs: Sequence[Path],
        codec: EventCodec,
        adapter: type | None,
        warmup: Sequence[Path] = (),
        limit: int | None = None,
        shard: Shard | None = None,
        file_order: bool = False,
    ) -> History:
        """Warm-up files first, then the inputs (``limit`` applies to each input)."""
        files = [HistoryFile(p, warm=True) for p in warmup] + [HistoryFile(p, limit=limit) for p in inputs]
        return cls(files, codec, adapter, shard=shard, file_order=file_order)

    def blocks(self) -> Iterator[Block]:
        """Blocks of events (and rejected rows) in arrival order over all files.

        Raises :class:`FileNotSorted` on the first out-of-order ts of a file read as a
        stream; the file is then read sorted by the next call.
        """
        self._warm.clear()
        self._position.clear()
        streams = [self._stream(i) for i in range(len(self.files))]
        if len(streams) == 1 and not self.files[0].warm and self.shard is None:
            yield from streams[0]  # one file: exactly what replay always read
            return
        warm = self._warm
        keep = self._keeper() if self.shard is not None else None
        merged = _concat(streams) if self.file_order else _merge(streams)
        for i, items in merged:
            if keep is not None:
                items = keep(items)
                if not items:
                    continue
            rejected = sum(type(e) is Rejected for e in items)
            if self.files[i].warm:
                warm.update(id(e) for e in items if type(e) is Event)
            yield Block(items, rejected)

    def output_only(self, result: BatchResult, batch: list[Event]) -> BatchResult:
        """``result`` of ``batch`` without the scored events of warm-up files."""
        warm = self._warm
        if not warm:
            return result
        keep = [k for k, e in enumerate(result.scored) if id(e) not in warm]
        warm.difference_update(map(id, batch))  # processed: their ids may be reused from now on
        if len(keep) == len(result.scored):
            return result
        return replace(
            result,
            scored=[result.scored[k] for k in keep],
            rows=[result.rows[k] for k in keep],
            late=[result.late[k] for k in keep],
        )

    def positions(self, events: list[Event]) -> list[int]:
        """Positions in the whole history of these events of the current batch (with a shard)."""
        position = self._position
        return [position[id(e)] for e in events]

    def release(self, batch: list[Event]) -> None:
        """Forget the positions of a processed batch (its events' ids may be reused from now on)."""
        position = self._position
        for e in batch:
            del position[id(e)]

    def _keeper(self) -> Callable[[list[Event | Rejected]], list[Event | Rejected]]:
        """A filter of merged items: the shard's events, each noted with its position.

        Rejected rows belong to no entity: shard 0 keeps them, so they are counted once.
        """
        assert self.shard is not None
        owns = self.shard.owner()
        rejected_too = self.shard.index == 0
        position = self._position
        seen = 0

        def keep(items: list[Event | Rejected]) -> list[Event | Rejected]:
            nonlocal seen
            kept: list[Event | Rejected] = []
            for e in items:
                if type(e) is Event:
                    if owns(e.entity_id):
                        position[id(e)] = seen
                        kept.append(e)
                    seen += 1
                elif rejected_too:
                    kept.append(e)
            return kept

        return keep

    def retry_unsorted(self, run: Callable[[], T]) -> T:
        """``run()``, again with each file found unsorted read in sorted mode."""
        while True:
            try:
                return run()
            except FileNotSorted as exc:
                log.warning("%s: replaying again with it sorted (in memory)", exc)

    def _stream(self, i: int) -> Iterator[Block]:
        f = self.files[i]
        try:
            yield from read_blocks(
                f.path, self.codec, self.adapter, f.limit, sort=i in self.sorted, check=not self.file_order
            )
        except NotSorted:
            self.sorted.add(i)
            raise FileNotSorted(f.path) from None


class _Head:
    """The current block of one stream, its merge keys, and how far it was emitted."""

    __slots__ = ("blocks", "index", "items", "keys", "last", "pos")

    def __init__(self, index: int, blocks: Iterator[Block]) -> None:
        self.index = index
        self.blocks = blocks
        self.items: list[Event | Rejected] = []
        self.keys: list[int] = []
        self.pos = 0
        self.last = _BEFORE_ALL

    def advance(self) -> bool:
        """Load the next non-empty block; False once the stream is exhausted."""
        for block in self.blocks:
            if not block.items:
                continue
            self.items, self.pos = block.items, 0
            if block.rejected:  # a rejected row sorts with the event before it
                keys = []
                last = self.last
                for e in block.items:
                    if type(e) is Event:
                        last = e.ts
                    keys.append(last)
                self.keys = keys
            else:
                self.keys = list(map(_TS, block.items))
            self.last = self.keys[-1]
            return True
        return False


def _concat(streams: list[Iterator[Block]]) -> Iterator[tuple[int, list[Event | Rejected]]]:
    """(stream index, items): each stream whole, in its order, one after the other."""
    for i, blocks in enumerate(streams):
        for block in blocks:
            if block.items:
                yield i, block.items


def _merge(streams: list[Iterator[Block]]) -> Iterator[tuple[int, list[Event | Rejected]]]:
    """(stream index, consecutive items) in order of (ts, stream index), stable within a stream.

    Each step emits the longest run of the leading stream that sorts before every
    other stream's next item: whole blocks when the files do not overlap in time.
    """
    heads = [h for i, s in enumerate(streams) if (h := _Head(i, s)).advance()]
    while heads:
        heads.sort(key=lambda h: (h.keys[h.pos], h.index))
        head = heads[0]
        keys, pos = head.keys, head.pos
        if len(heads) == 1:
            end = len(keys)
        else:
            other = heads[1]
            bound = other.keys[other.pos]
            # Equal ts: the lower stream index goes first.
            end = (bisect_right if head.index < other.index else bisect_left)(keys, bound, pos)
        yield head.index, head.items if pos == 0 and end == len(keys) else head.items[pos:end]
        head.pos = end
        if end == len(keys) and not head.advance():
            heads.pop(0)
