"""The worker's HTTP server and scores on the real broker: token off loopback, no PII (issue 20)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, read_topic, train_small_model

from entities.events import Event
from entities.spec import Spec
from streams.produce import file_events, produce

pytestmark = pytest.mark.kafka
N_ROWS = 2_000
TOKEN = "entities-token-0123456789abcdef"
PII = {"first", "last", "street", "dob"}


def _get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    """Status and JSON body of a GET, with ``Authorization: Bearer token`` if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_entities_need_the_token_off_loopback_and_leave_pii_out_of_answers_and_scores(
    kafka_broker, spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    model = train_small_model(spec, sample_features, tmp_path / "model")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    worker = WorkerProcess(
        kafka_broker.bootstrap,
        model,
        tmp_path / "data",
        extra=["--http-host", "0.0.0.0", "--http-token-file", str(token_file)],
    )
    codec, items = file_events(SPEC, SAMPLE, N_ROWS, adapter=ADAPTER)
    events = [e for e in items if isinstance(e, Event)]
    profiles = {e.entity_id: e for e in events if e.type == "profile"}
    transactions = sum(1 for e in events if e.type == "transaction")

    worker.start()  # its readiness check reads /health without a token
    try:
        sent = asyncio.run(
            produce(kafka_broker.bootstrap, worker.topics["events"], codec, iter(events), partitions=4)
        )
        assert sent == len(events)
        scores = read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=transactions)
        entity = next(iter(profiles))

        assert _get(worker.port, f"/entities/{entity}")[0] == 401
        status, body = _get(worker.port, f"/entities/{entity}", "wrong-token")
        assert (status, body) == (401, {"error": "/entities needs the bearer token of --http-token-file"})
        status, view = _get(worker.port, f"/entities/{entity}", TOKEN)
        assert status == 200, view
        assert _get(worker.port, "/health")[0] == 200
        status, metrics = _get(worker.port, "/metrics")
        assert status == 200 and "supernova_" in metrics
    finally:
        worker.stop()

    assert view["entity_id"] == entity
    assert not PII & set(view["fixed"]), view["fixed"]
    assert view["withheld_pii"] == sorted(PII)
    assert view["fixed"]["city"] == profiles[entity].attrs.city  # the rest is there
    assert "age_years" not in view["features"]["transaction"] and "amt" in view["features"]["transaction"]

    # Scores carry ids, the model, the score and numeric features: no fixed attribute.
    assert len(scores) == transactions
    allowed = {"event_id", "entity_id", "event_type", "event_ts", "scored_at", "model", "model_version"}
    allowed |= {"spec_hash", "score", "source", "late", "features"}
    leaked = {
        str(getattr(p.attrs, name)) for p in profiles.values() for name in PII
    }  # names, streets, birth dates
    # age_years reads the date of birth: with the event's ts it would give the date back.
    shown = [n for n in spec.feature_names_of("transaction") if n != "age_years"]
    for message in scores:
        score = json.loads(message.value)
        assert set(score) <= allowed, set(score) - allowed
        assert list(score["features"]) == shown
        assert all(v is None or isinstance(v, float) for v in score["features"].values())
        text = message.value.decode()
        assert not any(value in text for value in leaked), text

    # --expose-pii (on loopback, without a token): the same entity with its personal fields.
    worker.extra = ["--expose-pii"]
    worker.start()
    try:
        status, exposed = _get(worker.port, f"/entities/{entity}")
    finally:
        worker.stop()
    assert status == 200, exposed
    assert exposed["fixed"]["first"] == profiles[entity].attrs.first
    assert exposed["fixed"]["dob"] == str(profiles[entity].attrs.dob)
    assert "withheld_pii" not in exposed
