"""A backtest as one self-contained HTML page: tables plus PNG plots as data URIs.

Nothing is fetched when the page opens (no scripts, fonts or images from elsewhere),
so it can be mailed, attached to a ticket, or opened offline years later.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from models import evaluation

if TYPE_CHECKING:
    from models.backtest import Backtest

COLORS = {"champion": "#1f5fa8", "challenger": "#d2561e"}
LEGIT_COLOR, FRAUD_COLOR = "#7a8a99", "#c62828"
MAX_CURVE_POINTS = 4000
PSI_WATCH, PSI_SHIFT = 0.1, 0.25

CSS = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #1d2733;
       max-width: 1280px; margin: 24px auto; padding: 0 24px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 36px;
     border-bottom: 1px solid #d5dbe1; padding-bottom: 4px; }
.sub { color: #5b6875; margin-top: 0; }
table { border-collapse: collapse; margin: 10px 0 16px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e7eb; text-align: right; }
th { background: #f3f5f7; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
.champion { color: #1f5fa8; font-weight: 600; } .challenger { color: #d2561e; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 12px; margin: 6px 0; }
.warn { color: #b00020; font-weight: 600; }
img { max-width: 100%; display: block; margin: 8px 0; }
.cards { display: flex; gap: 16px; flex-wrap: wrap; }
.card { border: 1px solid #d5dbe1; border-radius: 6px; padding: 10px 16px; min-width: 150px; }
.card b { display: block; font-size: 22px; } .card span { color: #5b6875; }
details summary { cursor: pointer; color: #1f5fa8; }
"""


def write_report(path: Path, result: Backtest) -> Path:
    """Render ``result`` to ``path`` (atomically) and return the path."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(result), encoding="utf-8")
    tmp.replace(path)
    return path


def render(result: Backtest) -> str:
    """The report page as a string."""
    m = result.metrics
    models = m["models"]
    y = result.data.label
    scores = {s.role: s.scores for s in result.models}
    parts = [_header(m), _notes(m["notes"]), _summary(models)]
    parts += [
        "<h2>ROC and precision-recall</h2>",
        _img(_curves_figure(y, scores)),
        "<h2>Score distribution by label</h2>",
        "<p>Share of each class's events per score bin (log scale): a good model keeps "
        "legitimate events near 0 and fraud near 1.</p>",
        _img(_distribution_figure(y, scores)),
        "<h2>Alerting: precision, recall and alert rate by threshold</h2>",
        "<p>An alert is raised when score &ge; threshold. Alert rate = share of all events alerted.</p>",
        _img(_threshold_figure(y, scores)),
    ]
    for role, mm in models.items():
        parts.append(f"<h3><span class='{role}'>{role}</span> at fixed thresholds</h3>")
        parts.append(_threshold_table(mm["thresholds"]))
        parts.append(f"<h3><span class='{role}'>{role}</span> at fixed alert rates</h3>")
        parts.append(_threshold_table(mm["alert_rates"], with_target=True))
    parts += ["<h2>Over time: AUC and score stability (PSI) per month</h2>", _month_intro(models)]
    parts += [_img(_month_figure(models)), _month_table(models)]
    parts.append("<h2>Slices</h2>")
    first = next(iter(models.values()))
    if first["slices"]:
        for col in first["slices"]:
            parts.append(f"<h3>By {html.escape(col)}</h3>")
            if len(first["slices"][col]) <= 20:
                parts.append(_img(_slice_figure(models, col)))
                parts.append(_slice_table(models, col))
            else:
                parts.append(
                    f"<details><summary>{len(first['slices'][col])} values: show the table</summary>"
                    f"{_slice_table(models, col)}</details>"
                )
    else:
        parts.append(
            "<p class='note'>No slices: run the backtest with "
            "<code>--slice-by COL --source FILE [--adapter A.py]</code>.</p>"
        )
    importance = {r: mm["trained"]["metrics"].get("feature_importance_gain") for r, mm in models.items()}
    if any(importance.values()):
        parts += ["<h2>Feature importance (gain, from training)</h2>", _img(_importance_figure(importance))]
    parts.append(_trained_table(models))
    body = "\n".join(parts)
    title = html.escape(f"Backtest: {_model_label(first)}")
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


# --- sections ------------------------------------------------------------------------


def _header(m: dict[str, Any]) -> str:
    d = m["data"]
    models = ", ".join(
        f"<span class='{role}'>{role}</span> {html.escape(_model_label(mm))}"
        for role, mm in m["models"].items()
    )
    source = f"; slices from {html.escape(d['source'])}" if d.get("source") else ""
    return (
        f"<h1>Model backtest</h1><p class='sub'>{models}<br>"
        f"{d['rows']:,} labelled events ({d['positives']:,} fraud, {_pct(d['positives'] / d['rows'])}) "
        f"from {d['from'][:10]} to {d['to'][:10]} &middot; features {html.escape(d['features'])}{source}</p>"
    )


def _notes(notes: Sequence[str]) -> str:
    return "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)


def _summary(models: dict[str, Any]) -> str:
    cards = []
    for role, mm in models.items():
        o, trained = mm["overall"], mm["trained"]["metrics"]
        cards.append(
            f"<div class='card'><span class='{role}'>{role}</span> ROC-AUC<b>{_num(o['roc_auc'])}</b>"
            f"<span>validation: {_num(trained.get('roc_auc'))}</span></div>"
            f"<div class='card'><span class='{role}'>{role}</span> PR-AUC<b>{_num(o['pr_auc'])}</b>"
            f"<span>validation: {_num(trained.get('pr_auc'))}</span></div>"
        )
        top = next((r for r in mm["alert_rates"] if r["target_alert_rate"] == 0.005), None)
        if top:
            cards.append(
                f"<div class='card'><span class='{role}'>{role}</span> at 0.5% alert rate"
                f"<b>{_pct(top['recall'])} recall</b><span>precision {_pct(top['precision'])}</span></div>"
            )
    return "<h2>Summary</h2><div class='cards'>" + "".join(cards) + "</div>"


def _threshold_table(rows: list[dict[str, Any]], with_target: bool = False) -> str:
    head = ["target alert rate"] if with_target else []
    head += ["threshold", "alerts", "alert rate", "frauds caught", "precision", "recall"]
    body = []
    for r in rows:
        cells = [_pct(r["target_alert_rate"], 1)] if with_target else []
        cells += [
            f"{r['threshold']:.6g}",
            f"{r['alerts']:,}",
            _pct(r["alert_rate"], 2),
            f"{r['true_positives']:,}",
            _pct(r["precision"]),
            _pct(r["recall"]),
        ]
        body.append(cells)
    return _table(head, body)


def _month_intro(models: dict[str, Any]) -> str:
    refs = {role: mm["by_month"][0]["psi_reference"] for role, mm in models.items() if mm["by_month"]}
    text = "; ".join(f"{role}: {html.escape(ref)}" for role, ref in refs.items())
    return (
        f"<p>PSI compares each month's score distribution with the reference ({text}), over "
        f"10 quantile bins of the reference: below {PSI_WATCH} stable, {PSI_WATCH}&ndash;{PSI_SHIFT} "
        f"worth a look, above {PSI_SHIFT} shifted. Months marked * lie in the training period.</p>"
    )


def _month_table(models: dict[str, Any]) -> str:
    roles = list(models)
    head = ["month", "events", "fraud", "fraud rate"]
    for role in roles:
        head += [f"{role} ROC-AUC", f"{role} PR-AUC", f"{role} PSI"]
    body = []
    first = models[roles[0]]["by_month"]
    for i, row in enumerate(first):
        cells = [
            row["month"] + (" *" if row["in_training_period"] else ""),
            f"{row['rows']:,}",
            f"{row['positives']:,}",
            _pct(row["base_rate"], 2),
        ]
        for role in roles:
            r = models[role]["by_month"][i]
            psi = r["psi"]
            flag = " class='warn'" if psi is not None and psi > PSI_SHIFT else ""
            cells += [_num(r["roc_auc"]), _num(r["pr_auc"]), f"<span{flag}>{_num(psi, 3)}</span>"]
        body.append(cells)
    return _table(head, body, escape=False)


def _slice_table(models: dict[str, Any], col: str) -> str:
    roles = list(models)
    head = [col, "events", "fraud", "fraud rate"]
    for role in roles:
        head += [f"{role} ROC-AUC", f"{role} PR-AUC"]
    body = []
    by_value = {role: {r["value"]: r for r in models[role]["slices"][col]} for role in roles}
    for row in models[roles[0]]["slices"][col]:
        cells = [
            html.escape(row["value"]),
            f"{row['rows']:,}",
            f"{row['positives']:,}",
            _pct(row["base_rate"], 2),
        ]
        for role in roles:
            r = by_value[role][row["value"]]
            cells += [_num(r["roc_auc"]), _num(r["pr_auc"])]
        body.append(cells)
    return _table(head, body, escape=False)


def _trained_table(models: dict[str, Any]) -> str:
    head = ["model", "version", "spec hash", "trained on", "validated on", "best iteration", "path"]
    body = []
    for role, mm in models.items():
        t, v = mm["trained"]["train"], mm["trained"]["valid"]
        body.append(
            [
                f"<span class='{role}'>{role}</span> {html.escape(mm['name'])}",
                html.escape(mm["version"]),
                html.escape(mm["spec_hash"]),
                _period(t),
                _period(v),
                str(mm["trained"]["metrics"].get("best_iteration", "?")),
                html.escape(mm["path"]),
            ]
        )
    return "<h2>Models</h2>" + _table(head, body, escape=False)


# --- figures ---------------------------------------------------------------------------


def _curves_figure(y: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    fig, (roc, roc_log, pr) = plt.subplots(1, 3, figsize=(15, 4.6))
    for role, s in scores.items():
        fpr, tpr, _ = evaluation.roc_curve(y, s)
        precision, recall, _ = evaluation.precision_recall_curve(y, s)
        auc, ap = evaluation.roc_auc(y, s), evaluation.average_precision(y, s)
        keep = _thin(len(fpr))
        roc.plot(fpr[keep], tpr[keep], color=COLORS[role], label=f"{role} (AUC {auc:.4f})")
        roc_log.plot(fpr[keep], tpr[keep], color=COLORS[role], label=role)
        keep = _thin(len(recall))
        pr.step(
            recall[keep], precision[keep], where="post", color=COLORS[role], label=f"{role} (AP {ap:.4f})"
        )
    roc.plot([0, 1], [0, 1], color="#bbb", lw=1, ls="--")
    roc.set(title="ROC", xlabel="false-positive rate", ylabel="true-positive rate (recall)")
    roc_log.set_xscale("log")
    roc_log.set(
        title="ROC, false-positive rate on a log scale",
        xlabel="false-positive rate",
        ylabel="true-positive rate (recall)",
        xlim=(max(1e-5, 0.5 / max(1, int((y == 0).sum()))), 1),
    )
    pr.axhline(y.mean(), color="#bbb", lw=1, ls="--", label=f"base rate {y.mean():.2%}")
    pr.set(title="Precision-recall", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    for ax in (roc, roc_log, pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is not pr else "lower left")
    return fig


def _distribution_figure(y: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    fig, axes = plt.subplots(1, len(scores), figsize=(7.5 * len(scores), 4.2), squeeze=False)
    bins = np.linspace(0, 1, 51)
    for ax, (role, s) in zip(axes[0], scores.items(), strict=True):
        for label, color, name in ((0, LEGIT_COLOR, "legitimate"), (1, FRAUD_COLOR, "fraud")):
            part = s[y == label]
            weights = np.full(len(part), 1 / max(1, len(part)))
            ax.hist(part, bins=bins, weights=weights, color=color, alpha=0.6, label=f"{name} ({len(part):,})")
        ax.set_yscale("log")
        ax.set(title=f"{role}: score by label", xlabel="score", ylabel="share of the class's events")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _threshold_figure(y: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    fig, (ax, ax_rate) = plt.subplots(1, 2, figsize=(15, 4.6))
    grid = np.linspace(0, 1, 201)[1:-1]
    for role, s in scores.items():
        rows = evaluation.at_thresholds(y, s, list(grid))
        color = COLORS[role]
        ax.plot(grid, [r.precision for r in rows], color=color, label=f"{role} precision")
        ax.plot(grid, [r.recall for r in rows], color=color, ls="--", label=f"{role} recall")
        ax_rate.plot(grid, [r.alert_rate for r in rows], color=color, label=f"{role} alert rate")
    ax.set(title="Precision and recall by threshold", xlabel="threshold", ylim=(0, 1.02))
    ax_rate.axhline(y.mean(), color=FRAUD_COLOR, lw=1, ls=":", label=f"fraud rate {y.mean():.2%}")
    ax_rate.set_yscale("log")
    ax_rate.set(title="Alert rate by threshold", xlabel="threshold", ylabel="share of events alerted")
    for a in (ax, ax_rate):
        a.grid(alpha=0.3, which="both")
        a.legend()
    return fig


def _month_figure(models: dict[str, Any]) -> Figure:
    fig, (auc, psi) = plt.subplots(1, 2, figsize=(15, 4.4))
    width = 0.8 / len(models)
    for k, (role, mm) in enumerate(models.items()):
        rows = mm["by_month"]
        x = np.arange(len(rows))
        color = COLORS[role]
        auc.plot(x, [_nan(r["roc_auc"]) for r in rows], "o-", color=color, label=f"{role} ROC-AUC")
        auc.plot(x, [_nan(r["pr_auc"]) for r in rows], "s--", color=color, label=f"{role} PR-AUC")
        psi.bar(
            x + (k - (len(models) - 1) / 2) * width,
            [_nan(r["psi"]) for r in rows],
            width,
            color=color,
            label=role,
        )
        labels = [r["month"] for r in rows]
    for ax in (auc, psi):
        ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right")
        ax.grid(alpha=0.3)
    psi.axhline(PSI_WATCH, color="#f0b400", lw=1, ls="--", label=f"{PSI_WATCH} watch")
    psi.axhline(PSI_SHIFT, color="#b00020", lw=1, ls="--", label=f"{PSI_SHIFT} shifted")
    auc.set(title="AUC per month", ylabel="AUC")
    psi.set(title="Score PSI per month vs reference", ylabel="PSI")
    auc.legend(loc="best")
    psi.legend()
    fig.tight_layout()
    return fig


def _slice_figure(models: dict[str, Any], col: str) -> Figure:
    first = next(iter(models.values()))["slices"][col]
    values = [r["value"] for r in first][::-1]
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(15, 0.32 * len(values) + 1.6))
    height = 0.8 / len(models)
    for k, (role, mm) in enumerate(models.items()):
        by_value = {r["value"]: r for r in mm["slices"][col]}
        y = np.arange(len(values)) + (k - (len(models) - 1) / 2) * height
        for ax, key in ((roc, "roc_auc"), (pr, "pr_auc")):
            ax.barh(y, [_nan(by_value[v][key]) for v in values], height, color=COLORS[role], label=role)
    for i, v in enumerate(values):
        row = next(r for r in first if r["value"] == v)
        if row["positives"] in (0, row["rows"]):
            label = "n/a: no fraud" if row["positives"] == 0 else "n/a: fraud only"
            for ax in (roc, pr):
                ax.text(0.01, i, label, va="center", fontsize=8, color="#5b6875")
    for ax, title in ((roc, "ROC-AUC"), (pr, "PR-AUC")):
        ax.set_yticks(np.arange(len(values)), values)
        ax.set(title=f"{title} by {col} (ordered by volume)", xlim=(0, 1))
        ax.grid(alpha=0.3, axis="x")
        ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def _importance_figure(importance: dict[str, dict[str, float] | None]) -> Figure:
    present = {role: imp for role, imp in importance.items() if imp}
    first = next(iter(present.values()))
    names = sorted(first, key=lambda n: first[n])
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(names) + 1.4))
    height = 0.8 / len(present)
    for k, (role, imp) in enumerate(present.items()):
        total = sum(imp.values()) or 1.0
        y = np.arange(len(names)) + (k - (len(present) - 1) / 2) * height
        ax.barh(y, [imp.get(n, 0.0) / total for n in names], height, color=COLORS[role], label=role)
    ax.set_yticks(np.arange(len(names)), names)
    ax.set(xlabel="share of total gain")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# --- helpers ---------------------------------------------------------------------------


def _img(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img alt='' src='data:image/png;base64,{data}'>"


def _thin(n: int) -> np.ndarray:
    """Indices of at most MAX_CURVE_POINTS points spread over a curve (ends kept)."""
    if n <= MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).astype(np.int64))


def _table(head: list[str], rows: list[list[str]], escape: bool = True) -> str:
    fmt: Callable[[str], str] = html.escape if escape else str
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _model_label(mm: dict[str, Any]) -> str:
    return f"{mm['name']} {mm['version']}"


def _period(p: dict[str, Any]) -> str:
    if not p:
        return "?"
    span = f"{p.get('from', '?')[:10]} .. {p.get('to', '?')[:10]}"
    return f"{span} ({p.get('rows', 0):,} rows, {p.get('positives', 0):,} fraud)"


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x
