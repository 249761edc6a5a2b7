"""Replay sharded by entity equals one process: ``--jobs N``, ``--shard i/N`` + ``replay-merge``.

Every comparison is of whole frames (values, dtypes, row order) and of the files'
schema metadata, against a one-process replay of the same input.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming import ADAPTER, SAMPLE, SPEC, train_small_model

import streams.replay
from entities.spec import load_spec
from streams.cli import main as supernova
from streams.replay import replay
from streams.shards import META_SHARD, POSITION, Shard, ShardError, ShardWorkerError, merge, shard_of

REPO = Path(__file__).resolve().parents[1]
SHOP_SPEC = REPO / "examples" / "shop" / "spec.py"
FRAUD_ROWS = 3_000  # per file: the warm-up slice, then the input slice


def _frames(out: Path) -> dict[str, tuple[pd.DataFrame, dict[bytes, bytes]]]:
    """Each Parquet file of a replay output (a file or a directory): its frame and schema metadata."""
    files = {"": out} if out.suffix == ".parquet" else {f.name: f for f in sorted(out.glob("*.parquet"))}
    assert files, f"no output in {out}"
    return {name: (pd.read_parquet(f), pq.read_schema(f).metadata) for name, f in files.items()}


def assert_same_output(got: Path, want: Path) -> None:
    got_frames, want_frames = _frames(got), _frames(want)
    assert got_frames.keys() == want_frames.keys()
    for name, (frame, metadata) in want_frames.items():
        assert len(frame) > 0, name
        pd.testing.assert_frame_equal(got_frames[name][0], frame, check_exact=True)
        assert got_frames[name][1] == metadata, name


@pytest.fixture(scope="module")
def fraud_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(warm-up, input): consecutive slices of the fraud sample, as CSV.gz."""
    with gzip.open(SAMPLE, "rt") as f:
        header, *rows = f.read().splitlines(keepends=True)
    out = tmp_path_factory.mktemp("fraud")
    files = []
    for name, part in (("warm", rows[:FRAUD_ROWS]), ("input", rows[FRAUD_ROWS : 2 * FRAUD_ROWS])):
        path = out / f"{name}.csv.gz"
        with gzip.open(path, "wt") as f:
            f.writelines([header, *part])
        files.append(path)
    return files[0], files[1]


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(warm-up, input): two generated shop periods of other seeds (JSON lines.gz)."""
    out = tmp_path_factory.mktemp("shop")
    files = []
    for name, seed in (("warm", 3), ("input", 4)):
        path = out / f"{name}.jsonl.gz"
        cmd = [sys.executable, "-m", "examples.shop.generate", "--users", "150", "--days", "20"]
        subprocess.run([*cmd, "--seed", str(seed), "--out", str(path)], check=True, cwd=REPO, timeout=300)
        files.append(path)
    return files[0], files[1]


CASES = {
    "fraud": (SPEC, ADAPTER, "features.parquet"),  # one scored type: one file
    "shop": (SHOP_SPEC, None, "features"),  # two scored types: a directory
}


@pytest.mark.parametrize("example", ["fraud", "shop"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmup"])
@pytest.mark.parametrize("jobs", [2, 3])
def test_jobs_write_the_one_process_output(
    example: str,
    warm: bool,
    jobs: int,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    spec, adapter, name = CASES[example]
    warmup, source = request.getfixturevalue(f"{example}_files")
    kwargs: dict[str, Any] = {"adapter": adapter, "warmup": [warmup] if warm else []}
    one = replay(spec, source, features_out=tmp_path / "one" / name, **kwargs)
    many = replay(spec, source, features_out=tmp_path / "many" / name, jobs=jobs, **kwargs)
    assert_same_output(tmp_path / "many" / name, tmp_path / "one" / name)
    for field in ("events", "scored", "entities", "rejected", "duplicates"):
        assert getattr(many, field) == getattr(one, field), field
    assert many.events_per_s == pytest.approx(many.events / many.seconds)
    assert [p.name for p in tmp_path.joinpath("many").iterdir()] == [name]  # no shard files left


def test_scores_of_jobs_equal_one_process(fraud_files: tuple[Path, Path], tmp_path: Path) -> None:
    warmup, source = fraud_files
    spec = load_spec(SPEC)
    replay(SPEC, warmup, features_out=tmp_path / "train.parquet", adapter=ADAPTER)
    model = train_small_model(spec, tmp_path / "train.parquet", tmp_path / "model")
    for jobs, out in ((1, "one.parquet"), (2, "many.parquet")):
        replay(SPEC, source, models=[model], scores_out=tmp_path / out, adapter=ADAPTER, jobs=jobs)
    assert_same_output(tmp_path / "many.parquet", tmp_path / "one.parquet")


def test_shards_run_apart_and_replay_merge_gives_the_one_process_output(
    shop_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warmup, source = shop_files
    common = ["replay", "--spec", str(SHOP_SPEC), "--input", str(source), "--warmup", str(warmup)]
    assert supernova([*common, "--features-out", str(tmp_path / "one")]) == 0
    for i in range(3):
        assert supernova([*common, "--shard", f"{i}/3", "--features-out", str(tmp_path / f"s{i}")]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"shard {i}/3: replayed ")
    shard_file = next((tmp_path / "s1").glob("*.parquet"))
    assert pq.read_schema(shard_file).metadata[META_SHARD.encode()] == b"1/3"
    assert POSITION in pq.read_schema(shard_file).names
    shards = [str(tmp_path / f"s{i}") for i in (2, 0, 1)]  # any order
    assert supernova(["replay-merge", *shards, "--out", str(tmp_path / "merged")]) == 0
    assert capsys.readouterr().out.startswith("merged 3 shards: ")
    assert_same_output(tmp_path / "merged", tmp_path / "one")


def test_merge_refuses_an_incomplete_or_mixed_set_of_shards(
    fraud_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _, source = fraud_files
    for i, n in ((0, 2), (1, 2), (0, 3)):
        replay(SPEC, source, features_out=tmp_path / f"{i}of{n}.parquet", adapter=ADAPTER, shard=Shard(i, n))
    with pytest.raises(ShardError, match="missing shard 1/2"):
        merge([tmp_path / "0of2.parquet"], tmp_path / "out.parquet")
    with pytest.raises(ShardError, match="another replay"):
        merge([tmp_path / "0of2.parquet", tmp_path / "0of3.parquet"], tmp_path / "out.parquet")
    with pytest.raises(ShardError, match="is also"):
        merge([tmp_path / "0of2.parquet", tmp_path / "0of2.parquet"], tmp_path / "out.parquet")
    with pytest.raises(ShardError, match=r"give a F\.parquet"):
        merge([tmp_path / "0of2.parquet", tmp_path / "1of2.parquet"], tmp_path / "out")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("bad", ["3/2", "2/2", "x/2", "1/0", "-1/2", "1", "1/2/3", ""])
def test_a_bad_shard_is_one_error_line(bad: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["replay", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER)]
    code = supernova([*argv, f"--shard={bad}", "--features-out", str(tmp_path / "f.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: --shard {bad}: expected i/N with 0 <= i < N, e.g. 0/4 (the first of 4 shards)"]
    assert not list(tmp_path.iterdir())


def test_jobs_below_one_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["replay", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER), "--jobs", "0"]
    assert supernova([*argv, "--features-out", str(tmp_path / "f.parquet")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --jobs 0: give 1 or more processes"]


def _failing_spec(tmp_path: Path, source: Path, failure: str) -> Path:
    """The fraud spec, whose city_pop feature fails on one card of shard 1 of 2."""
    cards = pd.read_csv(source, usecols=["cc_num"])["cc_num"].astype(str)
    bad = next(c for c in cards if shard_of(c, 2) == 1)
    text = SPEC.read_text()
    original = '    pop = fixed.get("city_pop")\n'
    assert original in text
    spec = tmp_path / "failing_spec.py"
    spec.write_text(
        text.replace(original, f"    if event.entity_id == {bad!r}:\n        {failure}\n{original}")
    )
    return spec


@pytest.mark.parametrize(
    ("failure", "error", "match"),
    [
        ('raise RuntimeError("city_pop failed")', RuntimeError, "city_pop failed"),
        ("import os; os._exit(3)", ShardWorkerError, r"replay shard 1/2 exited \(code 3\) without a result"),
    ],
    ids=["raises", "dies"],
)
def test_a_failing_worker_fails_the_replay_and_leaves_no_output(
    fraud_files: tuple[Path, Path], tmp_path: Path, failure: str, error: type[Exception], match: str
) -> None:
    _, source = fraud_files
    spec = _failing_spec(tmp_path, source, failure)
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        replay(spec, source, features_out=out / "features.parquet", adapter=ADAPTER, jobs=2)
    assert not out.exists() or not list(out.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".replay-shards")] == []


def test_shard_of_is_stable_and_spreads_entities() -> None:
    ids = ("4613314721966", "u0001", "")
    assert [shard_of(e, 4) for e in ids] == [zlib.crc32(e.encode()) % 4 for e in ids]
    counts = pd.Series([shard_of(str(n), 3) for n in range(3_000)]).value_counts()
    assert counts.min() > 900


@settings(max_examples=40, deadline=None)
@given(
    owners=st.lists(st.integers(0, 2), min_size=0, max_size=60),
    batch=st.integers(1, 7),
)
def test_merge_interleaves_shard_files_by_input_position(
    owners: list[int], batch: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any split of positions among 3 shard files merges back in position order, batch size aside."""
    tmp = tmp_path_factory.mktemp("merge")
    meta = {META_SHARD: "", "supernova.event_type": "t"}
    for i in range(3):
        positions = [p for p, owner in enumerate(owners) if owner == i]
        table = pa.table(
            {
                "event_id": pa.array([f"e{p}" for p in positions], pa.string()),
                POSITION: pa.array(positions, pa.int64()),
            }
        ).replace_schema_metadata({**meta, META_SHARD: f"{i}/3"})
        pq.write_table(table, tmp / f"{i}.parquet")
    original = streams.replay.ROW_GROUP
    streams.replay.ROW_GROUP = batch  # small record batches: the merge crosses many of them
    try:
        rows = merge([tmp / f"{i}.parquet" for i in range(3)], tmp / "out.parquet")
    finally:
        streams.replay.ROW_GROUP = original
    merged = pq.read_table(tmp / "out.parquet")
    assert merged.column("event_id").to_pylist() == [f"e{p}" for p in range(len(owners))]
    assert merged.schema.names == ["event_id"]
    assert rows == {str(tmp / "out.parquet"): len(owners)}


def test_the_dask_recipe_merges_to_the_one_process_output(
    fraud_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """examples/dask_replay.py on a LocalCluster of 2 workers, with a warm-up file."""
    pytest.importorskip("dask.distributed")
    warmup, source = fraud_files
    common = ["--spec", str(SPEC), "--input", str(source), "--adapter", str(ADAPTER), "--warmup", str(warmup)]
    one = replay(SPEC, source, features_out=tmp_path / "one.parquet", adapter=ADAPTER, warmup=[warmup])
    cmd = [sys.executable, str(REPO / "examples" / "dask_replay.py"), *common, "--shards", "2"]
    cmd += ["--local-workers", "2", "--features-out", str(tmp_path / "dask.parquet")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    counts = one.line().split(";")[:2]  # events, scored, entities, rejected, duplicates: not the time
    assert done.stdout.startswith(f"2 shards on Dask: {';'.join(counts)};")
    assert_same_output(tmp_path / "dask.parquet", tmp_path / "one.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.parquet", "one.parquet"]


def test_jobs_count_and_report_each_reject_once(shop_files: tuple[Path, Path], tmp_path: Path) -> None:
    """Lines that make no event belong to no entity: shard 0 counts and reports them, once."""
    _, source = shop_files
    with gzip.open(source, "rt") as f:
        lines = f.read().splitlines(keepends=True)
    login = next(line for line in lines if '"success":true' in line)
    bad_event = login.replace('"success":true', '"success":"maybe"')
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text("".join([*lines[:5], "not json\n", bad_event, *lines[5:], "{}\n"]))
    reports: dict[int, list[str]] = {}
    for jobs in (1, 2):
        seen: list[str] = []
        reports[jobs] = seen

        def on_reject(item: Any, seen: list[str] = seen) -> None:
            seen.append(repr(item) if not isinstance(item, tuple) else f"{item[0].event_id}: {item[1]}")

        summary = replay(SHOP_SPEC, noisy, features_out=tmp_path / str(jobs), jobs=jobs, on_reject=on_reject)
        assert summary.rejected == 3
    assert sorted(reports[2]) == sorted(reports[1])
    assert_same_output(tmp_path / "2", tmp_path / "1")
