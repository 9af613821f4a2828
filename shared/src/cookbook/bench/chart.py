"""The PNG chart of a run."""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path

from cookbook.bench.report import Results
from cookbook.bench.stats import percentile
from cookbook.bench.steps import BACKENDS, STEP_COUNTS
from cookbook.bench.workloads import optional


def chart(results: Results, path: Path) -> None:
    matplotlib = optional("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    panels = [p for p in ("steps", "recovery") if getattr(results, p)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    column = 0
    if results.steps:
        ax = axes[0][column]
        column += 1
        by_key = {(f.backend, f.n): f for f in results.steps}
        # Plain Python is four orders of magnitude faster: it gets a note, not a bar, so that the
        # durable backends can be compared on a linear scale.
        durable = [b for b in BACKENDS if b != "plain"]
        width = 0.8 / len(STEP_COUNTS)
        for i, n in enumerate(STEP_COUNTS):
            xs = [b + (i - (len(STEP_COUNTS) - 1) / 2) * width for b in range(len(durable))]
            figures = [by_key[b, n] for b in durable]
            medians = [f.steps_per_second(statistics.median(f.seconds)) for f in figures]
            bests = [f.steps_per_second(min(f.seconds)) for f in figures]
            worsts = [f.steps_per_second(max(f.seconds)) for f in figures]
            errors = [
                [m - w for m, w in zip(medians, worsts, strict=True)],
                [b - m for b, m in zip(bests, medians, strict=True)],
            ]
            bars = ax.bar(xs, medians, width, yerr=errors, capsize=3, label=f"N = {n}")
            ax.bar_label(bars, labels=[f"{m:,.0f}" for m in medians], fontsize=7, padding=2)
        ax.set_xticks(range(len(durable)))
        ax.set_xticklabels(
            ["dev server\n(HTTP+SSE, fsync)", "SDK local mode\n(in-process)", "DBOS\n+ SQLite"]
        )
        ax.set_ylabel("durable steps per second (median; whiskers: min-max)")
        plain = by_key["plain", STEP_COUNTS[-1]]
        ax.set_title(
            "Durable step overhead: N no-op steps in one workflow\n"
            f"(plain Python function calls: "
            f"{plain.steps_per_second(statistics.median(plain.seconds)):,.0f} steps/s)",
            fontsize=10,
        )
        ax.legend()
    if results.recovery:
        ax = axes[0][column]
        measured = [r for r in results.recovery if r.seconds]
        names = [r.setting for r in measured]
        positions = list(range(len(measured)))
        for offset, (label, pct) in enumerate((("p50", 50), ("p95", 95), ("max", 100))):
            values = [percentile(r.seconds, pct) for r in measured]
            bars = ax.bar([x + (offset - 1) * 0.25 for x in positions], values, 0.25, label=label)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.set_xticks(positions)
        ax.set_xticklabels(names)
        ax.set_ylabel("seconds from SIGKILL to the next step on another worker")
        ax.set_title(f"Recovery ({results.kills} kills per setting)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
