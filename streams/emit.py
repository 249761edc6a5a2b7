"""What leaves the worker per poll: score messages and dead letters, as producer batches.

Scoring is per poll, not per event: the poll's scored events are grouped by event
type and each type's model predicts once for its whole group (one LightGBM
predict, a compiled one where it matches). The messages then go out as producer
batches, one per partition (``send_batches``), without waiting for delivery: the
next checkpoint waits for the deliveries ``send`` adds to its ``in_flight``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from entities.engine import feature_matrix
from entities.events import Event
from entities.spec import Spec
from models.scorer import Scorer
from streams import messages as msg
from streams.kafka_io import Message, send_batches
from streams.partitioning import Routing
from streams.state import Partition
from streams.telemetry import WorkerMetrics

# A scored event: its partition, the event, its consumer record, whether it was late.
Scored = tuple[Partition, Event, Any, bool]


class Emitter:
    """Scores a poll's events by their type's model and sends the score messages and dead letters.

    ``scores_routing`` and ``dlq_routing`` partition the outputs by key with their
    topic's own partition count; the worker sets them once it knows the counts.
    """

    def __init__(
        self,
        spec: Spec,
        scorers: Mapping[str, Scorer],
        routing: Routing,
        metrics: WorkerMetrics,
        scores_topic: str,
        dlq_topic: str,
        include_features: bool = True,
        expose_pii: bool = False,
    ) -> None:
        """``scorers``: one per scored event type (swapped in place on a model reload).

        Features that read personal fields (``Spec.personal_features``) are left out of
        score messages and their explanations unless ``expose_pii``.
        """
        self.scorers = scorers
        self.metrics = metrics
        self.scores_topic = scores_topic
        self.dlq_topic = dlq_topic
        self.include_features = include_features
        self.spec_hash = spec.hash()
        self.feature_names = {t: spec.feature_names_of(t) for t in spec.scored_types}
        self.withheld = {
            t: frozenset() if expose_pii else spec.personal_features(t) for t in spec.scored_types
        }
        shown = {
            t: [n for n in names if n not in self.withheld[t]] for t, names in self.feature_names.items()
        }
        self._features = {t: msg.features_struct(names) for t, names in shown.items()}
        self._pick = {t: _picker(self.feature_names[t], self.withheld[t]) for t in spec.scored_types}
        self._single_type = spec.scored_types[0] if len(spec.scored_types) == 1 else None
        self.scores_routing = self.dlq_routing = routing

    async def send(
        self,
        producer: AIOKafkaProducer,
        scored: list[Scored],
        rows: list[list[float]],
        dead: list[Message],
        in_flight: list[Any],
    ) -> None:
        """Score the poll's scored events, send their messages and the dead letters.

        The delivery futures are added to ``in_flight`` (what the next checkpoint waits for).
        """
        scores = self.scores(scored, rows)
        in_flight.extend(await send_batches(producer, self.scores_topic, scores))
        in_flight.extend(await send_batches(producer, self.dlq_topic, dead))
        m = self.metrics
        if scored:
            now = time.time()
            m.latency.observe_many(now - np.array([rec.timestamp for _, _, rec, _ in scored]) / 1000.0)
        m.scores_out.inc(len(scores))

    def scores(self, scored: list[Scored], rows: list[list[float]]) -> list[Message]:
        """Score messages in the order of ``scored``: one predict per event type, by its model."""
        if not scored:
            return []
        if self._single_type is not None:
            by_type: dict[str, list[int]] = {self._single_type: list(range(len(scored)))}
        else:
            by_type = {}
            for k, (_, ev, _, _) in enumerate(scored):
                try:
                    by_type[ev.type].append(k)
                except KeyError:
                    by_type[ev.type] = [k]
        out: list[Message] = [None] * len(scored)  # type: ignore[list-item]  # all set below
        for event_type, at in by_type.items():
            if len(at) == len(scored):  # one type in this poll: no copies
                self._score_type(event_type, at, scored, rows, out)
            else:
                self._score_type(event_type, at, [scored[k] for k in at], [rows[k] for k in at], out)
        return out

    def _score_type(
        self,
        event_type: str,
        at: list[int],
        scored: list[Scored],
        rows: list[list[float]],
        out: list[Message],
    ) -> None:
        """The messages of one event type's scored events, placed at positions ``at`` of ``out``."""
        result = self.scorers[event_type].score(feature_matrix(rows, len(self.feature_names[event_type])))
        now_ms = int(time.time() * 1000)
        features = self._features[event_type] if self.include_features else None
        pick = self._pick[event_type]
        withheld = self.withheld[event_type]
        extras = result.has_extra
        encode = msg.score_encoder.encode
        score_message, source = msg.ScoreMessage, msg.Source
        model, version, spec_hash = result.model, result.version, self.spec_hash
        partition = self.scores_routing.partition
        # Positional arguments, no per-event attribute chains: this loop runs per event.
        for i, (k, (part, ev, rec, late), row, score) in enumerate(
            zip(at, scored, rows, result.scores.tolist(), strict=True)
        ):
            tp = part.tp
            message = score_message(
                ev.event_id,
                ev.entity_id,
                event_type,
                ev.ts,
                now_ms,
                model,
                version,
                spec_hash,
                score,
                source(tp.topic, tp.partition, rec.offset),
                late,
                None if features is None else features(*(row if pick is None else pick(row))),  # type: ignore[arg-type]
                **(_without(result.extra(i), withheld) if extras else {}),
            )
            last = (score, ev.event_id, row)
            try:
                part.last[ev.entity_id][event_type] = last
            except KeyError:
                part.last[ev.entity_id] = {event_type: last}
            out[k] = (rec.key, encode(message), [], partition(rec.key))

    def dead_letter(self, part: Partition, rec: Any, reason: str, label: str | None = None) -> Message:
        """The dead letter of consumer record ``rec`` of ``part``: key and bytes, reason and source.

        ``label``: the metric's reason label, where the field the reason names is not enough
        (``late`` and ``future`` both name field 'ts', and need different alerts).
        """
        self.metrics.dlq.labels(reason=label or reason.split(":")[0][:60]).inc()
        headers = [
            (msg.DLQ_REASON, reason.encode()),
            (msg.DLQ_SOURCE, f"{part.tp.topic}/{part.tp.partition}/{rec.offset}".encode()),
        ]
        key = rec.key
        # By key like scores; a message without a key stays with its source partition's number.
        p = (
            self.dlq_routing.partition(key)
            if key is not None
            else part.tp.partition % self.dlq_routing.partitions
        )
        return (key, rec.value if rec.value is not None else b"", headers, p)


def _picker(names: list[str], withheld: frozenset[str]) -> Callable[[list[float]], list[float]] | None:
    """A function giving a row without its ``withheld`` columns (None: none withheld)."""
    keep = [i for i, name in enumerate(names) if name not in withheld]
    if len(keep) == len(names):
        return None
    return lambda row: [row[i] for i in keep]


def _without(extra: dict[str, Any], withheld: frozenset[str]) -> dict[str, Any]:
    """Score-message extras with the ``withheld`` features left out of the explanation."""
    explanation = extra.get("explanation")
    if withheld and explanation:
        extra["explanation"] = {k: v for k, v in explanation.items() if k not in withheld}
    return extra
