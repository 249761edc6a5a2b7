"""Model subcommands of ``supernova``: train, backtest, and the registry (models list|promote|...).

``streams/cli.py`` calls :func:`add_model_commands` with its subparsers; each command
sets ``run`` to a function of the parsed arguments that returns an exit code.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Command = Callable[[argparse.Namespace], int]


def add_model_commands(sub: Any) -> None:
    """Add ``train``, ``backtest`` and ``models`` to an argparse subparsers object."""
    p = sub.add_parser("train", help="train a LightGBM model on replayed features")
    p.add_argument("--spec", required=True, type=Path, help="feature spec module")
    p.add_argument(
        "--features",
        required=True,
        type=Path,
        help="feature Parquet of one scored type from `replay --features-out` (its metadata names the type)",
    )
    p.add_argument("--out", required=True, type=Path, help="new artifact directory")
    p.add_argument("--valid-from", help="ISO date (UTC) where validation starts (default: at 80%% of rows)")
    p.add_argument(
        "--name",
        help="model name (default: the spec's name; <spec name>-<event type> when it scores several types)",
    )
    p.add_argument("--version", help="model version (default: UTC time of training)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a LightGBM parameter (repeatable; VALUE read as JSON, else text)",
    )
    p.add_argument(
        "--register", type=Path, metavar="REGISTRY", help="also copy the artifact into this registry"
    )
    p.set_defaults(run=_train)

    p = sub.add_parser("backtest", help="score replayed features and write metrics.json + report.html")
    p.add_argument("--spec", required=True, type=Path, help="feature spec module")
    p.add_argument("--model", required=True, type=Path, help="champion artifact directory")
    p.add_argument("--challenger", type=Path, help="challenger artifact directory, compared side by side")
    p.add_argument(
        "--features", required=True, type=Path, help="feature Parquet from `replay --features-out`"
    )
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument(
        "--slice-by",
        action="append",
        default=[],
        metavar="COL",
        help="also measure per value of COL, joined by event id from --source (repeatable): a CSV column "
        "its adapter reads, or for JSON lines type, entity_id or attrs.<field>",
    )
    p.add_argument("--source", type=Path, help="the replayed input file, for --slice-by")
    p.add_argument(
        "--adapter",
        metavar="FILE.py[:NAME]",
        help="input adapter of a CSV --source (NAME defaults to the file's `adapter`)",
    )
    p.set_defaults(run=_backtest)

    p = sub.add_parser("models", help="the model registry: list, register, promote, clear")
    p.add_argument(
        "--registry",
        type=Path,
        help="registry directory (default: $SUPERNOVA_MODEL_REGISTRY or models/artifacts)",
    )
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="artifacts and the champion/challenger pointers of each scored type")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=_list)
    q = msub.add_parser("register", help="copy an artifact directory into the registry")
    q.add_argument("artifact", type=Path)
    q.set_defaults(run=_register)
    q = msub.add_parser("promote", help="point champion (or challenger) of the artifact's scored type at it")
    q.add_argument("ref", help="artifact directory name, version, or model name (its newest)")
    q.add_argument("--role", choices=("champion", "challenger"), default="champion")
    q.add_argument("--spec", type=Path, help="refuse unless the artifact loads under this spec")
    q.add_argument(
        "--force",
        action="store_true",
        help="promote without --spec a model of another spec than the type's current pointers",
    )
    q.set_defaults(run=_promote)
    q = msub.add_parser("clear", help="remove a pointer (e.g. the challenger)")
    q.add_argument("role", choices=("champion", "challenger"))
    q.add_argument("--type", dest="event_type", help="scored event type (needed when several have pointers)")
    q.set_defaults(run=_clear)


def _user_errors(run: Command) -> Command:
    """Typed errors (bad spec, artifact, data or reference) end the command with their message."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from entities.spec import SpecError
        from models.artifact import ArtifactError
        from models.dataset import DatasetError
        from models.registry import RegistryError
        from models.train import TrainError
        from streams.adapters import AdapterError
        from streams.sources import SourceError

        errors = (
            SpecError,
            ArtifactError,
            DatasetError,
            RegistryError,
            TrainError,
            AdapterError,
            SourceError,
        )
        try:
            return run(args)
        except errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


@_user_errors
def _train(args: argparse.Namespace) -> int:
    from entities.spec import load_spec
    from models.registry import Registry
    from models.train import train

    spec = load_spec(args.spec)
    artifact = train(
        spec,
        args.features,
        args.out,
        valid_from=args.valid_from,
        name=args.name,
        params=_params(args.param),
        version=args.version,
    )
    m = artifact.manifest
    print(
        f"trained {m.name} {m.version}: best iteration {m.metrics['best_iteration']}, "
        f"validation ROC-AUC {m.metrics['roc_auc']:.4f}, PR-AUC {m.metrics['pr_auc']:.4f} "
        f"({m.valid['rows']:,} rows from {m.valid['from'][:10]}); wrote {args.out}"
    )
    if args.register:
        entry = Registry(args.register).register(args.out)
        print(f"registered as {entry.path}")
    return 0


@_user_errors
def _backtest(args: argparse.Namespace) -> int:
    from entities.spec import load_spec
    from models.backtest import REPORT_FILE, Slices, backtest
    from streams.sources import slice_columns

    if args.slice_by and not args.source:
        raise SystemExit("--slice-by needs --source FILE (the replayed input) to join the columns from")
    spec = load_spec(args.spec)
    slices = None
    if args.slice_by:
        columns = slice_columns(args.source, spec, args.slice_by, args.adapter)
        event_id = columns.pop("event_id")
        slices = Slices(str(args.source), event_id, columns)
    result = backtest(args.model, args.features, args.out, args.challenger, spec=spec, slices=slices)
    for role, m in result.metrics["models"].items():
        o = m["overall"]
        print(
            f"{role} {m['name']} {m['version']}: ROC-AUC {o['roc_auc']:.4f}, PR-AUC {o['pr_auc']:.4f} "
            f"on {o['rows']:,} events ({o['positives']:,} fraud)"
        )
    for warning in result.metrics["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {args.out / REPORT_FILE}")
    return 0


@_user_errors
def _list(args: argparse.Namespace) -> int:
    from models.registry import ROLES, Registry

    registry = Registry(args.registry)
    pointers = registry.pointers()
    entries = [e.as_dict() for e in registry.list()]
    if args.json:
        print(
            json.dumps({"registry": str(registry.root), "pointers": pointers, "artifacts": entries}, indent=2)
        )
        return 0
    print(f"registry {registry.root}")
    for event_type, roles in pointers.items():
        print(f"  {event_type}: " + ", ".join(f"{role} {roles[role] or '-'}" for role in ROLES))
    if not entries:
        print("  (no artifacts)")
    for e in entries:
        marks = [role for role, key in pointers.get(e["event_type"], {}).items() if key == e["artifact"]]
        mark = f"  <- {', '.join(marks)} of {e['event_type']}" if marks else ""
        print(
            f"  {e['artifact']:<40} {e['event_type']:<12} created {e['created_at']}  spec {e['spec_hash']}  "
            f"ROC-AUC {_fmt(e['roc_auc'])}  PR-AUC {_fmt(e['pr_auc'])}{mark}"
        )
    return 0


@_user_errors
def _register(args: argparse.Namespace) -> int:
    from models.registry import Registry

    entry = Registry(args.registry).register(args.artifact)
    print(f"registered {entry.key} in {entry.path.parent}")
    return 0


@_user_errors
def _promote(args: argparse.Namespace) -> int:
    from entities.spec import load_spec
    from models.registry import Registry

    spec = load_spec(args.spec) if args.spec else None
    entry = Registry(args.registry).promote(args.ref, role=args.role, spec=spec, force=args.force)
    print(f"{args.role} of {entry.manifest.event_type} -> {entry.key}")
    return 0


@_user_errors
def _clear(args: argparse.Namespace) -> int:
    from models.registry import Registry

    had = Registry(args.registry).clear(args.role, args.event_type)
    print(f"cleared {args.role}" if had else f"no {args.role} was set")
    return 0


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
