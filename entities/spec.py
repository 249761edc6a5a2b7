"""The feature spec: one declaration of an entity's record and its features.

A spec module (e.g. ``examples/fraud/spec.py``) builds a :class:`Spec`. The same
declaration drives replay, training, backtests and the streaming worker, and its
:func:`Spec.hash` binds trained models to it. ``docs/spec.md`` is the user's guide.

Building a ``Spec`` expands every declaration into plain :class:`Feature` objects
(one per column, in order) and checks them: a mistake raises a one-line
:class:`SpecError` naming the declaration and the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, get_args, get_origin

from entities.aggregations import (
    Agg,
    Count,
    Distinct,
    FieldAgg,
    Max,
    Mean,
    Min,
    Std,
    Sum,
    ZScore,
)
from entities.filters import Compare, Filter, SameAsCurrent, col, same_as_current

__all__ = [
    "LIFETIME",
    "Agg",
    "Aggregation",
    "Compare",
    "Count",
    "Current",
    "Derived",
    "Distinct",
    "FieldAgg",
    "Filter",
    "Fixed",
    "Max",
    "Mean",
    "Min",
    "Repeated",
    "SameAsCurrent",
    "Scored",
    "Spec",
    "SpecError",
    "Std",
    "Sum",
    "TimeSince",
    "ZScore",
    "col",
    "days",
    "hours",
    "load_spec",
    "minutes",
    "same_as_current",
]

Duration = timedelta | int  # an int is milliseconds


def minutes(n: float) -> timedelta:
    """n minutes."""
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    """n hours."""
    return timedelta(hours=n)


def days(n: float) -> timedelta:
    """n days."""
    return timedelta(days=n)


def to_ms(d: Duration) -> int:
    """Milliseconds of a duration (a timedelta, or an int that already is milliseconds)."""
    if isinstance(d, timedelta):
        return int(d / timedelta(milliseconds=1))
    if isinstance(d, int) and not isinstance(d, bool):
        return d
    raise SpecError(f"a duration must be a timedelta or int milliseconds, got {d!r}")


class SpecError(ValueError):
    """A spec that cannot be compiled: the message says which declaration and why."""


class _Lifetime:
    """The window "every item ever appended" (see :data:`LIFETIME`)."""

    def __repr__(self) -> str:
        return "LIFETIME"


LIFETIME = _Lifetime()
Window = Duration | _Lifetime


# --- record layout ---------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    """Fixed attributes, set by events of ``event_type`` (last write wins, per field).

    ``pii`` names the fields that are personal data (a name, a street, a date of
    birth): features may read them, but the worker leaves them out of what it shows
    (``/entities``) unless told ``--expose-pii``. Marking a field changes neither
    the record layout nor the spec hash: it is a serving policy, not a feature.
    """

    event_type: str
    fields: Mapping[str, Any]  # name -> type (msgspec-compatible, may be Annotated)
    pii: Collection[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.pii, str):  # pii="dob" would otherwise mean {"d", "o", "b"}
            raise SpecError(f"Fixed({self.event_type!r}): pii must be a set of field names, got {self.pii!r}")
        pii = frozenset(self.pii)
        unknown = sorted(pii - set(self.fields))
        if unknown:
            raise SpecError(
                f"Fixed({self.event_type!r}): pii names {unknown}, not fields of it "
                f"(fields: {sorted(self.fields)})"
            )
        object.__setattr__(self, "pii", pii)


@dataclass(frozen=True)
class Repeated:
    """A repeated attribute: events of ``event_type`` append one item each.

    After each append, items with ``ts <= newest - retention`` and items beyond the
    newest ``max_count`` are dropped; lifetime aggregates survive that.
    """

    event_type: str
    fields: Mapping[str, Any]
    retention: Duration
    max_count: int = 10_000
    retention_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "retention_ms", to_ms(self.retention))


# --- feature declarations (what a user writes) -------------------------------------


@dataclass(frozen=True)
class Current:
    """The scored event's own ``field`` as a float (bool -> 1.0/0.0); named ``name`` or the field."""

    field: str
    name: str | None = None


@dataclass(frozen=True)
class Aggregation:
    """``agg`` over the items of ``repeated``, one feature per window (in order).

    A window is a duration (items in ``(t - w, t]``) or ``LIFETIME``. Names are
    ``names`` when given, else ``{prefix}_{suffix}``: ``prefix`` is ``name`` or the
    aggregation's default (``{repeated}_count``, ``{field}_{op}``), ``suffix`` the
    window (``lifetime``, ``7d``, ``24h``, ``30m``, ``90s``).
    """

    repeated: str
    agg: Agg
    windows: Sequence[Window]
    where: Filter | Sequence[Filter] | None = None
    name: str | None = None
    names: Sequence[str] | None = None


@dataclass(frozen=True)
class TimeSince:
    """Seconds from the newest qualifying earlier item of ``repeated`` to the scored event."""

    repeated: str
    where: Filter | Sequence[Filter] | None = None
    name: str | None = None


@dataclass(frozen=True)
class Derived:
    """A pure function ``fn(event, fixed)`` or ``fn(event, fixed, record)`` -> float."""

    name: str
    fn: Callable[..., float]


Declaration = Current | Aggregation | TimeSince | Derived


@dataclass(frozen=True)
class Scored:
    """A scored event type (a repeated attribute's) and its feature columns, in order."""

    event_type: str
    features: Sequence[Declaration]


# --- features (what the engine computes: one per column) ---------------------------


@dataclass(frozen=True)
class Feature:
    """One column of a scored type's rows."""

    name: str


@dataclass(frozen=True)
class CurrentFeature(Feature):
    field: str


@dataclass(frozen=True)
class AggregateFeature(Feature):
    """``agg`` over ``repeated`` in ``(t - length, t]``, or every item ever when length is None."""

    repeated: str
    agg: Agg
    length: int | None
    where: tuple[Filter, ...]


@dataclass(frozen=True)
class TimeSinceFeature(Feature):
    repeated: str
    where: tuple[Filter, ...]


@dataclass(frozen=True)
class DerivedFeature(Feature):
    fn: Callable[..., float]
    with_record: bool  # fn takes (event, fixed, record)


# --- the spec ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Spec:
    """The whole declaration: entity, record layout, scored event types and their features."""

    name: str = ""
    entity: str
    key: str
    fixed: Fixed
    repeated: Mapping[str, Repeated]
    scored: Sequence[Scored]
    # How far behind its attribute's newest item an event may arrive and still be
    # placed in its windows; older ones are rejected (late) rather than mis-counted.
    allowed_lateness: Duration = 0
    lateness_ms: int = field(init=False, repr=False, compare=False)
    _features: dict[str, list[Feature]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lateness_ms", to_ms(self.allowed_lateness))
        object.__setattr__(self, "_features", _expand_all(self))

    @property
    def scored_types(self) -> list[str]:
        """The scored event types, in declaration order."""
        return [s.event_type for s in self.scored]

    def features_of(self, event_type: str) -> list[Feature]:
        """The features of a scored type, in column order."""
        try:
            return self._features[event_type]
        except KeyError:
            raise SpecError(f"{event_type!r} is not a scored type (scored: {self.scored_types})") from None

    def feature_names_of(self, event_type: str) -> list[str]:
        """Column order of the rows of a scored type."""
        return [f.name for f in self.features_of(event_type)]

    def personal_features(self, event_type: str) -> frozenset[str]:
        """Derived features of a scored type that read a ``pii`` field: withheld with the fields.

        A function reads a field when its code names it as a string (``fixed["dob"]``,
        ``fixed.get("dob")``), itself or in a function nested in it; a callable whose
        code cannot be read counts as reading every field. An age computed from the
        date of birth would otherwise give the date back.
        """
        pii = frozenset(self.fixed.pii)
        if not pii:
            return frozenset()
        return frozenset(
            f.name
            for f in self.features_of(event_type)
            if isinstance(f, DerivedFeature) and pii & _names_read(f.fn, pii)
        )

    @property
    def feature_names(self) -> list[str]:
        """The feature names of the only scored type (SpecError if there are several)."""
        if len(self.scored) != 1:
            raise SpecError(f"the spec scores several types {self.scored_types}: use feature_names_of(type)")
        return self.feature_names_of(self.scored[0].event_type)

    @property
    def event_types(self) -> dict[str, Fixed | Repeated]:
        """Event type -> the part of the record it updates."""
        types: dict[str, Fixed | Repeated] = {self.fixed.event_type: self.fixed}
        for rep in self.repeated.values():
            types[rep.event_type] = rep
        return types

    def repeated_of(self, event_type: str) -> str:
        """Name of the repeated attribute that events of ``event_type`` append to."""
        return next(n for n, r in self.repeated.items() if r.event_type == event_type)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; the basis of the hash."""
        return {
            "name": self.name,
            "entity": self.entity,
            "key": self.key,
            "allowed_lateness_ms": self.lateness_ms,
            "fixed": {"event_type": self.fixed.event_type, "fields": _types(self.fixed.fields)},
            "repeated": {
                name: {
                    "event_type": r.event_type,
                    "fields": _types(r.fields),
                    "retention_ms": r.retention_ms,
                    "max_count": r.max_count,
                }
                for name, r in self.repeated.items()
            },
            "scored": {t: [_describe_feature(f) for f in fs] for t, fs in self._features.items()},
        }

    def hash(self) -> str:
        """Stable sha256 of the declaration (functions hashed by their source)."""
        text = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def layout_hash(self) -> str:
        """Hash of the record layout only: records stay readable while features change."""
        d = self.describe()
        # Retention is hashed under its former name, so that records stored before
        # it was renamed (same layout) stay readable.
        repeated = {
            name: {("max_age" if k == "retention_ms" else k): v for k, v in r.items()}
            for name, r in d["repeated"].items()
        }
        text = json.dumps([d["fixed"], repeated], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _types(fields: Mapping[str, Any]) -> dict[str, str]:
    return {k: repr(v) for k, v in fields.items()}


def _describe_feature(f: Feature) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(f).__name__, "name": f.name}
    if isinstance(f, DerivedFeature):
        out["source"] = inspect.getsource(f.fn)
    elif isinstance(f, CurrentFeature):
        out["field"] = f.field
    else:
        assert isinstance(f, (AggregateFeature, TimeSinceFeature))
        out["repeated"] = f.repeated
        out["where"] = [w.describe() for w in f.where]
        if isinstance(f, AggregateFeature):
            out["agg"] = {"op": f.agg.op, "field": f.agg.field}
            out["window_ms"] = "lifetime" if f.length is None else f.length
    return out


# --- expansion and checks ----------------------------------------------------------


def _names_read(fn: Callable[..., Any], every: Collection[str]) -> set[str]:
    """The strings a function's code holds (``every`` when it has no readable code)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return set(every)
    found: set[str] = set()
    stack = [code]
    while stack:
        for const in stack.pop().co_consts:
            if isinstance(const, str):
                found.add(const)
            elif inspect.iscode(const):
                stack.append(const)
    return found


def base_type(t: Any) -> Any:
    """A field type without its ``Annotated`` constraints."""
    return get_args(t)[0] if get_origin(t) is Annotated else t


def is_numeric(t: Any) -> bool:
    """Whether a field type reads as a number (bool counts: 1.0 / 0.0)."""
    return base_type(t) in (int, float, bool)


def _type_name(t: Any) -> str:
    t = base_type(t)
    return getattr(t, "__name__", repr(t))


def _text(ms: int) -> str:
    """A duration for messages: ``31 days, 0:00:00``."""
    return str(timedelta(milliseconds=ms))


def window_suffix(ms: int) -> str:
    """The name suffix of a window: ``7d`` (whole days, >= 2), ``24h``, ``30m``, ``90s``, else ms."""
    day, hour, minute, second = 86_400_000, 3_600_000, 60_000, 1_000
    if ms % day == 0 and ms >= 2 * day:
        return f"{ms // day}d"
    for unit, letter in ((hour, "h"), (minute, "m"), (second, "s")):
        if ms % unit == 0:
            return f"{ms // unit}{letter}"
    return f"{ms}ms"


def _expand_all(spec: Spec) -> dict[str, list[Feature]]:
    kinds = [spec.fixed.event_type, *(r.event_type for r in spec.repeated.values())]
    if len(set(kinds)) != len(kinds):
        raise SpecError(f"each event type may update one part of the record: {kinds}")
    if spec.lateness_ms < 0:
        raise SpecError("allowed_lateness must not be negative")
    for name, rep in spec.repeated.items():
        if rep.retention_ms <= 0 or rep.max_count < 1:
            raise SpecError(f"repeated {name!r}: retention and max_count must be positive")
    out: dict[str, list[Feature]] = {}
    for scored in spec.scored:
        t = scored.event_type
        if t in out:
            raise SpecError(f"scored type {t!r} is declared twice")
        if t not in {r.event_type for r in spec.repeated.values()}:
            types = [r.event_type for r in spec.repeated.values()]
            raise SpecError(f"unknown scored type {t!r}: not the event type of a repeated attribute {types}")
        features = [f for d in scored.features for f in _expand(spec, t, d)]
        names = [f.name for f in features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"scored {t!r}: feature names must be unique, repeated: {dup}")
        out[t] = features
    return out


def _expand(spec: Spec, scored_type: str, d: Any) -> list[Feature]:
    own_name = spec.repeated_of(scored_type)
    own = spec.repeated[own_name].fields
    at = f"scored {scored_type!r}: {type(d).__name__}"
    if isinstance(d, Current):
        where = f"{at}({d.field!r})"
        if d.field not in own:
            raise SpecError(f"{where}: unknown field {d.field!r} of {scored_type!r} events {list(own)}")
        if not is_numeric(own[d.field]):
            raise SpecError(f"{where}: field {d.field!r} is not numeric ({_type_name(own[d.field])})")
        return [CurrentFeature(d.name or d.field, d.field)]
    if isinstance(d, Derived):
        return [DerivedFeature(d.name, d.fn, _derived_arity(f"{at}({d.name!r})", d.fn) == 3)]
    if isinstance(d, (Aggregation, TimeSince)):
        rep = spec.repeated.get(d.repeated)
        if rep is None:
            raise SpecError(f"{at}: unknown repeated attribute {d.repeated!r} (have {list(spec.repeated)})")
        filters = _filters(f"{at}({d.repeated!r})", d.where, rep, d.repeated, own, scored_type)
        if isinstance(d, TimeSince):
            default = "prev" if d.repeated == own_name else "last"
            return [TimeSinceFeature(d.name or f"secs_since_{default}_{rep.event_type}", d.repeated, filters)]
        return _expand_aggregation(spec, at, d, rep, filters, d.repeated == own_name)
    raise SpecError(f"scored {scored_type!r}: {d!r} is not a feature declaration")


def _filters(
    at: str,
    where: Filter | Sequence[Filter] | None,
    rep: Repeated,
    rep_name: str,
    own: Mapping[str, Any],
    scored_type: str,
) -> tuple[Filter, ...]:
    parts = () if where is None else (where,) if isinstance(where, Filter) else tuple(where)
    for p in parts:
        if not isinstance(p, Filter):
            raise SpecError(f"{at}: where={p!r} is not a filter (use col(field) == value or same_as_current)")
        if p.field not in rep.fields:
            raise SpecError(f"{at}: filter on unknown field {p.field!r} of {rep_name!r} {list(rep.fields)}")
        if isinstance(p, SameAsCurrent) and p.field not in own:
            raise SpecError(f"{at}: same_as_current({p.field!r}), but {scored_type!r} events lack that field")
        if isinstance(p, Compare):
            numeric = is_numeric(rep.fields[p.field])
            if p.op not in ("==", "!=") and not numeric:
                raise SpecError(f"{at}: {p.describe()} orders a non-numeric field")
            kind = (int, float) if numeric else base_type(rep.fields[p.field])
            if isinstance(kind, type | tuple) and not isinstance(p.value, kind):
                raise SpecError(f"{at}: {p.describe()} compares {p.field!r} to a {type(p.value).__name__}")
    return parts


def _expand_aggregation(
    spec: Spec, at: str, d: Aggregation, rep: Repeated, where: tuple[Filter, ...], own: bool
) -> list[Feature]:
    agg = d.agg
    at = f"{at}({d.repeated!r}, {agg!r})"
    if not isinstance(agg, Agg):
        raise SpecError(f"{at}: {agg!r} is not an aggregation (Count(), Sum(field), ...)")
    if agg.field is not None:
        if agg.field not in rep.fields:
            raise SpecError(f"{at}: unknown field {agg.field!r} of {d.repeated!r} {list(rep.fields)}")
        if agg.numeric and not is_numeric(rep.fields[agg.field]):
            kind = _type_name(rep.fields[agg.field])
            raise SpecError(f"{at}: {type(agg).__name__} needs a numeric field, {agg.field!r} is {kind}")
    if agg.own_only and not own:
        raise SpecError(f"{at}: {type(agg).__name__} compares the scored event to its own attribute only")
    if not d.windows:
        raise SpecError(f"{at}: no windows")
    if d.names is not None and len(d.names) != len(d.windows):
        raise SpecError(f"{at}: {len(d.names)} names for {len(d.windows)} windows")
    if d.names is not None and d.name is not None:
        raise SpecError(f"{at}: give name (a prefix) or names (one per window), not both")
    prefix = d.name or agg.default_prefix(d.repeated)
    out: list[Feature] = []
    for i, w in enumerate(d.windows):
        if isinstance(w, _Lifetime):
            if not agg.lifetime:
                raise SpecError(f"{at}: {type(agg).__name__} has no LIFETIME form")
            length, suffix = None, "lifetime"
        else:
            length = to_ms(w)
            if length <= 0:
                raise SpecError(f"{at}: window {w!r} must be positive")
            if length + spec.lateness_ms > rep.retention_ms:
                raise SpecError(
                    f"{at}: window {_text(length)} plus allowed lateness {_text(spec.lateness_ms)} "
                    f"exceeds the retention of {d.repeated!r} ({_text(rep.retention_ms)}): raise it"
                )
            suffix = window_suffix(length)
        name = d.names[i] if d.names is not None else f"{prefix}_{suffix}"
        out.append(AggregateFeature(name, d.repeated, agg, length, where))
    return out


def _derived_arity(at: str, fn: Callable[..., Any]) -> int:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise SpecError(f"{at}: {fn!r} is not a function") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) != len(positional) or len(positional) not in (2, 3) or len(params) != len(positional):
        raise SpecError(f"{at}: fn must take (event, fixed) or (event, fixed, record), it takes {params}")
    return len(positional)


# --- loading -----------------------------------------------------------------------


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
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]  # a spec that failed to build is not cached half-made
        if isinstance(exc, SpecError) or not isinstance(exc, Exception):
            raise
        # A mistake in the spec's own code (not Python, a module not installed, a typo, a
        # wrong argument): one line saying where and what, like any other spec mistake.
        if isinstance(exc, SyntaxError):
            raise SpecError(f"{exc.filename or path}, line {exc.lineno}: {exc.msg}") from None
        if isinstance(exc, ImportError):
            raise SpecError(f"{path}: {exc}") from None
        frames = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f"{path}, line {frames[-1]}" if frames else str(path)
        raise SpecError(f"{where}: {type(exc).__name__}: {exc}") from None
    return module
