"""The benchmark suite in smoke mode: every system scores every event (rates are not judged)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.run import main  # noqa: E402

pytestmark = pytest.mark.kafka


def test_every_system_scores_every_event_in_smoke_mode(kafka_broker, tmp_path: Path) -> None:
    args = ["--smoke", "--bootstrap", kafka_broker.bootstrap, "--out", str(tmp_path)]
    code = main([*args, "--workers-latency-rate", "500"])

    results = json.loads((tmp_path / "latest.json").read_text())
    assert code == 0, "\n".join(results["checks"]["lines"])
    assert results["checks"]["ok"]
    runs = results["runs"]
    events = results["config"]["events"]
    assert runs["raw"]["outputs"] == events
    assert runs["naive_faust"]["outputs"] == runs["worker"]["outputs"] > 0
    assert runs["naive_quix"]["outputs"] == runs["worker"]["outputs"]  # the same work in Quix Streams
    assert runs["workers"]["outputs"] == runs["worker"]["outputs"]  # two processes, one group
    assert results["latency"]["scores"] > 0
    assert results["latency_workers"]["scores"] == results["latency_workers"]["expected_scores"] > 0
    (point,) = results["latency_curve"]  # smoke: one lower load after the latency phase
    assert point["load"] == 0.25 and point["scores"] == point["expected_scores"] > 0
    assert runs["replay"]["events_per_s"] > 0
    assert (tmp_path / "latest.png").stat().st_size > 0
