"""Input adapters: how rows of a CSV file become events, named on the command line.

An adapter is not part of the spec: the same spec reads JSON lines of wire events
with no adapter at all, and a CSV through whichever adapter fits its columns.
``--adapter FILE.py[:NAME]`` names a class in a Python file; without ``:NAME`` the
file's module-level ``adapter`` is used.

An adapter class is built with the EventCodec (``adapter(codec)``) and has
``columns``, ``ts_column``, ``ts_format`` and ``events(cols, i, ts)``: the events of
row ``i`` of a batch of columns (Python lists). It may also have
``map_rows(cols, ts, out, reject)``, the same for a whole batch at once (used when
every row has a ts), which must give exactly what ``events`` row by row gives.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

DEFAULT_NAME = "adapter"
REQUIRED = ("columns", "ts_column", "ts_format", "events")

# What callers pass: a FILE.py[:NAME] reference, an adapter class, or None (JSON lines).
AdapterRef = str | Path | type | None


class AdapterError(ValueError):
    """An adapter that cannot be found or used, or a CSV given without one."""


def load_adapter(ref: str | Path) -> type:
    """The adapter class named by ``FILE.py[:NAME]`` (NAME defaults to ``adapter``)."""
    text = str(ref)
    path_text, sep, name = text.rpartition(":")
    if not (sep and name.isidentifier()):
        path_text, sep, name = text, "", DEFAULT_NAME
    path = Path(path_text).resolve()
    if not path.is_file():
        raise AdapterError(f"--adapter {text}: no such file {path}")
    module_name = f"supernova_adapter_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        if str(path.parent) not in sys.path:  # siblings of the adapter file stay importable
            sys.path.insert(0, str(path.parent))
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise AdapterError(f"--adapter {text}: {path} is not a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    adapter = getattr(module, name, None)
    if adapter is None:
        hint = " (or name the class: FILE.py:CLASS)" if not sep else ""
        raise AdapterError(f"--adapter {text}: {path.name} defines no {name!r}{hint}")
    missing = [a for a in REQUIRED if not hasattr(adapter, a)]
    if not isinstance(adapter, type) or missing:
        raise AdapterError(
            f"--adapter {text}: {name!r} is not an adapter class (lacks {missing or 'a class'})"
        )
    return adapter


def resolve_adapter(ref: AdapterRef) -> type | None:
    """An adapter class from a reference, a class, or None."""
    if ref is None or isinstance(ref, type):
        return ref
    return load_adapter(ref)


def require_adapter(adapter: type | None, path: Path) -> type:
    """``adapter``, or the one-line error for a CSV given without one."""
    if adapter is None:
        raise AdapterError(
            f"{path}: CSV input needs an adapter that maps its rows to events: "
            "pass --adapter FILE.py[:NAME] (e.g. --adapter examples/fraud/sparkov.py)"
        )
    return adapter


def raw_columns(adapter: Any) -> list[str]:
    """The CSV columns an adapter reads: its ts column, then ``columns``."""
    return [adapter.ts_column, *(c for c in adapter.columns if c != adapter.ts_column)]
