"""Malformed-input fuzz on the real broker: the worker survives whatever arrives.

Hypothesis generates ~1,200 broken messages of every kind - bytes, JSON, types,
sizes, encodings, keys, timestamps, lateness - mostly by breaking one thing in a
real Sparkov event, and resends real events (duplicates). They are interleaved
with ~2,650 good events and published to a worker. Then: the worker is alive,
every good transaction has exactly one score, with the features replay's engine
gives for the good events alone (the bad ones left no trace), every bad message
is in the DLQ - original key and bytes, a reason matching its kind - and the DLQ
holds as many messages as ``supernova_dlq_total`` counts. Duplicates are no dead
letters: they are ignored and counted in ``supernova_duplicates_total``.

The corpus is deterministic (``derandomize=True``, a fixed interleaving seed), so
a failure in CI reproduces locally; the per-kind table is printed (``-s``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import math
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, metric, read_topic, train_small_model

from entities.engine import Engine
from entities.events import MAX_EVENT_BYTES, MAX_TS_MS, MIN_TS_MS, Event
from entities.spec import load_spec
from streams.kafka_io import partition_for
from streams.messages import DLQ_REASON, DLQ_SOURCE, ScoreMessage
from streams.produce import file_events
from streams.replay import replay

pytestmark = [pytest.mark.kafka, pytest.mark.fault]

PARTITIONS = 2
GOOD_ROWS = 2_000  # Sparkov rows: 2,000 transactions plus each card's profile event
SEED = 20_240_601  # interleaving of the bad messages among the good ones
DAY_MS = 86_400_000
TXN_FIELDS = ("merchant", "category", "amt", "merch_lat", "merch_long")
PROFILE_TEXT = ("first", "last", "gender", "street", "city", "state", "zip", "job")
STRINGS = ("event_id", "entity_id", "merchant", "category")  # string fields of a transaction
INVALID_UTF8 = (
    b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"caf\xe9", b"\xe9t\xe9",
)  # fmt: skip


@dataclass(frozen=True)
class Bad:
    """One message for the events topic and what the worker must do with it."""

    kind: str
    key: bytes | None
    value: bytes | None
    expect: str  # a regex the DLQ reason must match; "" for a duplicate (not a dead letter)
    after: int | None = None  # index of the good event it must follow (duplicates, late events)

    @property
    def dead(self) -> bool:
        """A dead letter (else a duplicate, which the worker ignores)."""
        return bool(self.expect)


@dataclass(frozen=True)
class Template:
    """A good event: its index in the good sequence, wire dict, key and bytes."""

    index: int
    event: Event
    wire: dict[str, Any]
    key: bytes
    value: bytes


enc = msgspec.json.encode


def _field(path: str) -> str:
    """A regex for ``field '<path>'`` in a reason."""
    return re.escape(f"field '{path}'")


_DROP = object()


def _with(wire: dict[str, Any], path: str, value: Any = _DROP) -> dict[str, Any]:
    """A copy of ``wire`` with ``path`` (``ts`` or ``attrs.amt``) set to ``value``, or dropped."""
    out = {**wire, "attrs": dict(wire["attrs"])}
    parent, name = (out["attrs"], path[6:]) if path.startswith("attrs.") else (out, path)
    if value is _DROP:
        del parent[name]
    else:
        parent[name] = value
    return out


def _insert_in_string(value: bytes, name: str, junk: bytes) -> bytes:
    """``junk`` placed right after the opening quote of the string field ``name``."""
    marker = f'"{name}":"'.encode()
    at = value.index(marker) + len(marker)
    return value[:at] + junk + value[at:]


# --- strategies ------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
CONTAINERS = st.lists(JSON_SCALARS, max_size=3) | st.dictionaries(
    st.text(max_size=5), JSON_SCALARS, max_size=2
)
NOT_STRING = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | CONTAINERS
NOT_NUMBER = st.none() | st.booleans() | st.text(max_size=12) | CONTAINERS  # JSON ints are numbers
NOT_INT = st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=12) | CONTAINERS
TEXT = st.text(max_size=40)


def _is_rfc3339(s: str, kind: type) -> bool:
    try:
        msgspec.json.decode(enc(s), type=kind)
    except msgspec.ValidationError:
        return False
    return True


NOT_DATE = (
    st.none()
    | st.booleans()
    | st.integers()
    | CONTAINERS
    | TEXT.filter(lambda s: not _is_rfc3339(s, dt.date))
)
NOT_TS = (
    st.none()
    | st.booleans()
    | st.floats()  # NaN and infinities are written as null
    | CONTAINERS
    | TEXT.filter(lambda s: not _is_rfc3339(s, dt.datetime))
)


class Corpus:
    """Strategies for each kind of broken message, built on the good events."""

    def __init__(self, templates: list[Template], now_ms: int) -> None:
        self.now_ms = now_ms
        self.any = st.sampled_from(templates)
        self.txn = st.sampled_from([t for t in templates if t.event.type == "transaction"])

    def kinds(self) -> dict[str, tuple[st.SearchStrategy[Bad], int]]:
        """Kind name -> (strategy, how many to draw)."""
        return {
            "random bytes": (self.random_bytes(), 80),
            "truncated JSON": (self.truncated(), 60),
            "invalid JSON": (self.invalid_json(), 70),
            "JSON not an object": (self.not_object(), 40),
            "non-UTF-8 in a string": (self.non_utf8_in_string(), 40),
            "other encodings": (self.other_encoding(), 40),
            "deep nesting": (self.deep_nesting(), 20),
            "missing field": (self.missing_field(), 70),
            "wrong type: field": (self.wrong_type_field(), 70),
            "wrong type: attr": (self.wrong_type_attr(), 120),
            "oversized payload": (self.oversized(), 20),
            "string too long": (self.too_long(), 40),
            "unknown event type": (self.unknown_type(), 40),
            "null key": (self.null_key(), 30),
            "key != entity_id": (self.key_mismatch(), 60),
            "null value": (self.null_value(), 20),
            "ts without offset": (self.ts_naive(), 30),
            "ts wrong type/float": (self.ts_wrong_type(), 40),
            "ts out of range": (self.ts_out_of_range(), 40),
            "ts > 1 day ahead": (self.ts_future(), 40),
            "lat/long out of range": (self.lat_long(), 60),
            "empty id": (self.empty_id(), 30),
            "late > 1 day": (self.late(), 30),
            "duplicate (same bytes)": (self.duplicate(), 60),
            "duplicate (same event_id)": (self.duplicate_altered(), 30),
        }

    def _bad(self, kind: str, t: Template, wire: Any, expect: str, key: Any = "same") -> Bad:
        return Bad(kind, t.key if key == "same" else key, enc(wire), expect)

    def random_bytes(self) -> st.SearchStrategy[Bad]:
        key = st.one_of(self.any.map(lambda t: t.key), st.binary(max_size=20))
        return st.builds(lambda k, v: Bad("random bytes", k, v, r"\S"), key, st.binary(max_size=600))

    def truncated(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            cut = d(st.integers(0, len(t.value) - 1))
            return Bad("truncated JSON", t.key, t.value[:cut], r"malformed|truncated")

        return draw()

    def invalid_json(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            how = d(st.sampled_from(["drop quote", "trailing", "control", "repr", "NaN", "comma"]))
            v = t.value
            if how == "drop quote":  # quotes pair up in JSON: one less never parses
                quotes = [i for i, c in enumerate(v) if c == ord('"') and v[i - 1] != ord("\\")]
                i = d(st.sampled_from(quotes))
                v = v[:i] + v[i + 1 :]
            elif how == "trailing":
                v = v + d(st.sampled_from([b"x", b"}", b",", b"{}", b"]", b"\x00", v]))
            elif how == "control":  # raw control characters are not allowed in strings
                ch = bytes([d(st.integers(0, 0x1F))])
                v = _insert_in_string(v, d(st.sampled_from(["event_id", "entity_id"])), ch)
            elif how == "repr":
                v = repr(t.wire).encode()
            elif how == "NaN":
                field = "amt" if t.event.type == "transaction" else "lat"
                literal = d(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
                v = enc(_with(t.wire, f"attrs.{field}", 0.0))
                v = v.replace(f'"{field}":0.0'.encode(), f'"{field}":{literal}'.encode())
            else:
                v = v.replace(b",", b",,", 1)
            # msgspec validates as it parses: a quote dropped after the event type's tag
            # ("type":"profile,"ts":...) is reported as that tag's invalid value first.
            return Bad("invalid JSON", t.key, v, r"malformed|truncated|Expected|field 'type': Invalid value")

        return draw()

    def not_object(self) -> st.SearchStrategy[Bad]:
        def wrap(t: Template, how: str, scalar: Any) -> Bad:
            value = {"list": [t.wire], "scalar": scalar, "string": t.value.decode()}[how]
            return self._bad("JSON not an object", t, value, r"Expected `object`")

        scalars = (
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.lists(JSON_SCALARS)
        )
        return st.builds(wrap, self.any, st.sampled_from(["list", "scalar", "string"]), scalars)

    def non_utf8_in_string(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.txn)
            path = d(st.sampled_from(STRINGS))
            junk = d(st.sampled_from(INVALID_UTF8))
            value = _insert_in_string(t.value, path, junk)
            return Bad("non-UTF-8 in a string", t.key, value, r"(?i)utf|malformed|invalid")

        return draw()

    def other_encoding(self) -> st.SearchStrategy[Bad]:
        encoders: dict[str, Callable[[Template], bytes]] = {
            "utf-16": lambda t: t.value.decode().encode("utf-16"),
            "utf-16-le": lambda t: t.value.decode().encode("utf-16-le"),
            "utf-32": lambda t: t.value.decode().encode("utf-32"),
            "utf-8 BOM": lambda t: t.value.decode().encode("utf-8-sig"),
            "gzip": lambda t: gzip.compress(t.value, mtime=0),
            "base64": lambda t: base64.b64encode(t.value),
            "lone surrogate": lambda t: _insert_in_string(t.value, "event_id", b"\\ud800"),
            "reversed surrogates": lambda t: _insert_in_string(t.value, "event_id", b"\\udc00\\ud800"),
        }
        return st.builds(
            lambda t, name: Bad("other encodings", t.key, encoders[name](t), r"malformed|Expected `object`"),
            self.any,
            st.sampled_from(sorted(encoders)),
        )

    def deep_nesting(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            opener, closer = d(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
            # Deeper than any JSON decoder recurses, small enough to pass the size check.
            depth = d(st.integers(2_000, (MAX_EVENT_BYTES - len(t.value) - 100) // (len(opener) + 1)))
            nested = b'"extra":' + opener * depth + b"0" + closer * depth
            if d(st.booleans()):  # an unknown field of the event, or of its attrs
                body = t.value[:-1] + b"," + nested + b"}"
            else:
                body = t.value.replace(b'"attrs":{', b'"attrs":{' + nested + b",", 1)
            return Bad("deep nesting", t.key, body, r"\S")

        return draw()

    def missing_field(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            paths = ["event_id", "entity_id", "type", "ts", "attrs"]
            if t.event.type == "transaction":
                paths += [f"attrs.{f}" for f in TXN_FIELDS]  # profile attrs are all optional
            path = d(st.sampled_from(paths))
            name = path.rsplit(".", 1)[-1]
            return self._bad("missing field", t, _with(t.wire, path), rf"missing required field `{name}`")

        return draw()

    def wrong_type_field(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            path, values = d(
                st.sampled_from(
                    [
                        ("event_id", NOT_STRING),
                        ("entity_id", NOT_STRING),
                        ("type", NOT_STRING.filter(lambda v: not isinstance(v, dict | list))),
                        ("attrs", NOT_STRING.filter(lambda v: not isinstance(v, dict))),
                        ("label", st.booleans() | st.text(max_size=5) | CONTAINERS),
                    ]
                )
            )
            value = d(values)
            expect = r"Expected|Invalid value|missing required" if path == "type" else _field(path)
            if path == "attrs" and value is None:
                expect = _field("attrs")
            return self._bad("wrong type: field", t, _with(t.wire, path, value), expect)

        return draw()

    def wrong_type_attr(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            choices: list[tuple[str, st.SearchStrategy[Any]]]
            if t.event.type == "transaction":
                choices = [("merchant", NOT_STRING), ("category", NOT_STRING)]
                choices += [(f, NOT_NUMBER) for f in ("amt", "merch_lat", "merch_long")]
            else:
                choices = [(f, NOT_STRING) for f in PROFILE_TEXT]
                choices += [("lat", NOT_NUMBER), ("long", NOT_NUMBER), ("dob", NOT_DATE)]
                choices += [("city_pop", NOT_INT | st.integers(max_value=-1))]
            field, values = d(st.sampled_from(choices))
            path = f"attrs.{field}"
            return self._bad("wrong type: attr", t, _with(t.wire, path, d(values)), _field(path))

        return draw()

    def oversized(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            size = d(st.integers(MAX_EVENT_BYTES + 1, 3 * MAX_EVENT_BYTES))
            how = d(st.sampled_from(["unknown field", "long merchant", "random bytes"]))
            if how == "random bytes":
                value = random.Random(size).randbytes(size)
            else:  # an otherwise acceptable event (unknown fields are ignored) made too big
                pad = "x" * (size - len(t.value))
                big = (
                    {**t.wire, "padding": pad}
                    if how == "unknown field"
                    else _with(t.wire, "attrs.merchant", pad)
                )
                value = enc(big)
            return Bad("oversized payload", t.key, value, r"exceeds")

        return draw()

    def too_long(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            texts = ["merchant", "category"] if t.event.type == "transaction" else list(PROFILE_TEXT)
            path = d(st.sampled_from(["event_id", "entity_id"] + [f"attrs.{f}" for f in texts]))
            limit = 256 if path in ("event_id", "entity_id") else 200
            value = d(st.text(alphabet="abc\u00e9\u4e2d", min_size=limit + 1, max_size=4 * limit))
            key = value.encode() if path == "entity_id" else "same"
            return self._bad("string too long", t, _with(t.wire, path, value), _field(path) + ".*length", key)

        return draw()

    def unknown_type(self) -> st.SearchStrategy[Bad]:
        names = st.sampled_from(["refund", "", "Transaction", "TRANSACTION", "transaction ", "profiles"])

        def unknown(t: Template, name: str) -> Bad:
            return self._bad("unknown event type", t, _with(t.wire, "type", name), r"Invalid value|type")

        return st.builds(
            unknown, self.any, (names | TEXT).filter(lambda s: s not in ("transaction", "profile"))
        )

    def null_key(self) -> st.SearchStrategy[Bad]:
        return self.any.map(lambda t: Bad("null key", None, t.value, r"null key"))

    def key_mismatch(self) -> st.SearchStrategy[Bad]:
        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            other = d(self.any)
            key = d(
                st.sampled_from(
                    [
                        b"",
                        t.key + b" ",
                        b" " + t.key,
                        b"0" + t.key,
                        t.key[:-1],
                        t.key + b"\xff",
                        t.key.decode().encode("utf-16-le"),
                        t.event.event_id.encode(),
                        other.key if other.key != t.key else t.key + b"1",
                    ]
                )
            )
            return Bad("key != entity_id", key, t.value, r"differs from the message key")

        return draw()

    def null_value(self) -> st.SearchStrategy[Bad]:
        return self.any.map(lambda t: Bad("null value", t.key, None, r"truncated"))

    def ts_naive(self) -> st.SearchStrategy[Bad]:
        def naive(t: Template, fmt: str) -> Bad:
            when = dt.datetime.fromtimestamp(t.event.ts / 1000, dt.UTC).replace(tzinfo=None)
            return self._bad("ts without offset", t, _with(t.wire, "ts", when.strftime(fmt)), _field("ts"))

        formats = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]
        return st.builds(naive, self.any, st.sampled_from(formats))

    def ts_wrong_type(self) -> st.SearchStrategy[Bad]:
        def wrong(t: Template, how: str, value: Any) -> Bad:
            ts = {"seconds float": t.event.ts / 1000, "ms float": float(t.event.ts), "other": value}[how]
            return self._bad("ts wrong type/float", t, _with(t.wire, "ts", ts), _field("ts"))

        return st.builds(wrong, self.any, st.sampled_from(["seconds float", "ms float", "other"]), NOT_TS)

    def ts_out_of_range(self) -> st.SearchStrategy[Bad]:
        values = st.one_of(
            st.integers(min_value=MAX_TS_MS + 1),
            st.integers(max_value=MIN_TS_MS - 1),
            st.integers(1, 1899).map(lambda y: f"{y:04d}-06-21T12:00:00Z"),
            st.sampled_from(
                [
                    "1899-12-31T23:59:59Z",
                    "1900-01-01T00:00:00+00:01",
                    "9999-12-31T23:59:59-00:01",
                    "2020-02-30T00:00:00Z",
                    "2020-13-01T00:00:00Z",
                    "2020-06-21T25:00:00Z",
                    "2020-06-21T12:60:00Z",
                    "+12020-06-21T12:00:00Z",
                ]
            ),
        )

        def out_of_range(t: Template, ts: Any) -> Bad:
            return self._bad("ts out of range", t, _with(t.wire, "ts", ts), _field("ts"))

        return st.builds(out_of_range, self.any, values)

    def ts_future(self) -> st.SearchStrategy[Bad]:
        # At least an hour beyond the worker's horizon (now + 1 day), whenever it reads it.
        def future(t: Template, ahead: int, as_text: bool, offset_h: int) -> Bad:
            ts: Any = self.now_ms + ahead
            if as_text:
                tz = dt.timezone(dt.timedelta(hours=offset_h))
                ts = dt.datetime.fromtimestamp(ts / 1000, tz).isoformat()
            return self._bad("ts > 1 day ahead", t, _with(t.wire, "ts", ts), r"field 'ts'.*ahead")

        ahead = st.integers(DAY_MS + 3_600_000, 3_650 * DAY_MS)
        return st.builds(future, self.any, ahead, st.booleans(), st.integers(-12, 14))

    def lat_long(self) -> st.SearchStrategy[Bad]:
        def beyond(limit: float) -> st.SearchStrategy[float]:
            big = st.floats(min_value=limit, exclude_min=True, max_value=1e300)
            return big | big.map(lambda x: -x)

        @st.composite
        def draw(d: Any) -> Bad:
            t = d(self.any)
            fields = ("merch_lat", "merch_long") if t.event.type == "transaction" else ("lat", "long")
            field = d(st.sampled_from(fields))
            value = d(beyond(90.0 if field.endswith("lat") else 180.0))
            path = f"attrs.{field}"
            return self._bad("lat/long out of range", t, _with(t.wire, path, value), _field(path))

        return draw()

    def empty_id(self) -> st.SearchStrategy[Bad]:
        def empty(t: Template, path: str) -> Bad:
            key = b"" if path == "entity_id" else "same"
            return self._bad("empty id", t, _with(t.wire, path, ""), _field(path) + ".*length >= 1", key)

        return st.builds(empty, self.any, st.sampled_from(["event_id", "entity_id"]))

    def late(self) -> st.SearchStrategy[Bad]:
        # After its template in the same partition: the card's newest is at least the
        # template's ts, so anything more than a day before that is beyond the lateness.
        def late(t: Template, lateness: int, tag: int) -> Bad:
            wire = _with(t.wire, "ts", t.event.ts - lateness)
            wire["event_id"] = f"late-{tag}-{t.event.event_id}"
            return Bad("late > 1 day", t.key, enc(wire), r"field 'ts'.*older than", after=t.index)

        return st.builds(late, self.txn, st.integers(DAY_MS + 1, 30 * DAY_MS), st.integers(0, 10**9))

    def duplicate(self) -> st.SearchStrategy[Bad]:
        return self.any.map(lambda t: Bad("duplicate (same bytes)", t.key, t.value, "", after=t.index))

    def duplicate_altered(self) -> st.SearchStrategy[Bad]:
        # Same event_id, other content: the id decides, the worker ignores it.
        def altered(t: Template, amt: float) -> Bad:
            value = enc(_with(t.wire, "attrs.amt", amt))
            return Bad("duplicate (same event_id)", t.key, value, "", after=t.index)

        return st.builds(altered, self.txn, st.floats(0.01, 1e6))


def draw_all(strategy: st.SearchStrategy[Bad], n: int) -> list[Bad]:
    """``n`` examples of a strategy, the same on every run (derandomized)."""
    out: list[Bad] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(bad: Bad) -> None:
        out.append(bad)

    collect()
    return out


# --- the test --------------------------------------------------------------------------


def _same_features(got: dict[str, float | None], want: list[float], names: list[str]) -> bool:
    """Equal, NaN included (the score message writes NaN as null)."""

    def same(a: float | None, b: float) -> bool:
        x = math.nan if a is None else a
        return x == b or (math.isnan(x) and math.isnan(b))

    # Features that read personal fields are withheld from score messages (Spec.personal_features).
    return all(same(got[n], w) for n, w in zip(names, want, strict=True) if n in got) and len(got) > 0


def test_malformed_input_fuzz(kafka_broker, tmp_path: Path) -> None:
    started = time.monotonic()
    spec = load_spec(SPEC)
    codec, items = file_events(SPEC, SAMPLE, GOOD_ROWS, adapter=ADAPTER)
    good = [e for e in items if isinstance(e, Event)]
    templates = []
    for i, e in enumerate(good):
        value = codec.encode(e)
        templates.append(Template(i, e, msgspec.json.decode(value), e.entity_id.encode(), value))

    corpus = Corpus(templates, now_ms=int(time.time() * 1000))
    bad: list[Bad] = []
    for _kind, (strategy, n) in corpus.kinds().items():
        bad += draw_all(strategy, n)
    dead = [b for b in bad if b.dead]
    dups = [b for b in bad if not b.dead]
    generated = time.monotonic()

    # Interleave: each bad message goes before a random good one (after its template if it has one).
    rng = random.Random(SEED)
    slots: dict[int, list[Bad]] = defaultdict(list)
    for b in bad:
        slots[rng.randint(0 if b.after is None else b.after + 1, len(good))].append(b)
    stream: list[tuple[bytes | None, bytes | None, int]] = []
    for i in range(len(good) + 1):
        for b in slots[i]:
            p = partition_for(b.key, PARTITIONS) if b.key is not None else rng.randrange(PARTITIONS)
            stream.append((b.key, b.value, p))
        if i < len(good):
            t = templates[i]
            stream.append((t.key, t.value, partition_for(t.key, PARTITIONS)))

    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=tmp_path / "f.parquet", limit=2_000)
    model = train_small_model(spec, tmp_path / "f.parquet", tmp_path / "model", trees=5)
    worker = WorkerProcess(kafka_broker.bootstrap, model, tmp_path / "data", partitions=PARTITIONS)
    topics = worker.topics

    async def publish() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap,
            acks="all",
            enable_idempotence=True,  # keeps each partition in order, whatever the retries
            max_request_size=4 * MAX_EVENT_BYTES,
        )
        await producer.start()
        try:
            futures = [await producer.send(topics["events"], v, key=k, partition=p) for k, v, p in stream]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    txn_ids = [e.event_id for e in good if e.type == "transaction"]
    worker.start()
    try:
        asyncio.run(publish())
        published = time.monotonic()
        deadline = time.monotonic() + 60
        while metric(worker.get("/metrics") or "", "supernova_events_in_total") < len(stream):
            alive = worker.proc is not None and worker.proc.poll() is None
            assert alive, f"the worker died:\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"the worker stalled:\n{worker.log_tail()}"
            time.sleep(0.5)
        scores = read_topic(kafka_broker.bootstrap, topics["scores"], expect=len(txn_ids), timeout=30)
        letters = read_topic(kafka_broker.bootstrap, topics["dlq"], expect=len(dead), timeout=30)
        time.sleep(1.0)  # counters move after the sends: let the last poll finish
        metrics = worker.get("/metrics") or ""
        health = worker.get("/health")
        alive = worker.proc is not None and worker.proc.poll() is None
        log_tail = worker.log_tail()
    finally:
        worker.stop()
    finished = time.monotonic()

    # The per-kind table: sent, in the DLQ (matched by key and original bytes), a reason.
    pending: dict[tuple[bytes, bytes], list[Bad]] = defaultdict(list)
    for b in dead:
        pending[(b.key or b"", b.value or b"")].append(b)
    landed: Counter[str] = Counter()
    example: dict[str, str] = {}
    mismatched: list[tuple[str, str, str]] = []
    stray = []
    for m in letters:
        headers = dict(m.headers)
        reason = headers.get(DLQ_REASON, b"").decode()
        assert reason, f"a dead letter without a reason: {headers}"
        assert headers.get(DLQ_SOURCE, b"").decode().startswith(topics["events"] + "/")
        candidates = pending.get((m.key or b"", m.value or b""))
        if not candidates:
            stray.append((m.key, m.value[:80], reason))
            continue
        b = next((c for c in candidates if re.search(c.expect, reason)), candidates[0])
        candidates.remove(b)
        landed[b.kind] += 1
        example.setdefault(b.kind, reason)
        if not re.search(b.expect, reason):
            mismatched.append((b.kind, b.expect, reason))
    sent = Counter(b.kind for b in bad)
    print(
        f"\nFUZZ-TABLE | {len(good):,} good events ({len(txn_ids):,} transactions) | {len(dead):,} bad "
        f"| {len(dups):,} duplicates | generate {generated - started:.1f} s "
        f"| publish {published - generated:.1f} s | total {finished - started:.0f} s"
    )
    print(f"  {'kind':<28} {'sent':>5} {'in DLQ':>6}  example reason")
    for kind in corpus.kinds():
        shown = "(ignored: duplicate)" if kind.startswith("duplicate") else example.get(kind, "-")[:90]
        print(f"  {kind:<28} {sent[kind]:>5} {landed[kind]:>6}  {shown}")

    assert alive, f"the worker died:\n{log_tail}"
    assert health and health.get("status") == "ok", health
    assert len(dead) >= 1_000 and len(good) >= 2_000
    assert set(sent) == set(corpus.kinds()), f"kinds never generated: {set(corpus.kinds()) - set(sent)}"

    # Every good transaction scored exactly once, with the features of the good events alone.
    got = [msgspec.json.decode(m.value, type=ScoreMessage) for m in scores]
    counts = Counter(s.event_id for s in got)
    assert sorted(counts) == sorted(txn_ids), "scored events differ from the good transactions"
    assert max(counts.values()) == 1, f"scored twice: {[k for k, c in counts.items() if c > 1][:5]}"
    assert metric(metrics, "supernova_scores_out_total") == len(txn_ids)
    engine = Engine(spec)
    result = engine.process(good)
    want = dict(zip((e.event_id for e in result.scored), result.rows, strict=True))
    names = spec.feature_names
    differ = [s.event_id for s in got if not _same_features(s.features or {}, want[s.event_id], names)]
    assert not differ, f"{len(differ)} scores with features other than replay's, e.g. {differ[:3]}"

    # Every bad message in the DLQ, as it was sent, with a reason that fits; and counted.
    assert not stray, f"{len(stray)} dead letters that were never sent as bad, e.g. {stray[:3]}"
    assert len(letters) == len(dead), f"DLQ holds {len(letters)}, sent {len(dead)} bad: {sent - landed}"
    assert not mismatched, f"{len(mismatched)} reasons do not fit their kind, e.g. {mismatched[:5]}"
    assert metric(metrics, "supernova_dlq_total") == len(dead)
    assert metric(metrics, "supernova_duplicates_total") == len(dups)
