"""The faust app around the batch loop: lifecycle, web views, timers.

faust gives the worker its lifecycle (signals, graceful stop), the HTTP server and
timers; the event hot path is the :class:`BatchWorker` loop running as a service of
the app, because faust's per-event stream path costs more per message than the whole
batch loop does per event (docs/performance.md).

HTTP (bound to 127.0.0.1 unless told otherwise):
``GET /health``, ``GET /metrics`` (Prometheus), ``GET /entities/{entity_id}`` (with a
bearer token when the worker has one: streams/security.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import faust
from aiokafka.errors import KafkaError
from mode import Service

from streams import lookup
from streams.security import authorized, refusal
from streams.worker import BatchWorker, WorkerConfig

log = logging.getLogger(__name__)


def faust_credentials(kafka: dict[str, Any]) -> Any:
    """The same SASL/SSL settings the aiokafka clients get, in faust's form."""
    protocol = kafka.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.get("sasl_plain_username"),
            password=kafka.get("sasl_plain_password"),
            mechanism=kafka.get("sasl_mechanism", "PLAIN"),
            ssl_context=kafka.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(kafka["ssl_context"])
    return None


def create_app(
    cfg: WorkerConfig,
    worker: BatchWorker,
    http_host: str = "127.0.0.1",
    http_port: int = 6066,
    on_timer: Callable[[], Any] | None = None,
    http_token: str | None = None,
) -> faust.App:
    """A faust App whose service runs ``worker`` and whose web server exposes it.

    With ``http_token``, ``/entities`` answers only requests that carry it as a
    bearer token (401 otherwise); ``/health`` and ``/metrics`` stay open.
    """
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        cfg.app_id,
        broker=f"kafka://{cfg.bootstrap}",
        datadir=str(cfg.data_dir / "faust"),
        web_enabled=True,
        web_bind=http_host,
        web_host=http_host,
        web_port=http_port,
        store="memory://",
        topic_partitions=cfg.partitions,
        topic_replication_factor=1,
        # A crashed worker's faust group membership must not hold a restart for 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_credentials=faust_credentials(cfg.kafka),
        # Issue 23: faust creates no topics. It would ask Kafka to create its assignor
        # topic at every start (which needs the Create right even when the topic exists);
        # streams.topics creates that topic with the app's others. (Its consumer needs
        # one topic to subscribe to, so the leader topic stays.)
        topic_allow_declare=False,
    )

    def _stop_if_refused(exc: KafkaError) -> None:
        """An ACL refusal stops the worker with one line (the CLI prints ``worker.fatal``)."""
        why = refusal(exc, worker.cfg.topic_rights)
        if why is not None:
            worker.fatal = why
            log.error("%s", why)
            os.kill(os.getpid(), signal.SIGTERM)

    class BatchLoop(Service):
        """Runs the batch loop for as long as the app runs."""

        async def on_start(self) -> None:
            try:
                await worker.start()
            except KafkaError as exc:
                # A client that did start (or half did) is closed here: nothing else will.
                for client in (worker.consumer, worker.changelog_producer, worker.producer):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.stop()
                _stop_if_refused(exc)
                raise
            self.add_future(self._run())

        async def _run(self) -> None:
            try:
                await worker.run(lambda: self.should_stop)
            except KafkaError as exc:
                _stop_if_refused(exc)
                raise
            if worker.fatal:  # refused (e.g. records of another layout): stop the app, the CLI says why
                os.kill(os.getpid(), signal.SIGTERM)

        async def on_stop(self) -> None:
            await worker.stop()

    app.service(BatchLoop)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ok = worker.consumer is not None and not worker._stopping
        return web.json(
            {
                "status": "ok" if ok else "starting",
                "partitions": sorted(worker.parts),
                "models": {  # per scored event type: the model and its shadow
                    event_type: {
                        "model": f"{scorer.champion.name} {scorer.champion.version}",
                        "shadow": f"{scorer.shadow.name} {scorer.shadow.version}" if scorer.shadow else None,
                    }
                    for event_type, scorer in worker.scorers.items()
                },
            },
            status=200 if ok else 503,
        )

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(worker.metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/entities/{entity_id}")
    async def entity(web: Any, request: Any, entity_id: str) -> Any:
        if not authorized(request.headers.get("Authorization"), http_token):
            return web.json(
                {"error": "/entities needs the bearer token of --http-token-file"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = lookup.entity(worker, entity_id)
        if found is None:
            return web.json({"error": lookup.not_found(worker, entity_id)}, status=404)
        return web.json(found)

    if on_timer is not None:

        @app.timer(interval=1.0)
        async def tick() -> None:
            await on_timer()

    return app
