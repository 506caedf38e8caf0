"""Correlated random effects ``(x|g)``: the marginal engine against the reference PyMC engine, and at scale.

Run from the repository root::

    .venv/bin/python benchmarks/correlated.py            # all three parts
    .venv/bin/python benchmarks/correlated.py --quick    # part 1 only

Default sampler settings throughout (4 chains x 1000 draws after 1000 tuning steps, seed
20260401, target_accept 0.95).

1. ``reaction ~ day + (day|subject)`` on tests/data/beyond/slopes.csv (40 subjects x 10 days),
   both engines in one process: fit seconds (in-process, set-up excluded: the reference's
   includes compiling its PyMC model with nutpie's numba backend), minimum bulk ESS over the
   fixed effects, sds and correlation, bulk ESS per second, the ratio marginal / reference,
   divergences, the largest r_hat; then the whole ``bayeslmm fit`` process (numba cache warm, no
   ``--out``) for each engine.
2. ``y ~ x + (1 + x|g)``, 800 groups x 20 rows (simulated, seeded): in-process marginal fit and
   the whole ``bayeslmm fit`` process.
3. Crossed ``y ~ x + (1 + x|subject) + (1|item)``, 200 subjects x 50 items, one row per pair
   (simulated, seeded): the same.

Targets from issue 11: part 1 ratio >= 20 and process < 5 s; part 2 process < 15 s with bulk
ESS >= 1000; part 3 process < 30 s.  Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SLOPES = ROOT / "tests" / "data" / "beyond" / "slopes.csv"
NESTED = "reaction ~ day + (day|subject)"
MANY = "y ~ x + (1 + x|g)"
CROSSED = "y ~ x + (1 + x|subject) + (1|item)"


def simulate_many(seed: int, n_groups: int = 800, per: int = 20) -> pd.DataFrame:
    """``y = 1 + 0.5 x + a_g + b_g x + e``: sd(a) 1, sd(b) 0.4, cor(a, b) 0.3, sd(e) 1."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.3 * 0.4], [0.3 * 0.4, 0.16]])
    ab = rng.multivariate_normal([0.0, 0.0], cov, n_groups)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(0.0, 1.0, g.size)
    y = 1.0 + 0.5 * x + ab[g, 0] + ab[g, 1] * x + rng.normal(0.0, 1.0, g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k:04d}" for k in g]})


def simulate_crossed(seed: int, n_subject: int = 200, n_item: int = 50) -> pd.DataFrame:
    """Every subject meets every item once: sd(a) 1, sd(b) 0.5, cor(a, b) -0.4, sd(item) 0.7, sd(e) 1."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, -0.4 * 0.5], [-0.4 * 0.5, 0.25]])
    ab = rng.multivariate_normal([0.0, 0.0], cov, n_subject)
    c = rng.normal(0.0, 0.7, n_item)
    s = np.repeat(np.arange(n_subject), n_item)
    i = np.tile(np.arange(n_item), n_subject)
    x = rng.normal(0.0, 1.0, s.size)
    y = 10.0 + 2.0 * x + ab[s, 0] + ab[s, 1] * x + c[i] + rng.normal(0.0, 1.0, s.size)
    return pd.DataFrame({"y": y, "x": x, "subject": [f"s{k:03d}" for k in s], "item": [f"i{k:02d}" for k in i]})


def fit(df: pd.DataFrame, formula: str, engine: str, options):
    """Set up, then fit with one engine; returns (fit seconds, tree)."""
    from bayeslmm.engines import bayes, marginal, reference
    from bayeslmm.model.formula import model_frame, parse

    f = parse(formula)
    data = bayes.model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bayes.build_model(f, data)
    frame = model_frame(f, data)
    sample = marginal.sample if engine == "marginal" else reference.sample
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = sample(model, frame, options, progress=False)
    return time.perf_counter() - t0, tree


def measure(tree, seconds: float) -> dict:
    import arviz as az

    post = tree["posterior"]
    s = az.summary(tree, var_names=[v for v in post.data_vars if post[v].ndim == 2])
    bulk = float(s["ess_bulk"].min())
    return {"fit_s": seconds, "sampling_s": float(post.attrs["sampling_time"]), "bulk": bulk,
            "weakest": str(s["ess_bulk"].idxmin()), "ess_s": bulk / seconds,
            "div": int(tree["sample_stats"]["diverging"].sum()), "rhat": float(s["r_hat"].max())}  # fmt: skip


def process(path: Path, formula: str, engine: str = "auto") -> tuple[float, str]:
    """Wall time of ``python -m bayeslmm.cli fit PATH FORMULA --engine E --no-progress`` (no ``--out``)."""
    cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(path), formula, "--engine", engine, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return seconds, "FAILED: " + (res.stderr.strip().splitlines() or ["?"])[-1][:100]
    warn = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    return seconds, "; ".join(w[9:80] for w in warn)


HEAD = f"{'design':<28}{'engine':<11}{'rows':>7}{'fit s':>8}{'NUTS s':>8}{'bulk':>7}{'bulk/s':>9}{'div':>5}{'r_hat':>7}"


def row(label: str, engine: str, n: int, m: dict) -> str:
    return (f"{label:<28}{engine:<11}{n:>7}{m['fit_s']:>8.2f}{m['sampling_s']:>8.2f}{m['bulk']:>7.0f}"
            f"{m['ess_s']:>9.1f}{m['div']:>5}{m['rhat']:>7.3f}  (min ESS: {m['weakest']})")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="part 1 only")
    args = ap.parse_args(argv)

    import bambi  # noqa: F401  (imports are not part of any timing below)

    from bayeslmm.engines import marginal, reference  # noqa: F401
    from bayeslmm.engines.bayes import SamplerOptions

    options = SamplerOptions()
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    print(f"{options.chains} chains x {options.draws} draws (+{options.tune} tuning), seed {options.seed}, "
          f"target_accept {options.target_accept}; cores: {os.cpu_count()}")  # fmt: skip
    print("fit s: in-process engine call (reference: incl. nutpie's numba compile of the PyMC model); NUTS s: sampling")
    print("bulk: minimum bulk ESS over fixed effects, sds and correlations; bulk/s = bulk / fit s\n")

    slopes = pd.read_csv(SLOPES)
    print(f"1. {NESTED}, slopes.csv")
    print(HEAD)
    t_m, tree_m = fit(slopes, NESTED, "marginal", options)
    m_m = measure(tree_m, t_m)
    t_r, tree_r = fit(slopes, NESTED, "reference", options)
    m_r = measure(tree_r, t_r)
    print(row("slopes 40x10", "reference", len(slopes), m_r))
    print(row("slopes 40x10", "marginal", len(slopes), m_m))
    print(f"bulk ESS per second, marginal / reference: {m_m['ess_s'] / m_r['ess_s']:.0f}x (target >= 20x); "
          f"per second of sampling alone: {(m_m['bulk'] / m_m['sampling_s']) / (m_r['bulk'] / m_r['sampling_s']):.0f}x")

    runs = [("slopes 40x10", SLOPES, NESTED, ("auto", "pymc"), 5.0, None)]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick:
            print(f"\n2./3. {MANY} and {CROSSED} (simulated)")
            print(HEAD)
            for label, df, formula, target, name in (
                ("many 800x20", simulate_many(20260401), MANY, 15.0, "many.csv"),
                ("crossed 200x50", simulate_crossed(20260402), CROSSED, 30.0, "crossed.csv"),
            ):
                path = Path(tmp) / name
                df.to_csv(path, index=False)
                seconds, tree = fit(df, formula, "marginal", options)
                m = measure(tree, seconds)
                print(row(label, "marginal", len(df), m), flush=True)
                runs.append((label, path, formula, ("auto",), target, m["bulk"]))
        print("\nWhole process: python -m bayeslmm.cli fit DATA FORMULA --engine E --no-progress (numba cache warm)")
        print(f"{'design':<28}{'engine':<11}{'process s':>10}{'target':>8}  warnings")
        process(SLOPES, NESTED)  # warm numba's and pytensor's caches
        for label, path, formula, engines, target, _ in runs:
            for engine in engines:
                seconds, note = process(path, formula, engine)
                goal = f"< {target:.0f}" if engine == "auto" else ""
                print(f"{label:<28}{engine:<11}{seconds:>10.2f}{goal:>8}  {note}", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
