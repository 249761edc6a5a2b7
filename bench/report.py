"""The benchmark's outputs: one rich table, ``latest.json`` and a PNG bar chart."""

from __future__ import annotations

import json
from itertools import takewhile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROWS = (
    ("raw", "raw ceiling (aiokafka passthrough)"),
    ("naive_faust", "naive faust agent (per event)"),
    ("naive_faust_tuned", "naive faust, 16 MB fetch"),
    ("naive_quix", "naive Quix Streams app (per event)"),
    ("worker", "supernova worker"),
    ("workers", "supernova worker, {processes} processes"),
    ("replay", "supernova replay (features)"),
    ("replay_model", "supernova replay (features + scores)"),
)


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "-"
    r = value / base
    return f"{r:.2f}×" if r < 10 else f"{r:.1f}×"


def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def latency_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The one-process latency phases (main and ``--latency-curve``) by rate, with their load."""
    worker = results.get("runs", {}).get("worker", {}).get("events_per_s")
    main = results.get("latency")
    points = [*results.get("latency_curve", []), *([main] if main else [])]
    if not worker:
        return []
    return sorted(({**p, "load": p["target_rate"] / worker} for p in points), key=lambda p: p["target_rate"])


def _within_25ms(results: dict[str, Any]) -> str:
    """Up to which measured load p99 stayed within 25 ms."""
    points = latency_points(results)
    if len(points) < 2:
        return ""
    good = list(takewhile(lambda p: p["p99_ms"] <= 25, points))  # every lower load within, too
    if not good:
        return f" (above 25 ms at every load measured, down to {100 * points[0]['load']:.0f}%)"
    best = good[-1]
    return f" (within 25 ms up to {100 * best['load']:.0f}% load, {best['target_rate']:,.0f} ev/s)"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The four targets, measured; ``ok`` is None where a number is missing."""
    runs = results.get("runs", {})
    raw = runs.get("raw", {}).get("events_per_s")
    naive = runs.get("naive_faust", {}).get("events_per_s")
    worker = runs.get("worker", {}).get("events_per_s")
    workers = runs.get("workers", {}).get("events_per_s")
    processes = results.get("config", {}).get("processes")
    rss = runs.get("worker", {}).get("rss_mb_at", {})
    lat = results.get("latency") or {}
    replay = runs.get("replay", {}).get("events_per_s")

    def check(name: str, measured: str, ok: bool | None) -> dict[str, Any]:
        return {"target": name, "measured": measured, "ok": ok}

    out = [
        check(
            "worker ≥ 10× naive faust",
            _ratio(worker, naive),
            None if not (worker and naive) else worker >= 10 * naive,
        ),
        check(
            "worker ≥ 60% of raw ceiling",
            "-"
            if not (worker and raw)
            else f"{100 * worker / raw:.0f}%"
            + (f" ({100 * workers / raw:.0f}% with {processes} processes)" if workers else ""),
            None if not (worker and raw) else max(worker, workers or 0) >= 0.6 * raw,
        ),
        check(
            "p99 ≤ 25 ms at 50% load",
            _num(lat.get("p99_ms"), "{:.0f} ms") + _within_25ms(results),
            None if lat.get("p99_ms") is None else lat["p99_ms"] <= 25,
        ),
        check("replay ≥ 50k events/s", _num(replay), None if replay is None else replay >= 50_000),
    ]
    events = runs.get("worker", {}).get("events", 0)
    half, full = str(round(events / 2)), str(events)
    if half in rss and full in rss:
        (a_n, a), (b_n, b) = (int(half), rss[half]), (int(full), rss[full])
        out.append(
            check(
                f"worker RSS flat ±10% ({a_n:,} → {b_n:,} events)",
                f"{a:.0f} → {b:.0f} MB ({100 * (b - a) / a:+.1f}%)",
                abs(b - a) <= 0.1 * a,
            )
        )
    return out


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    """The results as rich tables on the terminal."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: don't wrap the tables at 80 columns
            console = Console(width=170)
    runs = results.get("runs", {})
    raw = runs.get("raw", {}).get("events_per_s")
    naive = runs.get("naive_faust", {}).get("events_per_s")
    cfg = results.get("config", {})
    table = Table(
        title=("SMOKE (correctness only, rates meaningless) " if cfg.get("smoke") else "")
        + f"Supernova bench: {cfg.get('events', 0):,} Sparkov events, {cfg.get('partitions')} partitions, "
        f"{cfg.get('trees')}-tree LightGBM ({results.get('date', '')})"
    )
    for col in (
        "system",
        "events/s",
        "vs raw",
        "vs naive",
        "CPU s",
        "CPU µs/event",
        "peak RSS",
        "RSS by events",
    ):
        table.add_column(col, justify="left" if col == "system" else "right")
    for key, label in ROWS:
        r = runs.get(key)
        if r is None:
            continue
        label = label.format(processes=cfg.get("processes"))
        rate = r.get("events_per_s")
        rss_at = r.get("rss_mb_at") or {}
        table.add_row(
            label,
            _num(rate),
            _ratio(rate, raw),
            _ratio(rate, naive),
            _num(r.get("cpu_s"), "{:.1f}"),
            _num(r.get("cpu_us_per_event"), "{:.1f}"),
            _num(r.get("peak_rss_mb"), "{:.0f} MB"),
            ", ".join(
                f"{int(k):,}: {v:.0f} MB" for k, v in sorted(rss_at.items(), key=lambda kv: int(kv[0]))
            ),
        )
    console.print(table)
    for key, who in (("latency", "worker"), ("latency_workers", f"{cfg.get('processes')} worker processes")):
        lat = results.get(key)
        if lat:
            _print_latency(console, lat, who)
    _print_curve(console, results)
    t = Table(title="Targets")
    for col in ("target", "measured", "met"):
        t.add_column(col)
    for row in results.get("targets", []):
        ok = row["ok"]
        t.add_row(row["target"], row["measured"], "-" if ok is None else ("yes" if ok else "[bold red]no"))
    console.print(t)
    for line in results.get("checks", {}).get("lines", []):
        console.print(line)
    load = results.get("machine", {}).get("loadavg_at_start")
    if load and load[0] > 0.5 * (results.get("machine", {}).get("nproc") or 1):
        console.print(
            f"note: load average {load[0]:.1f} at the start on {results['machine']['nproc']} cores: other "
            "processes shared the machine, so events/s are lower bounds; CPU µs/event is the steadier number"
        )


def _print_latency(console: Console, lat: dict[str, Any], who: str) -> None:
    """One latency phase: percentiles, their parts, and the worst second."""
    t = Table(title=f"Latency: score LogAppendTime − event CreateTime, {who} at steady load")
    cols = (
        "rate (target / achieved)",
        "events",
        "p50",
        "p95",
        "p99",
        "max",
        "until scored p50/p99",
        "publish p50/p99",
        "worker CPU",
    )
    for col in cols:
        t.add_column(col, justify="right")
    t.add_row(
        f"{lat['target_rate']:,.0f} / {lat['achieved_rate']:,.0f} ev/s for {lat['seconds']:.0f} s",
        f"{lat['events']:,}",
        *(f"{lat[k]:.0f} ms" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
        f"{lat['to_scored_p50_ms']:.0f} / {lat['to_scored_p99_ms']:.0f} ms",
        f"{lat['publish_p50_ms']:.0f} / {lat['publish_p99_ms']:.0f} ms",
        f"{lat['worker_cpu_percent']:.0f}% of a core",
    )
    console.print(t)
    series = lat.get("by_second") or []
    if series:
        worst = max(range(len(series)), key=lambda i: series[i][1])
        over = sum(1 for row in series if row[1] > 25)
        p50, p99, top = series[worst]
        console.print(
            f"per second: p99 above 25 ms in {over} of {len(series)} seconds; worst second "
            f"{worst}: p50 {p50:.0f}, p99 {p99:.0f}, max {top:.0f} ms"
        )


def _print_curve(console: Console, results: dict[str, Any]) -> None:
    """p50/p99 against load, one worker process (the latency phase and the curve phases)."""
    points = latency_points(results)
    if len(points) < 2:
        return
    t = Table(title="Latency by load, one worker process (load: fraction of its measured events/s)")
    for col in ("load", "events/s", "seconds", "p50", "p95", "p99", "max", "worker CPU"):
        t.add_column(col, justify="right")
    for p in points:
        t.add_row(
            f"{100 * p['load']:.0f}%",
            f"{p['achieved_rate']:,.0f}",
            f"{p['seconds']:.0f}",
            *(f"{p[k]:.0f} ms" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
            f"{p['worker_cpu_percent']:.0f}% of a core",
        )
    console.print(t)


def write_json(results: dict[str, Any], path: Path) -> None:
    """``latest.json`` (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Bar chart of events/s per system (log scale) and the latency percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results.get("runs", {})
    processes = results.get("config", {}).get("processes")
    bars = [
        (
            label.format(processes=processes).split(" (")[0] if "replay" not in key else label,
            runs[key]["events_per_s"],
        )
        for key, label in ROWS
        if key in runs and runs[key].get("events_per_s")
    ]
    lat = results.get("latency")
    series = lat.get("by_second") if lat else None
    points = latency_points(results)
    middle = 2 if len(points) >= 2 else 1  # the latency-by-load line needs room, four bars do not
    widths = [3, middle, 2] if series else [3, middle] if lat else [1]
    fig, axes = plt.subplots(
        1,
        len(widths),
        figsize=(5 * len(widths) + 3 if lat else 8, 5),
        gridspec_kw={"width_ratios": widths} if lat else None,
    )
    ax = axes[0] if lat else axes
    names, values = zip(*bars, strict=True) if bars else ((), ())
    colors = ["#888888" if "raw" in n else "#d9822b" if "naive" in n else "#2b6cd9" for n in names]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    for i, v in enumerate(values):
        ax.text(i, v * 1.08, f"{v:,.0f}", ha="center", fontsize=8)
    cfg = results.get("config", {})
    ax.set_title(f"{cfg.get('events', 0):,} events, {results.get('machine', {}).get('nproc')} cores")
    if lat and len(points) >= 2:
        ax2 = axes[1]
        rates = [p["achieved_rate"] for p in points]
        for key, label, color in (("p50_ms", "p50", "#2b6cd9"), ("p99_ms", "p99", "#d9822b")):
            ax2.plot(rates, [p[key] for p in points], marker="o", label=label, color=color)
        ax2.axhline(25, color="red", linestyle="--", linewidth=1, label="p99 target 25 ms")
        ax2.set_xlabel("events/s (one process)")
        ax2.set_ylabel("ms")
        ax2.set_title("latency by load")
        ax2.legend(fontsize=8)
    elif lat:
        ax2 = axes[1]
        keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        ax2.bar(range(4), [lat[k] for k in keys], color="#2b6cd9")
        ax2.set_xticks(range(4), ["p50", "p95", "p99", "max"])
        ax2.axhline(25, color="red", linestyle="--", linewidth=1, label="p99 target 25 ms")
        ax2.set_ylabel("ms")
        ax2.set_title(f"latency at {lat['achieved_rate']:,.0f} ev/s")
        ax2.legend(fontsize=8)
    if series:
        ax3 = axes[2]
        seconds = range(len(series))
        for j, (label, color) in enumerate((("p50", "#2b6cd9"), ("p99", "#d9822b"), ("max", "#888888"))):
            ax3.plot(seconds, [row[j] for row in series], label=label, color=color, linewidth=1)
        ax3.axhline(25, color="red", linestyle="--", linewidth=1)
        ax3.set_xlabel("second of the latency phase")
        ax3.set_ylabel("ms")
        ax3.set_title("latency per second")
        ax3.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
