"""Shared pytest fixtures.

Kafka: tests that need a broker get a real Apache Kafka 4.1.1 broker (KRaft,
single node on 127.0.0.1), never a mock. A mock would hide exactly what these
tests are for: partition/offset semantics, consumer-group rebalances, commit
and restart behaviour, real client/broker timeouts. The broker is started by
``scripts/kafka`` (see ``streams/local_kafka.py``) once per test session, on
free ports and with its data in a temporary directory, and stopped at the end.

Markers:
  kafka  the test needs the broker (``-m "not kafka"`` skips them)
  fault  the test injects faults (kills or restarts processes); slower
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make the helpers in tests/ importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from secure_kafka import SecureBroker
from streaming import ADAPTER, SAMPLE, SPEC

from entities.spec import Spec, load_spec
from streams.local_kafka import KafkaBroker
from streams.replay import replay


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs a real Kafka broker (the kafka_broker fixture)")
    config.addinivalue_line("markers", "fault: injects faults (kills/restarts processes)")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real broker for the whole session; tests must use their own topics."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A second broker, SASL_SSL with ACLs, started only for the tests that ask for it."""
    broker = SecureBroker(tmp_path_factory.mktemp("kafka-secure"))
    with broker:  # started, and stopped at the end
        yield broker


@pytest.fixture(scope="session")
def spec() -> Spec:
    """The fraud spec of ``examples/fraud``."""
    return load_spec(SPEC)


@pytest.fixture(scope="session")
def sample_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Feature rows of the committed sample (``supernova replay``), for tests that train models."""
    path = tmp_path_factory.mktemp("sample-replay") / "features.parquet"
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=path)
    return path
