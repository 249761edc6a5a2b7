"""Every spec mistake is a one-line ``SpecError`` when the spec is built.

Each case writes a small spec file with one mistake and runs ``supernova describe``
on it: the command prints one line ``error: SpecError: ...`` on stderr naming the
mistake, and exits 2 without a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from entities.spec import SpecError, load_spec
from streams.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

BASE = """
from entities.spec import (
    LIFETIME, Aggregation, Count, Current, Derived, Fixed, Repeated, Scored, Spec, Std, Sum,
    TimeSince, ZScore, col, days, hours, same_as_current,
)


def mismatch(event, fixed):
    return 0.0


def one_argument(event):
    return 0.0


spec = Spec(
    name="errors", entity="user", key="entity_id",
    fixed=Fixed("signup", {"country": str}),
    repeated={
        "logins": Repeated("login", {"ip": str, "success": bool, "lat": float}, retention=days(31)),
        "orders": Repeated("order", {"amount": float, "category": str}, retention=days(31)),
    },
    allowed_lateness=hours(1),
    scored=[Scored(SCORED, features=[FEATURES])],
)
"""

# name: (scored type, features, words the one-line message must contain)
CASES = {
    "unknown repeated attribute": (
        "order",
        'Aggregation("clicks", Count(), windows=[hours(1)])',
        ["unknown repeated attribute", "'clicks'"],
    ),
    "unknown field": (
        "order",
        'Aggregation("orders", Sum("amt"), windows=[hours(1)])',
        ["unknown field", "'amt'"],
    ),
    "window longer than retention": (
        "order",
        'Aggregation("orders", Count(), windows=[days(31)])',
        ["exceeds the retention", "'orders'"],
    ),
    "sum on a text field": (
        "order",
        'Aggregation("orders", Sum("category"), windows=[hours(1)])',
        ["numeric", "'category'"],
    ),
    "current on a text field": ("order", 'Current("category")', ["not numeric", "'category'"]),
    "filter on a missing field": (
        "order",
        'Aggregation("logins", Count(), windows=[hours(1)], where=col("device") == "x")',
        ["filter on unknown field", "'device'"],
    ),
    "same_as_current on a field the scored event lacks": (
        "order",
        'Aggregation("logins", Count(), windows=[hours(1)], where=same_as_current("ip"))',
        ["same_as_current('ip')", "'order'"],
    ),
    "filter constant of the wrong type": (
        "order",
        'Aggregation("logins", Count(), windows=[hours(1)], where=col("success") == "no")',
        ["success == 'no'", "str"],
    ),
    "unknown scored type": ("click", 'Current("amount")', ["unknown scored type", "'click'"]),
    "duplicate feature names": (
        "order",
        'Current("amount"), Aggregation("orders", Sum("amount"), windows=[hours(1)], names=["amount"])',
        ["unique", "amount"],
    ),
    "zscore over another attribute": (
        "order",
        'Aggregation("logins", ZScore("lat"), windows=[hours(1)])',
        ["ZScore", "own attribute"],
    ),
    "derived with the wrong number of parameters": (
        "order",
        'Derived("d", one_argument)',
        ["(event, fixed)", "'d'"],
    ),
    "std has no lifetime form": (
        "order",
        'Aggregation("orders", Std("amount"), windows=[LIFETIME])',
        ["LIFETIME"],
    ),
    "time since an unknown attribute": ("order", 'TimeSince("clicks")', ["unknown repeated attribute"]),
    "not Python": ("order", 'Current("amount"),, Current("amount")', ["spec.py, line ", "invalid syntax"]),
    "a typo in the spec's code": ("order", 'Curent("amount")', ["spec.py, line ", "NameError", "'Curent'"]),
    "a wrong keyword": (
        "order",
        'Aggregation("orders", Sum("amount"), window=[hours(1)])',
        ["spec.py, line ", "TypeError", "'window'"],
    ),
    "a module that is not installed": (
        "order",
        '__import__("no_such_module_here").Current("amount")',
        ["spec.py: No module named 'no_such_module_here'"],
    ),
}


def write_spec(tmp_path: Path, scored: str, features: str) -> Path:
    path = tmp_path / "myspec" / "spec.py"  # anywhere, not under examples/
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(BASE).replace("SCORED", repr(scored)).replace("FEATURES", features))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_spec_mistake_is_one_line_from_describe(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scored, features, words = CASES[case]
    path = write_spec(tmp_path, scored, features)
    assert main(["describe", "--spec", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: SpecError: "), lines[0]
    for word in words:
        assert word in lines[0], (case, word, lines[0])
    with pytest.raises(SpecError):
        load_spec(write_spec(tmp_path / "again", scored, features))


def test_describe_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "order", 'Aggregation("orders", Sum("amt"), windows=[hours(1)])')
    cmd = [sys.executable, "-m", "streams.cli", "describe", "--spec", str(path)]
    proc = subprocess.run(cmd, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: SpecError: ") and len(proc.stderr.strip().splitlines()) == 1


def test_a_correct_spec_anywhere_describes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(
        tmp_path, "order", 'Current("amount"), Aggregation("orders", Sum("amount"), windows=[hours(1)])'
    )
    assert main(["describe", "--spec", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert '"amount_sum_1h"' in out
    spec = load_spec(path)  # the hashes a worker's refusals quote
    assert f'"hash": "{spec.hash()}"' in out and f'"layout": "{spec.layout_hash()}"' in out


def test_the_example_of_docs_spec_md_builds(tmp_path: Path) -> None:
    text = (REPO_ROOT / "docs" / "spec.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "doc_example.py"
    path.write_text(code)
    spec = load_spec(path)
    assert spec.scored_types == ["order", "login"]
    assert spec.feature_names_of("order")[:3] == ["amount", "orders_count_24h", "orders_count_lifetime"]
    assert spec.feature_names_of("login")[-1] == "amount_max_7d"
