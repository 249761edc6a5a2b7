"""The model registry: a directory of artifacts plus champion / challenger pointers per scored type.

Layout::

    <registry>/
        fraud-20251125T101500Z/          model.txt + manifest.json (one artifact per directory;
        fraud-20251126T091200Z/          the manifest names the event type it scores)
        pointers/
            transaction/
                champion.json            {"artifact": "fraud-20251126T091200Z", "event_type": ..., ...}
                challenger.json          (optional)
            login/
                champion.json
        promotions.jsonl                 one line per promotion: type, who replaced whom, when

Each scored event type has its own champion and challenger; a promotion reads the
type from the artifact's manifest. A pointer names its artifact relative to the
registry, so the directory can move. Pointers are replaced atomically (write,
fsync, rename): a worker watching ``champion.json`` sees the old pointer or the new
one, never half of one, and an artifact is complete before it can be pointed at
(``save`` writes its manifest last). The default registry is ``models/artifacts/``
in the repository; ``$SUPERNOVA_MODEL_REGISTRY`` or an explicit directory overrides it.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entities.spec import Spec
from models.artifact import ArtifactError, Manifest, load, read_manifest

log = logging.getLogger(__name__)

REGISTRY_ENV = "SUPERNOVA_MODEL_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).resolve().parent / "artifacts"
ROLES = ("champion", "challenger")
HISTORY_FILE = "promotions.jsonl"
POINTERS_DIR = "pointers"


class RegistryError(ValueError):
    """A reference that matches no artifact (or several), or a bad role."""


@dataclass(frozen=True)
class Entry:
    """One artifact in the registry."""

    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        """The artifact's directory name: how pointers refer to it."""
        return self.path.name

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary for listings."""
        m = self.manifest
        return {
            "artifact": self.key,
            "name": m.name,
            "version": m.version,
            "created_at": m.created_at,
            "spec_hash": m.spec_hash,
            "event_type": m.event_type,
            "roc_auc": m.metrics.get("roc_auc"),
            "pr_auc": m.metrics.get("pr_auc"),
        }


def default_registry() -> Path:
    """``$SUPERNOVA_MODEL_REGISTRY`` if set, else ``models/artifacts/`` in the repository."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else DEFAULT_REGISTRY


class Registry:
    """Artifacts under one directory and the pointers that say which one serves."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_registry()

    def list(self) -> list[Entry]:
        """Every complete artifact, oldest first (unreadable ones are logged and skipped)."""
        entries: list[Entry] = []
        if not self.root.is_dir():
            return entries
        for child in sorted(self.root.iterdir()):
            if not child.is_dir():
                continue
            try:
                entries.append(Entry(child, read_manifest(child)))
            except ArtifactError as exc:
                log.debug("skipping %s: %s", child, exc)
        return sorted(entries, key=lambda e: (e.manifest.created_at, e.manifest.version, e.key))

    def find(self, ref: str | Path) -> Entry:
        """The artifact named by directory name, path, version, or model name (its newest)."""
        entries = self.list()
        text = str(ref)
        for match in (
            [e for e in entries if e.key == text],
            [e for e in entries if e.manifest.version == text],
            [e for e in entries if e.manifest.name == text][-1:],
        ):
            if len(match) == 1:
                return match[0]
            if len(match) > 1:
                raise RegistryError(f"{text!r} matches {[e.key for e in match]}: use the directory name")
        if Path(ref).is_dir():
            resolved = Path(ref).resolve()
            for e in entries:
                if e.path.resolve() == resolved:
                    return e
            raise RegistryError(f"{ref} is not in the registry {self.root}: `models register` it first")
        known = ", ".join(e.key for e in entries) or "none"
        raise RegistryError(f"no artifact {text!r} in {self.root} (known: {known})")

    def register(self, artifact_dir: str | Path) -> Entry:
        """Copy an artifact directory into the registry as ``<name>-<version>``."""
        manifest = read_manifest(artifact_dir)
        target = self.root / f"{manifest.name}-{manifest.version}"
        if target.exists():
            raise RegistryError(f"{target} already exists: artifacts are immutable, train a new version")
        tmp = self.root / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(artifact_dir, tmp)
        # Renamed only when complete, so list() never sees half an artifact.
        tmp.rename(target)
        log.info("registered %s", target)
        return Entry(target, manifest)

    def promote(
        self, ref: str | Path, role: str = "champion", spec: Spec | None = None, force: bool = False
    ) -> Entry:
        """Point ``role`` of the artifact's event type at it; with ``spec``, first check that it loads.

        Without ``spec`` (or ``force``) an artifact trained on another spec than the
        type's current pointers is refused: pointers are per event type, and two specs
        may score the same type (a worker of the other spec would refuse the model).
        Promoting the current challenger to champion clears that type's challenger pointer.
        """
        _check_role(role)
        entry = self.find(ref)
        event_type = _check_type(entry.manifest.event_type)
        if spec is not None:
            load(entry.path, spec)  # raises ArtifactError with the reason
        elif not force:
            self._check_same_spec(entry, event_type)
        previous = self.pointer(role, event_type)
        pointer = {
            "role": role,
            "event_type": event_type,
            "artifact": entry.key,
            "name": entry.manifest.name,
            "version": entry.manifest.version,
            "spec_hash": entry.manifest.spec_hash,
            "promoted_at": _now(),
        }
        _write_atomically(self._pointer_path(role, event_type), json.dumps(pointer, indent=2) + "\n")
        challenger = self.pointer("challenger", event_type)
        if role == "champion" and challenger is not None and challenger.get("artifact") == entry.key:
            self.clear("challenger", event_type)
        with open(self.root / HISTORY_FILE, "a") as history:
            previous_key = previous.get("artifact") if previous else None
            history.write(json.dumps({**pointer, "previous": previous_key}) + "\n")
        log.info("%s of %s is now %s", role, event_type, entry.key)
        return entry

    def _check_same_spec(self, entry: Entry, event_type: str) -> None:
        """RegistryError if a pointer of ``event_type`` names a model of another spec than ``entry``'s."""
        want = entry.manifest.spec_hash
        for role in ROLES:
            pointer = self.pointer(role, event_type)
            if pointer is not None and pointer.get("spec_hash") not in (None, want):
                raise RegistryError(
                    f"the {role} of {event_type} is {pointer.get('artifact')}, trained on spec "
                    f"{pointer.get('spec_hash')}; {entry.key} was trained on spec {want}, and workers "
                    f"of the other spec would refuse it. Give --spec with the spec the workers run "
                    f"(the model must load under it), or --force"
                )

    def event_types(self) -> builtins.list[str]:
        """The event types that have a pointer, sorted."""
        base = self.root / POINTERS_DIR
        if not base.is_dir():
            return []
        return sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("*.json")))

    def clear(self, role: str, event_type: str | None = None) -> bool:
        """Remove a pointer (the challenger, typically); whether there was one.

        The type may be left out if only one has pointers.
        """
        _check_role(role)
        path = self._pointer_path(role, self._one_type(event_type))
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def pointer(self, role: str, event_type: str) -> dict[str, Any] | None:
        """The raw pointer JSON of ``role`` for ``event_type``, or None when unset."""
        _check_role(role)
        path = self._pointer_path(role, event_type)
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RegistryError(f"{path}: unreadable pointer: {exc}") from None

    def pointers(self) -> dict[str, dict[str, str | None]]:
        """Event type -> role -> the artifact it points at (None when unset)."""
        out: dict[str, dict[str, str | None]] = {}
        for event_type in self.event_types():
            roles = {role: self.pointer(role, event_type) for role in ROLES}
            out[event_type] = {role: p.get("artifact") if p else None for role, p in roles.items()}
        return out

    def resolve(self, role: str, event_type: str) -> Entry | None:
        """The artifact ``role`` of ``event_type`` points at, or None when unset."""
        pointer = self.pointer(role, event_type)
        if pointer is None:
            return None
        path = self.root / pointer["artifact"]
        try:
            entry = Entry(path, read_manifest(path))
        except ArtifactError as exc:
            raise RegistryError(f"{event_type}/{role}.json points at {pointer['artifact']}: {exc}") from None
        if entry.manifest.event_type != event_type:
            raise RegistryError(
                f"{event_type}/{role}.json points at {entry.key}, "
                f"a model of {entry.manifest.event_type!r} events"
            )
        return entry

    def champion(self, event_type: str) -> Entry | None:
        """The serving model of ``event_type``, or None when none is promoted."""
        return self.resolve("champion", event_type)

    def challenger(self, event_type: str) -> Entry | None:
        """The shadow model of ``event_type``, or None."""
        return self.resolve("challenger", event_type)

    def _pointer_path(self, role: str, event_type: str) -> Path:
        return self.root / POINTERS_DIR / _check_type(event_type) / f"{role}.json"

    def _one_type(self, event_type: str | None) -> str:
        if event_type is not None:
            return event_type
        types = self.event_types()
        if len(types) != 1:
            raise RegistryError(f"name the event type (--type): the registry has pointers for {types}")
        return types[0]


def _check_type(event_type: str) -> str:
    """An event type usable as a directory name (it becomes one under ``pointers/``)."""
    if not event_type or event_type.startswith(".") or "/" in event_type or "\\" in event_type:
        raise RegistryError(f"event type {event_type!r} cannot name a pointer directory")
    return event_type


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise RegistryError(f"role must be one of {ROLES}, got {role!r}")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory is synced.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
