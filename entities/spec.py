"""The feature spec: one declaration of an entity's record and its features.

A spec module (e.g. ``examples/fraud/spec.py``) builds a :class:`Spec`. The same
declaration drives replay, training, backtests and the streaming worker, and its
:func:`Spec.hash` binds trained models to it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR


def minutes(n: float) -> int:
    """Return n minutes in milliseconds."""
    return int(n * MS_PER_MINUTE)


def hours(n: float) -> int:
    """Return n hours in milliseconds."""
    return int(n * MS_PER_HOUR)


def days(n: float) -> int:
    """Return n days in milliseconds."""
    return int(n * MS_PER_DAY)


class SpecError(ValueError):
    """A spec that cannot be compiled: the message says which declaration and why."""


# --- record layout ---------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    """Fixed attributes, set by events of ``event_type`` (last write wins, per field)."""

    event_type: str
    fields: Mapping[str, Any]  # name -> type (msgspec-compatible, may be Annotated)


@dataclass(frozen=True)
class Repeated:
    """A repeated attribute: events of ``event_type`` append one item each.

    Items older than ``max_age`` ms (relative to the entity's newest item) or beyond
    the newest ``max_count`` are dropped; lifetime aggregates survive that.
    """

    event_type: str
    fields: Mapping[str, Any]
    max_age: int
    max_count: int = 10_000


# --- aggregations ------------------------------------------------------------------


@dataclass(frozen=True)
class Agg:
    """An aggregation over items: ``kind`` applied to ``field`` (None for count)."""

    kind: str
    field: str | None = None


def count() -> Agg:
    """Number of items."""
    return Agg("count")


def sum_(field_name: str) -> Agg:
    """Sum of a numeric field."""
    return Agg("sum", field_name)


def mean(field_name: str) -> Agg:
    """Arithmetic mean of a numeric field."""
    return Agg("mean", field_name)


def std(field_name: str) -> Agg:
    """Population standard deviation (ddof 0) of a numeric field."""
    return Agg("std", field_name)


def zscore(field_name: str) -> Agg:
    """(current value - mean) / std over the window; 0 when std < ZSCORE_MIN_STD."""
    return Agg("zscore", field_name)


def min_(field_name: str) -> Agg:
    """Minimum of a numeric field."""
    return Agg("min", field_name)


def max_(field_name: str) -> Agg:
    """Maximum of a numeric field."""
    return Agg("max", field_name)


def distinct(field_name: str) -> Agg:
    """Number of distinct values of a field."""
    return Agg("distinct", field_name)


WINDOW_KINDS = {"count", "sum", "mean", "std", "zscore", "min", "max", "distinct"}
LIFETIME_KINDS = {"count", "sum", "mean", "min", "max"}
ZSCORE_MIN_STD = 1e-9


@dataclass(frozen=True)
class SameAsCurrent:
    """Filter: only items whose ``field`` equals the current event's."""

    field: str


def same_as_current(field_name: str) -> SameAsCurrent:
    """Keep only items with the same value of ``field_name`` as the current event."""
    return SameAsCurrent(field_name)


# --- features ----------------------------------------------------------------------


@dataclass(frozen=True)
class Current:
    """A numeric attribute of the current event, as is."""

    name: str
    field: str


@dataclass(frozen=True)
class Window:
    """An aggregation over the items of ``repeated`` in (t - length, t]."""

    name: str
    repeated: str
    length: int
    agg: Agg
    where: SameAsCurrent | None = None


@dataclass(frozen=True)
class Lifetime:
    """An aggregation over every item ever appended (kept in the record, survives retention)."""

    name: str
    repeated: str
    agg: Agg


@dataclass(frozen=True)
class TimeSincePrevious:
    """Seconds since the previous item of ``repeated`` (NaN for the first)."""

    name: str
    repeated: str


@dataclass(frozen=True)
class Derived:
    """A custom pure function ``fn(event, fixed) -> float``; fixed is a dict of fixed attributes."""

    name: str
    fn: Callable[..., float]


Feature = Current | Window | Lifetime | TimeSincePrevious | Derived


@dataclass(frozen=True)
class Spec:
    """The whole declaration: entity, record layout, scored event type and features."""

    entity: str
    key: str
    fixed: Fixed
    repeated: Mapping[str, Repeated]
    score_on: str
    features: list[Feature] = field(default_factory=list)
    name: str = ""
    # How far behind its entity's newest event an event may arrive and still be
    # placed in its windows; older ones are rejected (late) rather than mis-counted.
    allowed_lateness: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in spec order: the column order of every feature row."""
        return [f.name for f in self.features]

    # --- SHIM (issue 17 plumbing): the contract's multi-type accessors over the
    # single-type spec. The lead drops this at merge for entities' real implementation.
    @property
    def scored_types(self) -> list[str]:
        """SHIM: the scored event types, in order (here: only ``score_on``)."""
        return [self.score_on]

    def feature_names_of(self, event_type: str) -> list[str]:
        """SHIM: feature names of ``event_type``'s rows; SpecError for a type that is not scored."""
        if event_type != self.score_on:
            raise SpecError(f"{event_type!r} is not a scored event type (scored: {self.scored_types})")
        return self.feature_names

    # --- end of SHIM

    @property
    def event_types(self) -> dict[str, Fixed | Repeated]:
        """Event type -> the part of the record it updates."""
        types: dict[str, Fixed | Repeated] = {self.fixed.event_type: self.fixed}
        for rep in self.repeated.values():
            types[rep.event_type] = rep
        return types

    @property
    def scored_repeated(self) -> str:
        """Name of the repeated attribute appended by the scored event type."""
        return next(n for n, r in self.repeated.items() if r.event_type == self.score_on)

    @property
    def max_window(self) -> int:
        """The longest window in ms (0 when there is none)."""
        return max((f.length for f in self.features if isinstance(f, Window)), default=0)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; the basis of the hash."""
        return {
            "entity": self.entity,
            "key": self.key,
            "score_on": self.score_on,
            "allowed_lateness": self.allowed_lateness,
            "fixed": {"event_type": self.fixed.event_type, "fields": _types(self.fixed.fields)},
            "repeated": {
                name: {
                    "event_type": r.event_type,
                    "fields": _types(r.fields),
                    "max_age": r.max_age,
                    "max_count": r.max_count,
                }
                for name, r in self.repeated.items()
            },
            "features": [_describe_feature(f) for f in self.features],
        }

    def hash(self) -> str:
        """Stable sha256 of the declaration (functions hashed by their source)."""
        text = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def layout_hash(self) -> str:
        """Hash of the record layout only: records stay readable while features change."""
        d = self.describe()
        text = json.dumps([d["fixed"], d["repeated"]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _types(fields: Mapping[str, Any]) -> dict[str, str]:
    return {k: repr(v) for k, v in fields.items()}


def _describe_feature(f: Feature) -> dict[str, Any]:
    if isinstance(f, Derived):
        return {"type": "Derived", "name": f.name, "source": inspect.getsource(f.fn)}
    out: dict[str, Any] = {"type": type(f).__name__}
    for k, v in vars(f).items():
        out[k] = vars(v) if hasattr(v, "__dataclass_fields__") else v
    return out


def _validate(spec: Spec) -> None:
    names = spec.feature_names
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpecError(f"feature names must be unique, repeated: {sorted(dup)}")
    kinds = [spec.fixed.event_type, *(r.event_type for r in spec.repeated.values())]
    if len(set(kinds)) != len(kinds):
        raise SpecError(f"each event type may update one part of the record: {kinds}")
    if spec.score_on not in {r.event_type for r in spec.repeated.values()}:
        raise SpecError(f"score_on={spec.score_on!r} must be the event type of a repeated attribute")
    scored_fields = spec.repeated[spec.scored_repeated].fields
    for f in spec.features:
        where = f"feature {f.name!r}"
        if isinstance(f, Current) and f.field not in scored_fields:
            raise SpecError(f"{where}: {f.field!r} is not a field of {spec.score_on!r} events")
        if not isinstance(f, (Window, Lifetime, TimeSincePrevious)):
            continue
        rep = spec.repeated.get(f.repeated)
        if rep is None:
            raise SpecError(f"{where}: unknown repeated attribute {f.repeated!r}")
        if isinstance(f, (Window, Lifetime)):
            allowed = WINDOW_KINDS if isinstance(f, Window) else LIFETIME_KINDS
            if f.agg.kind not in allowed:
                raise SpecError(f"{where}: aggregation {f.agg.kind!r} not one of {sorted(allowed)}")
            if f.agg.field is not None and f.agg.field not in rep.fields:
                raise SpecError(f"{where}: {f.agg.field!r} is not a field of {f.repeated!r}")
        if isinstance(f, Window):
            if f.length <= 0:
                raise SpecError(f"{where}: window length must be positive")
            if f.length + spec.allowed_lateness > rep.max_age:
                raise SpecError(
                    f"{where}: window {f.length} ms plus allowed lateness "
                    f"{spec.allowed_lateness} ms exceeds the retention of {f.repeated!r} "
                    f"({rep.max_age} ms): raise max_age"
                )
            needs_current = f.agg.kind == "zscore" or f.where is not None
            if needs_current and f.repeated != spec.scored_repeated:
                raise SpecError(f"{where}: zscore/same_as_current need the scored repeated attribute")
            if f.where is not None and f.where.field not in rep.fields:
                raise SpecError(f"{where}: filter field {f.where.field!r} is not in {f.repeated!r}")


def load_spec(path: str | Path) -> Spec:
    """Import a spec module from a file path and return its ``spec`` object."""
    module = load_spec_module(path)
    spec = getattr(module, "spec", None)
    if not isinstance(spec, Spec):
        raise SpecError(f"{path}: the module must define `spec = Spec(...)`")
    return spec


def load_spec_module(path: str | Path) -> ModuleType:
    """Import the spec module at ``path`` (its directory goes on sys.path for siblings)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    name = f"supernova_spec_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module
