"""The worker's fast score encoding equals the plain ScoreMessage-with-a-dict encoding."""

from __future__ import annotations

import math

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
