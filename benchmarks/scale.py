"""The report at scale: whole ``bayeslmm fit DATA FORMULA --out DIR`` processes as rows and groups grow.

Run from the repository root::

    .venv/bin/python benchmarks/scale.py                       # every design of issue 15's table
    .venv/bin/python benchmarks/scale.py 80x3x20 800x3x20      # some of them
    .venv/bin/python benchmarks/scale.py 8000x3x20 --no-out    # without the report folder only
    .venv/bin/python benchmarks/scale.py 800x3x20 --both       # with and without, side by side

Designs ``RxSxN`` are ``y ~ x + (1|range/site)`` with R ranges x S sites x N rows each, seeded
(range sd 1, site sd 0.5, residual sd 1: ``benchmarks/profile_scale.py``'s :func:`simulate`).
For each it prints the wall time, the peak resident memory of the process (``/usr/bin/time``'s
maximum RSS) and, with ``--out``, the report folder's size and its largest files, and how long
each stage of the report took (from the time stamps of the progress lines on stderr). Every run
is cold (a report folder's cached fit is removed first). The targets (issue 15): every design
below under 60 s and 4 GB with ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_scale import simulate  # noqa: E402  (the seeded RxSxN designs, one source)

DESIGNS = ("8x3x20", "8x3x200", "80x3x20", "8x3x2000", "800x3x20", "8x3x20000", "8000x3x20")


def folder_size(path: Path) -> tuple[int, list[tuple[int, str]]]:
    """Bytes under ``path`` and its three largest files (bytes, path relative to it)."""
    files = [(p.stat().st_size, str(p.relative_to(path))) for p in path.rglob("*") if p.is_file()]
    return sum(s for s, _ in files), sorted(files, reverse=True)[:3]


def whole_process(data: Path, formula: str, out: Path | None, extra: tuple[str, ...] = ()) -> dict:
    """Run ``bayeslmm fit`` once; wall seconds, peak RSS (MB), exit code and each stage's seconds.

    A stage is the time from one progress line on stderr to the next (``writing report ...``,
    ``lme4's fits ...``, ``figure 3: ...``); the first is loading, checking and sampling.
    """
    cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(data), formula, "--no-progress", *extra]
    if out is not None:
        cmd += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    timer = ["/usr/bin/time", "-f", "MAXRSS_KB %M"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    proc = subprocess.Popen([*timer, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=data.parent)
    stages, last, label, tail, rss = [], t0, "start, data, checks and sampling", [], float("nan")
    for line in proc.stderr:
        now, line = time.perf_counter(), line.rstrip()
        tail = [*tail, line][-5:]
        if line.startswith("MAXRSS_KB"):
            rss = float(line.split()[1]) / 1024
            continue
        if line.startswith("  ") or line.startswith("writing report"):
            stages.append((label, now - last))
            last, label = now, line.strip()
    code = proc.wait()
    end = time.perf_counter()
    stages.append((label, end - last))
    return {"seconds": end - t0, "rss_mb": rss, "code": code, "stages": stages,
            "tail": tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("designs", nargs="*", default=list(DESIGNS), help=f"RxSxN designs ({' '.join(DESIGNS)})")
    ap.add_argument("--no-out", action="store_true", help="only without the report folder")
    ap.add_argument("--both", action="store_true", help="with and without --out")
    ap.add_argument("--stages", type=int, default=8, help="slowest stages shown per run (8)")
    ap.add_argument("--keep", help="keep the report folders under this folder")
    ap.add_argument("fit_args", nargs="*", default=[], help="passed on to bayeslmm fit (after --)")
    args = ap.parse_args(argv)
    bad = [d for d in args.designs if len(d.split("x")) != 3 or not all(s.isdigit() for s in d.split("x"))]
    if bad:
        ap.error(f"designs are RxSxN (e.g. 80x3x20), not {' '.join(bad)}")
    modes = [False, True] if args.both else [False] if args.no_out else [True]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        for design in args.designs:
            formula, df = simulate(design)
            data = Path(tmp) / f"{design}.csv"
            df.to_csv(data, index=False)
            for with_out in modes:
                out = Path(args.keep or tmp) / f"out_{design}" if with_out else None
                if out is not None:  # a cold run: no fit cached in the report folder of an earlier run
                    shutil.rmtree(out, ignore_errors=True)
                r = whole_process(data, formula, out, tuple(args.fit_args))
                size = folder_size(out) if out is not None and out.is_dir() else (0, [])
                what = "--out" if with_out else "no --out"
                status = "" if r["code"] == 0 else f"  FAILED (exit {r['code']}): {r['tail'][-1] if r['tail'] else ''}"
                print(f"{design:>10} {len(df):>8,} rows  {what:<9} {r['seconds']:7.1f} s  peak {r['rss_mb']:7.0f} MB"
                      + (f"  folder {size[0] / 1e6:7.1f} MB" if with_out else "")
                      + f"  (load {os.getloadavg()[0]:.2f}){status}", flush=True)
                for label, secs in sorted(r["stages"], key=lambda s: -s[1])[:args.stages]:
                    print(f"{'':>12}{secs:7.1f} s  {label}")
                if with_out and size[1]:
                    print(f"{'':>12}largest: " + ", ".join(f"{p} {s / 1e6:.1f} MB" for s, p in size[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
