"""``replay --warmup``: warm-up files update records as if they came first in one history.

The oracle is a replay of the files concatenated into one file (read in sorted mode,
stably by ts: at equal ts earlier files first, then file order), with its output
filtered to the events of ``--input``. Real data: slices of the committed sample.
"""

from __future__ import annotations

import gzip
import math
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SAMPLE, SPEC

from streams.cli import main
from streams.replay import replay

HISTORY_ROWS = 12_000


def sample_lines(path: Path = SAMPLE, n: int | None = None) -> tuple[bytes, list[bytes]]:
    """Header and (the first ``n``) data lines of a Sparkov CSV.gz, the committed sample by default."""
    with gzip.open(path, "rb") as f:
        header = f.readline()
        lines = [line for line, _ in zip(f, range(n), strict=False)] if n is not None else f.readlines()
    return header, lines


def write_csv(path: Path, header: bytes, rows: list[bytes]) -> Path:
    """A Sparkov CSV.gz of these rows."""
    with gzip.open(path, "wb") as f:
        f.write(header)
        f.writelines(rows)
    return path


def _rows(path: Path) -> dict[str, dict]:
    table = pq.read_table(path).to_pylist()
    return {r["event_id"]: r for r in table}


def _assert_same_rows(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys()
    for event_id, row in want.items():
        for name, value in row.items():
            other = got[event_id][name]
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(other, float) and math.isnan(other), (event_id, name)
            else:
                assert other == value, (event_id, name, other, value)


def _oracle(tmp: Path, header: bytes, files: list[list[bytes]], input_rows: list[bytes]) -> dict[str, dict]:
    """Replay of the concatenation, filtered to the rows of the input file."""
    concatenated = write_csv(tmp / "all.csv.gz", header, [r for rows in files for r in rows])
    replay(SPEC, concatenated, adapter=ADAPTER, features_out=tmp / "all.parquet")
    wanted = {r.split(b",")[-5].decode() for r in input_rows}  # trans_num
    rows = _rows(tmp / "all.parquet")
    assert wanted <= rows.keys()
    return {k: v for k, v in rows.items() if k in wanted}


def test_warmup_replay_equals_concatenated_history_filtered(tmp_path: Path) -> None:
    header, lines = sample_lines()
    assert header.split(b",")[-5] == b"trans_num"
    history, live = lines[:HISTORY_ROWS], lines[HISTORY_ROWS:]
    h = write_csv(tmp_path / "history.csv.gz", header, history)
    i = write_csv(tmp_path / "live.csv.gz", header, live)
    out = tmp_path / "warm.parquet"
    args = ["replay", "--spec", str(SPEC), "--adapter", str(ADAPTER), "--warmup", str(h), "--input", str(i)]
    assert main([*args, "--features-out", str(out)]) == 0
    got = _rows(out)
    assert len(got) == len(live)
    _assert_same_rows(got, _oracle(tmp_path, header, [history, live], live))
    # Without the history the same events see empty records: the warm-up matters.
    replay(SPEC, i, adapter=ADAPTER, features_out=tmp_path / "cold.parquet")
    cold = _rows(tmp_path / "cold.parquet")
    assert sum(cold[k]["txn_count_lifetime"] != got[k]["txn_count_lifetime"] for k in got) > len(got) // 2


def test_overlapping_and_unsorted_files_merge_like_their_concatenation(tmp_path: Path) -> None:
    """Two warm-up files overlapping in time (cards split by row parity), an unsorted input."""
    header, lines = sample_lines()
    history, live = lines[:8_000], lines[8_000:14_000]
    even, odd = history[0::2], history[1::2]
    shuffled = live[:]
    random.Random(7).shuffle(shuffled)
    w1 = write_csv(tmp_path / "even.csv.gz", header, even)
    w2 = write_csv(tmp_path / "odd.csv.gz", header, odd)
    i = write_csv(tmp_path / "live.csv.gz", header, shuffled)
    replay(SPEC, i, adapter=ADAPTER, features_out=tmp_path / "warm.parquet", warmup=[w1, w2])
    got = _rows(tmp_path / "warm.parquet")
    _assert_same_rows(got, _oracle(tmp_path, header, [even, odd, shuffled], shuffled))


def test_limit_applies_to_the_input_only(tmp_path: Path) -> None:
    header, lines = sample_lines()
    h = write_csv(tmp_path / "h.csv.gz", header, lines[:3_000])
    i = write_csv(tmp_path / "i.csv.gz", header, lines[3_000:6_000])
    summary = replay(SPEC, i, adapter=ADAPTER, features_out=tmp_path / "w.parquet", warmup=[h], limit=1_000)
    assert summary.scored == 1_000
    assert pq.read_metadata(tmp_path / "w.parquet").num_rows == 1_000


@pytest.mark.parametrize("n_files", [1, 3])
def test_merge_keeps_file_order_at_equal_ts(n_files: int) -> None:
    from entities.events import Event
    from streams.history import _merge
    from streams.sources import Block

    def ev(ts: int, name: str) -> Event:
        return Event(name, "e", "transaction", ts, None)

    streams = [
        iter([Block([ev(1, f"{k}a"), ev(2, f"{k}b")]), Block([ev(2, f"{k}c"), ev(5, f"{k}d")])])
        for k in range(n_files)
    ]
    merged = [(i, e.event_id) for i, items in _merge(streams) for e in items if isinstance(e, Event)]
    want = sorted(
        ((k, f"{k}{c}") for k in range(n_files) for c in "abcd"),
        key=lambda p: ({"a": 1, "b": 2, "c": 2, "d": 5}[p[1][-1]], p[0]),
    )
    assert merged == want
