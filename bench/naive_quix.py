"""The naive baseline in Quix Streams: the fraud scorer as a typical Quix user writes it.

An ``Application`` and one ``StreamingDataFrame`` over the events topic: a stateful
``apply`` keeps each card's record in Quix's per-key state (RocksDB with a changelog
topic, Quix's defaults) and scores each transaction, a ``filter`` drops the profile
events (they make no score), ``to_topic`` writes the scores. The per-event work is
the naive faust agent's (``bench.naive_faust.apply_event``): append the transaction,
rescan the record for the 19 features, one-row LightGBM predict on one thread, drop
what is older than the retention. Default Quix settings, except what the set-up
needs (broker, consumer group, ``auto_offset_reset="earliest"`` for the preloaded
topic, state directory, quiet logs).

Quix copies the input message's timestamp to what it produces, so the bench reads
throughput from an output topic created with LogAppendTime (../shared/KAFKA-NOTES.md).

    python -m bench.naive_quix --bootstrap HOST:PORT --input T --output T \
        --model DIR --app-id ID --data-dir DIR
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.naive_faust import apply_event, load_predict, naive_parser


def create_app(args: argparse.Namespace) -> Any:
    """The Quix application with its dataframe defined (``app.run()`` starts it)."""
    from quixstreams import Application, State

    predict = load_predict(args.model)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.app_id,
        auto_offset_reset="earliest",
        state_dir=str(args.data_dir),
        loglevel="WARNING",
    )
    events = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
    scores = app.topic(args.output, key_serializer="bytes", value_serializer="json")

    def score(event: dict[str, Any], state: State) -> dict[str, Any] | None:
        record, out = apply_event(event, state.get("record"), predict)
        state.set("record", record)
        return out

    sdf = app.dataframe(events)
    sdf = sdf.apply(score, stateful=True)
    sdf = sdf.filter(lambda out: out is not None)
    sdf.to_topic(scores)
    return app


def main() -> None:
    """Parse the options and run the application until SIGTERM (Quix stops gracefully)."""
    args = naive_parser(__doc__.splitlines()[0]).parse_args()
    create_app(args).run()


if __name__ == "__main__":
    main()
