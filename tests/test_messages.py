"""The worker's fast score encoding equals the plain ScoreMessage-with-a-dict encoding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams import messages as msg

NAMES = ["amt", "txn_count_1h", "class", "with space", "ünïcode", "f0"]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=len(NAMES), max_size=len(NAMES)))
def test_features_struct_encodes_like_the_dict(row: list[float]) -> None:
    features = msg.features_struct(NAMES)
    source = msg.Source("events", 3, 42)
    plain = msg.ScoreMessage(
        "e", "c", "t", 1, 2, "m", "v", "h", 0.5, source, features=dict(zip(NAMES, row, strict=True))
    )
    fast = msg.ScoreMessage("e", "c", "t", 1, 2, "m", "v", "h", 0.5, source, False, features(*row))  # type: ignore[arg-type]
    encoded = msg.score_encoder.encode(fast)
    assert encoded == msg.score_encoder.encode(plain)
    decoded = msg.score_decoder.decode(encoded).features
    assert decoded is not None and list(decoded) == NAMES
    for name, x in zip(NAMES, row, strict=True):
        assert decoded[name] == (None if not math.isfinite(x) else x)


def test_tail_shows_a_dead_letter_s_source_and_reason_on_stderr_and_the_value_alone_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from streams.cli import show_message

    letter = SimpleNamespace(
        value=b'{"bad": 1}',
        headers=[(msg.DLQ_REASON, b"event_id: missing"), (msg.DLQ_SOURCE, b"events/3/42")],
    )
    show_message(letter)
    show_message(SimpleNamespace(value=b'{"score": 0.5}', headers=[]))
    out, err = capsys.readouterr()
    assert out.splitlines() == ['{"bad": 1}', '{"score": 0.5}']
    assert err.splitlines() == ["# dead letter from events/3/42: event_id: missing"]


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`supernova topics | head -1`: the pipe closes under the command, which exits quietly."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = f"{sys.executable} -m streams.cli topics --app-id fraud --partitions 12 | head -1"
    done = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout == "# topics of app id fraud\n"
    assert done.stderr == ""
