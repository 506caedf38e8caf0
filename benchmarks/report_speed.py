"""Whole-process time of the dragons study's report: cold, cached, and cached with new settings.

Run from the repository root::

    .venv/bin/python benchmarks/report_speed.py                       # the tutorial's data (../shared)
    .venv/bin/python benchmarks/report_speed.py --data builtin:dragons

Each line is one whole ``bayeslmm run models/dragons.toml`` process in a fresh temporary report
folder: ``cold`` (nothing cached: every posterior sampled, lme4's side, LOO and the figures
computed), ``cached`` (the same command again: posteriors and what the report derives from
them are read back from ``fits/``; fastest of ``--repeat``), and ``new --ci`` (cached
posteriors, a different interval mass: lme4's fits, LOO and the sensitivities are reused, the
profile intervals and every figure are computed anew). Issue 14's targets: cached under 8 s,
cold under 20 s, on this 2-core machine. The load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "dragons.RData"


def run(out: Path, data: str, *extra: str) -> float:
    """Seconds of one whole ``bayeslmm run`` process (it must succeed)."""
    cmd = [sys.executable, "-m", "bayeslmm.cli", "run", "models/dragons.toml", "--data", data, "--out", str(out),
           "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REAL), help="data file or builtin:dragons (default: the real data)")
    parser.add_argument("--repeat", type=int, default=3, help="cached runs (the fastest is printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bayeslmm-speed-") as tmp:
        out = Path(tmp) / "dragons"
        cold = run(out, args.data)
        cached = min(run(out, args.data) for _ in range(args.repeat))
        new_ci = run(out, args.data, "--ci", "0.9")
    print(f"bayeslmm run models/dragons.toml --data {args.data} (whole processes, {os.cpu_count()} cores)")
    print(f"{'cold':<10} {cold:6.1f} s   target < 20 s")
    print(f"{'cached':<10} {cached:6.1f} s   target < 8 s (fastest of {args.repeat})")
    print(f"{'new --ci':<10} {new_ci:6.1f} s   (posteriors, lme4 fits, LOO reused; profiles and figures anew)")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
