"""Replay's outputs (one file or one per scored type, with their metadata) and input adapters."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SAMPLE, SPEC, train_small_model

from entities.spec import Spec
from models.dataset import META_EVENT_TYPE, META_SPEC_HASH
from streams.adapters import AdapterError, load_adapter
from streams.cli import main as supernova
from streams.produce import file_events
from streams.replay import OutputError, output_paths, replay
from streams.sources import Rejected

N_ROWS = 3_000


def _metadata(path: Path) -> dict[str, str]:
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"supernova.")}


def test_a_parquet_path_is_one_file_and_another_path_a_directory_per_type(spec: Spec, tmp_path: Path) -> None:
    replay(SPEC, SAMPLE, features_out=tmp_path / "f.parquet", limit=N_ROWS, adapter=ADAPTER)
    replay(SPEC, SAMPLE, features_out=tmp_path / "dir", limit=N_ROWS, adapter=ADAPTER)
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["transaction.parquet"]
    one, per_type = tmp_path / "f.parquet", tmp_path / "dir" / "transaction.parquet"
    for path in (one, per_type):
        assert _metadata(path) == {META_EVENT_TYPE: "transaction", META_SPEC_HASH: spec.hash()}
        names = pq.read_schema(path).names
        assert names == ["event_id", "entity_id", "ts", *spec.feature_names_of("transaction"), "label"]
    pd.testing.assert_frame_equal(pd.read_parquet(one), pd.read_parquet(per_type))


def test_scores_follow_the_same_rule_and_carry_the_metadata(
    spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    model = train_small_model(spec, sample_features, tmp_path / "m", trees=3)
    out = tmp_path / "scores"
    argv = ["replay", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER)]
    argv += ["--limit", str(N_ROWS), "--model", str(model), "--scores-out", str(out)]
    assert supernova(argv) == 0
    scores = out / "transaction.parquet"
    assert _metadata(scores) == {META_EVENT_TYPE: "transaction", META_SPEC_HASH: spec.hash()}
    assert len(pd.read_parquet(scores)) == N_ROWS


def test_two_models_of_one_type_are_refused(
    spec: Spec, sample_features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = train_small_model(spec, sample_features, tmp_path / "m", trees=3)
    argv = ["replay", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER), "--limit", "10"]
    argv += ["--model", str(model), "--model", str(model), "--scores-out", str(tmp_path / "s")]
    assert supernova(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "both score 'transaction' events" in err


def test_a_spec_with_several_scored_types_needs_a_directory() -> None:
    # Stand-in for a two-type Spec (output_paths reads only scored_types) until entities/ has one.
    two = SimpleNamespace(scored_types=["order", "login"])
    with pytest.raises(
        OutputError, match=r"--features-out out/f.parquet: .* 2 event types .* give a directory"
    ):
        output_paths(two, Path("out/f.parquet"))  # type: ignore[arg-type]
    with pytest.raises(OutputError, match="--scores-out"):
        output_paths(two, Path("s.parquet"), "--scores-out")  # type: ignore[arg-type]
    assert output_paths(two, Path("out")) == {  # type: ignore[arg-type]
        "order": Path("out/order.parquet"),
        "login": Path("out/login.parquet"),
    }


def test_csv_without_an_adapter_is_a_one_line_error_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.parquet"
    assert supernova(["replay", "--spec", str(SPEC), "--input", str(SAMPLE), "--features-out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CSV input needs an adapter" in err and "--adapter FILE.py[:NAME]" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert (
        supernova(["produce", "--spec", str(SPEC), "--input", str(SAMPLE), "--bootstrap", "127.0.0.1:1"]) == 2
    )
    assert "--adapter" in capsys.readouterr().err  # refused before any connection is tried


def test_replay_with_nothing_to_write_or_a_missing_input_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["replay", "--spec", str(SPEC), "--adapter", str(ADAPTER)]
    assert supernova([*base, "--input", str(SAMPLE)]) == 2
    assert (
        capsys.readouterr().err
        == "error: nothing to write: give --features-out (and --scores-out with --model)\n"
    )
    out = ["--features-out", str(tmp_path / "f.parquet")]
    gone = tmp_path / "nothere.jsonl"
    for files in (["--input", str(gone)], ["--input", str(SAMPLE), "--warmup", str(gone)]):
        assert supernova([*base, *files, *out]) == 2
        assert capsys.readouterr().err == f"error: no such input file: {gone}\n"
    assert list(tmp_path.iterdir()) == []
    assert supernova([*base, "--input", str(SAMPLE), *out, "--model", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == "error: --model scores into --scores-out (S.parquet | DIR): give it\n"
    produce = ["produce", "--spec", str(SPEC), "--input", str(gone), "--bootstrap", "127.0.0.1:1"]
    assert supernova(produce) == 2  # before any connection is tried
    assert capsys.readouterr().err == f"error: no such input file: {gone}\n"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("examples/fraud/nope.py", "no such file"),
        (f"{ADAPTER}:Nope", "sparkov.py defines no 'Nope'"),
        (str(SPEC), "spec.py defines no 'adapter' (or name the class: FILE.py:CLASS)"),
        (f"{ADAPTER}:PROFILE_FIELDS", "'PROFILE_FIELDS' is not an adapter class"),
    ],
)
def test_adapter_mistakes_are_one_line_errors(ref: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_adapter(ref)
    assert "\n" not in str(err.value)


def test_an_adapter_is_named_by_file_or_by_file_and_class() -> None:
    by_default, by_name = load_adapter(ADAPTER), load_adapter(f"{ADAPTER}:SparkovMapping")
    assert by_default is by_name and by_default.__name__ == "SparkovMapping"


def test_json_lines_of_wire_events_need_no_adapter(spec: Spec, tmp_path: Path) -> None:
    codec, items = file_events(SPEC, SAMPLE, N_ROWS, adapter=ADAPTER)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(codec.encode(e) for e in items if not isinstance(e, Rejected)))
    replay(SPEC, jsonl, features_out=tmp_path / "from-jsonl.parquet")
    replay(SPEC, SAMPLE, features_out=tmp_path / "from-csv.parquet", limit=N_ROWS, adapter=ADAPTER)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "from-jsonl.parquet"), pd.read_parquet(tmp_path / "from-csv.parquet")
    )


def test_the_sparkov_adapter_sends_a_profile_on_a_card_s_first_row_and_on_each_change(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiles are remembered as hashes, within a bound: past it, a card's profile is sent again."""
    from entities.events import EventCodec

    mapping_type: Any = load_adapter(ADAPTER)
    module = __import__(mapping_type.__module__)
    fields = (*mapping_type.columns, mapping_type.ts_column)
    base = dict.fromkeys(fields, "x") | {
        "cc_num": "4000",
        "is_fraud": "0",
        "amt": "1.5",
        "merch_lat": "34.0",
        "merch_long": "-81.0",
        "lat": "34.0",
        "long": "-81.0",
        "city_pop": "10",
        "dob": "1970-01-01",
    }
    rows = [
        base | {"trans_num": "t1"},
        base | {"trans_num": "t2"},  # same profile: no profile event
        base | {"trans_num": "t3", "street": "1 New Road"},  # moved: one profile event
        base | {"trans_num": "t4", "street": "1 New Road"},
        base | {"trans_num": "t5", "cc_num": "4001"},  # another card: its first profile
        base | {"trans_num": "t6", "street": "1 New Road"},
    ]

    def types(mapping: object, limit: int | None = None) -> list[str]:
        if limit is not None:
            monkeypatch.setattr(module, "MAX_PROFILES", limit)
        out: list[object] = []
        cols = {f: [r[f] for r in rows] for f in fields}
        mapping.map_rows(cols, list(range(len(rows))), out, lambda i, err: pytest.fail(str(err)))  # type: ignore[attr-defined]
        return [f"{e.type}:{e.entity_id}" for e in out]  # type: ignore[attr-defined]

    sent = types(mapping_type(EventCodec(spec)))
    assert sent == [
        "profile:4000", "transaction:4000", "transaction:4000",
        "profile:4000", "transaction:4000", "transaction:4000",
        "profile:4001", "transaction:4001", "transaction:4000",
    ]  # fmt: skip
    # With room for one card, card 4001 makes 4000 forgotten: its next row sends it again.
    assert types(mapping_type(EventCodec(spec)), limit=1).count("profile:4000") == 3
