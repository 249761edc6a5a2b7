"""Messages the worker writes: scores, dead letters, changelog records."""

from __future__ import annotations

import msgspec

# Headers of a dead letter: why, and where the original came from.
DLQ_REASON = "supernova.reason"
DLQ_SOURCE = "supernova.source"
# Headers of a changelog record: the input offsets of the batch that wrote it.
CL_BATCH_START = "supernova.batch_start"
CL_BATCH_END = "supernova.batch_end"


class Source(msgspec.Struct):
    """Where an event was read from."""

    topic: str
    partition: int
    offset: int


class ScoreMessage(msgspec.Struct, omit_defaults=True):
    """One score per scored event, keyed by entity_id on the scores topic."""

    event_id: str
    entity_id: str
    event_type: str  # the scored event type; its model scored it
    event_ts: int  # epoch ms, as on the event
    scored_at: int  # epoch ms
    model: str
    model_version: str
    spec_hash: str
    score: float
    source: Source
    late: bool = False
    features: dict[str, float | None] | None = None
    shadow_model: str | None = None
    shadow_model_version: str | None = None
    shadow_score: float | None = None
    explanation: dict[str, float] | None = None


score_encoder = msgspec.json.Encoder()
score_decoder = msgspec.json.Decoder(ScoreMessage)


def features_struct(feature_names: list[str]) -> type[msgspec.Struct]:
    """A Struct whose instances encode like ``dict(zip(feature_names, row))``, without the dict.

    Built once per spec; ``Features(*row)`` is the ``features`` of a ScoreMessage
    on the wire (the same JSON object, key order included). Fields are renamed so
    that any feature name works, identifier or not.
    """
    fields = [(f"f{i}", float | None) for i in range(len(feature_names))]
    rename = {f"f{i}": name for i, name in enumerate(feature_names)}
    return msgspec.defstruct("Features", fields, rename=rename)
