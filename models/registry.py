"""The model registry: a directory of artifacts plus ``champion`` / ``challenger`` pointers.

Layout::

    <registry>/
        fraud-20251125T101500Z/     model.txt + manifest.json (one artifact per directory)
        fraud-20251126T091200Z/
        champion.json               {"artifact": "fraud-20251126T091200Z", "version": ..., ...}
        challenger.json             (optional)
        promotions.jsonl            one line per promotion: who replaced whom, when

A pointer names its artifact relative to the registry, so the directory can move.
Pointers are replaced atomically (write, fsync, rename): a worker watching
``champion.json`` sees the old pointer or the new one, never half of one, and an
artifact is complete before it can be pointed at (``save`` writes its manifest last).
The default registry is ``models/artifacts/`` in the repository; ``$SUPERNOVA_MODEL_REGISTRY``
or an explicit directory overrides it.
"""

from __future__ import annotations

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

    def promote(self, ref: str | Path, role: str = "champion", spec: Spec | None = None) -> Entry:
        """Point ``role`` at an artifact; with ``spec``, first check that it loads under it.

        Promoting the current challenger to champion clears the challenger pointer.
        """
        _check_role(role)
        entry = self.find(ref)
        if spec is not None:
            load(entry.path, spec)  # raises ArtifactError with the reason
        previous = self.pointer(role)
        now = _now()
        pointer = {
            "role": role,
            "artifact": entry.key,
            "name": entry.manifest.name,
            "version": entry.manifest.version,
            "spec_hash": entry.manifest.spec_hash,
            "promoted_at": now,
        }
        _write_atomically(self.root / f"{role}.json", json.dumps(pointer, indent=2) + "\n")
        challenger = self.pointer("challenger")
        if role == "champion" and challenger is not None and challenger.get("artifact") == entry.key:
            self.clear("challenger")
        with open(self.root / HISTORY_FILE, "a") as history:
            previous_key = previous.get("artifact") if previous else None
            history.write(json.dumps({**pointer, "previous": previous_key}) + "\n")
        log.info("%s is now %s", role, entry.key)
        return entry

    def clear(self, role: str) -> None:
        """Remove a pointer (the challenger, typically)."""
        _check_role(role)
        (self.root / f"{role}.json").unlink(missing_ok=True)

    def pointer(self, role: str) -> dict[str, Any] | None:
        """The raw pointer JSON of ``role``, or None when unset."""
        _check_role(role)
        path = self.root / f"{role}.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RegistryError(f"{path}: unreadable pointer: {exc}") from None

    def resolve(self, role: str) -> Entry | None:
        """The artifact ``role`` points at, or None when unset."""
        pointer = self.pointer(role)
        if pointer is None:
            return None
        path = self.root / pointer["artifact"]
        try:
            return Entry(path, read_manifest(path))
        except ArtifactError as exc:
            raise RegistryError(f"{role}.json points at {pointer['artifact']}: {exc}") from None

    def champion(self) -> Entry | None:
        """The serving model, or None when none is promoted."""
        return self.resolve("champion")

    def challenger(self) -> Entry | None:
        """The shadow model, or None."""
        return self.resolve("challenger")


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
