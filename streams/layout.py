"""Record layout checks: a worker refuses records written for another layout.

A spec change that keeps the layout (fixed and repeated attributes; see
``Spec.layout_hash``) keeps every record readable: a restarted worker computes the
new features from the records it has. A layout change (a new field, a new repeated
attribute) makes old records unreadable. The worker then refuses to start instead
of quarantining record after record (each would start afresh, silently losing its
history, and every score after would differ from the backtest): records of a new
layout come from the history files, through ``supernova bootstrap``.

Corrupt bytes are another matter: a single record that does not decode is
quarantined and its entity starts afresh (``BatchWorker._load``).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from entities.record import RecordCodec


class LayoutMismatch(Exception):  # noqa: N818 - reads as what happened
    """Stored records were written for another record layout than this spec's."""


class _Head(msgspec.Struct, array_like=True):
    """The first two fields of an encoded record; the rest is skipped, not decoded."""

    v: int
    layout: str


_head = msgspec.msgpack.Decoder(_Head)


def record_layout(data: bytes | None) -> str | None:
    """The layout hash an encoded record or head was written for (None if the bytes say nothing).

    Segments and deletes (None) say nothing: their heads do.
    """
    if data is None:
        return None
    try:
        return _head.decode(data).layout
    except msgspec.MsgspecError:
        return None


class LayoutCheck:
    """Checks encoded records against one spec's layout."""

    def __init__(self, codec: RecordCodec) -> None:
        self.layout = codec.layout
        self._prefix = _head_prefix(codec)

    def check(self, records: Iterable[bytes | None], where: str) -> None:
        """Raise LayoutMismatch at the first record of a known other layout."""
        prefix = self._prefix
        for data in records:
            # A restore checks every message: heads of this layout are told by their first
            # bytes, without decoding; anything else (segments, other layouts) is decoded.
            if data is None or data.startswith(prefix):
                continue
            found = record_layout(data)
            if found is not None and found != self.layout:
                raise LayoutMismatch(mismatch_message(where, found, self.layout))


def _head_prefix(codec: RecordCodec) -> bytes:
    """What every head of the codec's layout starts with: the msgpack of its version and layout."""
    entity_id = "layout-probe"
    (head,) = (data for key, data in codec.encode_parts(codec.new(entity_id)) if key == entity_id.encode())
    assert head is not None and record_layout(head) == codec.layout
    layout = msgspec.msgpack.encode(codec.layout)
    return head[: head.index(layout) + len(layout)]


def mismatch_message(where: str, found: str, layout: str) -> str:
    """The one-line refusal."""
    return (
        f"{where} holds records of layout {found}, this spec's layout is {layout} (a field or repeated "
        "attribute changed): rebuild the records from the history files with `supernova bootstrap` "
        "into a new --app-id (see docs/going-live.md)"
    )
