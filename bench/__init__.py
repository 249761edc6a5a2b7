"""The benchmark suite: raw Kafka ceiling, a naive faust app, the supernova worker,
latency under load and replay, measured one after the other on one broker.

Run it with ``python -m bench`` (see ``bench/run.py`` for the options).
"""
