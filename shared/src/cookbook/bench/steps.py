"""Durable step overhead: one workflow of N no-op steps per backend, rounds interleaved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cookbook.bench.stats import ms
from cookbook.stack import devserver_process, url_of

STEP_COUNTS = (100, 1000)
BACKENDS = ("devserver", "local", "dbos", "plain")
BACKEND_LABELS = {
    "devserver": "Resonate dev server (HTTP+SSE, fsync)",
    "local": "Resonate SDK local mode (in-process)",
    "dbos": "DBOS + SQLite",
    "plain": "plain Python",
}


@dataclass
class StepFigures:
    backend: str
    n: int
    seconds: list[float] = field(default_factory=list)

    @property
    def ms_per_step(self) -> list[float]:
        return [s * 1000 / self.n for s in self.seconds]

    def steps_per_second(self, seconds: float) -> float:
        return self.n / seconds if seconds > 0 else float("inf")


def measure_steps(workdir: Path, rounds: int, say: Callable[[str], None]) -> list[StepFigures]:
    figures = {(b, n): StepFigures(b, n) for n in STEP_COUNTS for b in BACKENDS}
    with devserver_process(workdir / "steps-devserver").start() as server:
        url = url_of(server)
        for round_ in range(1, rounds + 1):
            for n in STEP_COUNTS:
                for backend in BACKENDS:
                    seconds = _run_steps_child(backend, n, url)
                    figures[backend, n].seconds.append(seconds)
                    say(
                        f"  round {round_}/{rounds}  N={n:<5} {backend:<10} "
                        f"{ms(seconds / n):>8} ms/step  {n / seconds:12,.0f} steps/s"
                    )
    return list(figures.values())


def _run_steps_child(backend: str, n: int, url: str) -> float:
    argv = [sys.executable, "-m", "cookbook.bench", "_steps", backend, str(n), "--url", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench child {backend} N={n} exited with {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    seconds: float = json.loads(lines[-1])["seconds"]
    return seconds
