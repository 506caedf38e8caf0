"""Bambi engine vs marginal engine: speed, effective samples and agreement.

Run from the repository root::

    .venv/bin/python benchmarks/engines.py                # real data if shared/ has it
    .venv/bin/python benchmarks/engines.py --data FILE    # another .RData/.csv with the tutorial columns
    .venv/bin/python benchmarks/engines.py --quick        # tutorial models only

Three parts, all with the default sampler settings (4 chains x 1000 draws after 1000 tuning
steps, seed 20260401, target_accept 0.95):

1. The tutorial's mixed models with both engines in one process: set-up and fit seconds,
   minimum bulk and tail ESS over the fixed effects and standard deviations, bulk ESS per
   second of fit time, divergences, the largest r_hat, and the largest difference between
   the engines' posterior means in units of posterior sd.
2. Scaling: the dragons design with 10x and 100x dragons per site and with 10x and 100x
   mountain ranges, and a crossed design (ranges x examiners).  A Bambi cell whose time,
   extrapolated linearly in rows from the previous cell of its family, would exceed
   ``--limit`` seconds is skipped and marked.
3. Whole processes: ``bayeslmm fit DATA FORMULA --engine E`` timed with a subprocess (a
   ``python -c`` script calling the engines when the CLI has no ``--engine``), with numba's
   cache warm and, for the marginal engine, also cold.
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
SHARED = Path(os.environ.get("BAYESLMM_SHARED", ROOT.parent / "shared"))
REAL = SHARED / "data" / "dragons.RData"

TUTORIAL = {
    "mixed.lmer": "testScore ~ bodyLength2 + (1|mountainRange)",
    "mixed.WRONG": "testScore ~ bodyLength2 + (1|mountainRange) + (1|site)",
    "mixed.lmer2": "testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)",
    "reduced.lmer": "testScore ~ 1 + (1|mountainRange) + (1|sample)",
}
NESTED = TUTORIAL["mixed.lmer2"]
CROSSED = "testScore ~ bodyLength2 + (1|mountainRange) + (1|examiner)"


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    from bayeslmm.model.data import prepare as prep

    nest = {"sample": ["mountainRange", "site"]} if "site" in df else {}
    return prep(df, {"bodyLength2": "bodyLength"}, nest)


def simulate_ranges(seed: int, n_ranges: int, n_per_site: int = 20) -> pd.DataFrame:
    """The built-in simulator's recipe (bayeslmm.model.simulate) with any number of mountain ranges."""
    from bayeslmm.model.simulate import SITES, TRUTH

    rng = np.random.default_rng(seed)
    n_sites = len(SITES)
    u = rng.normal(0.0, TRUTH["sd_mountainRange"], n_ranges)
    v = rng.normal(0.0, TRUTH["sd_sample"], (n_ranges, n_sites))
    site_len = rng.normal(0.0, 5.0, (n_ranges, n_sites))
    r = np.repeat(np.arange(n_ranges), n_sites * n_per_site)
    s = np.tile(np.repeat(np.arange(n_sites), n_per_site), n_ranges)
    body = 200.0 + 0.9 * u[r] + site_len[r, s] + rng.normal(0.0, 12.0, r.size)
    score = TRUTH["(Intercept)"] + u[r] + v[r, s] + rng.normal(0.0, TRUTH["sigma"], r.size)
    names = [f"R{i:04d}" for i in range(n_ranges)]
    return pd.DataFrame({
        "testScore": score, "bodyLength": body,
        "mountainRange": pd.Categorical.from_codes(r, names), "site": pd.Categorical.from_codes(s, list(SITES)),
    })  # fmt: skip


def simulate_crossed(seed: int, n_ranges: int = 80, n_examiners: int = 40, per_cell: int = 2) -> pd.DataFrame:
    """Every examiner tests ``per_cell`` dragons of every range: ranges crossed with examiners."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 18.0, n_ranges)
    w = rng.normal(0.0, 6.0, n_examiners)
    r = np.repeat(np.arange(n_ranges), n_examiners * per_cell)
    e = np.tile(np.repeat(np.arange(n_examiners), per_cell), n_ranges)
    body = 200.0 + 0.9 * u[r] + rng.normal(0.0, 12.0, r.size)
    score = 50.0 + u[r] + w[e] + rng.normal(0.0, 15.0, r.size)
    return pd.DataFrame({
        "testScore": score, "bodyLength": body,
        "mountainRange": pd.Categorical.from_codes(r, [f"R{i:03d}" for i in range(n_ranges)]),
        "examiner": pd.Categorical.from_codes(e, [f"E{i:03d}" for i in range(n_examiners)]),
    })  # fmt: skip


# ---------------------------------------------------------------------------------------
# Fitting and measuring
# ---------------------------------------------------------------------------------------


def scalars(tree) -> list[str]:
    post = tree["posterior"]
    return [v for v in post.data_vars if post[v].ndim == 2]


def measure(tree, seconds: float) -> dict:
    import arviz as az

    s = az.summary(tree, var_names=scalars(tree))
    bulk = float(s["ess_bulk"].min())
    return {
        "fit_s": seconds,
        "sampling_s": float(tree["posterior"].attrs.get("sampling_time", np.nan)),
        "bulk": bulk,
        "tail": float(s["ess_tail"].min()),
        "ess_s": bulk / seconds,
        "div": int(tree["sample_stats"]["diverging"].sum()),
        "rhat": float(s["r_hat"].max()),
        "summary": s,
    }


def fit(df: pd.DataFrame, formula: str, engine: str, options):
    """Set up and fit one model with one engine; returns (setup seconds, fit seconds, tree)."""
    from bayeslmm.engines import bayes, marginal
    from bayeslmm.model.formula import model_frame, parse

    t0 = time.perf_counter()
    f = parse(formula)
    data = bayes.model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bayes.build_model(f, data)
    frame = model_frame(f, data)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if engine == "marginal":
            tree = marginal.sample(model, frame, options, progress=False)
        else:
            tree = bayes.sample(model, options, progress=False)
    return setup, time.perf_counter() - t0, tree


def mean_gap(a, b) -> float:
    """Largest |mean_a - mean_b| over the fixed effects and sds, in posterior sd (of b)."""
    sa, sb = a["summary"], b["summary"]
    return float(((sa["mean"] - sb["mean"]).abs() / sb["sd"]).max())


def effects_gap(tree_a, tree_b) -> float:
    """The same over every random effect's level."""
    post_a, post_b = tree_a["posterior"], tree_b["posterior"]
    out = 0.0
    for v in post_b.data_vars:
        if post_b[v].ndim == 3:
            ma, mb = post_a[v].mean(("chain", "draw")), post_b[v].mean(("chain", "draw"))
            sd = post_b[v].std(("chain", "draw"))
            out = max(out, float((abs(ma - mb) / sd).max()))
    return out


HEAD = (f"{'model':<22}{'engine':<10}{'rows':>7}{'setup s':>9}{'fit s':>8}{'NUTS s':>8}{'bulk':>7}{'tail':>7}"
        f"{'bulk/s':>9}{'div':>5}{'r_hat':>7}{'x bambi':>9}{'gap sd':>8}{'re gap':>8}")  # fmt: skip


def row(name, engine, n, setup, m, speedup=None, gap=None, regap=None) -> str:
    if m is None:
        return f"{name:<22}{engine:<10}{n:>7}{'':>9}  {setup}"
    f = lambda v, spec: format(v, spec) if v is not None else ""  # noqa: E731
    return (f"{name:<22}{engine:<10}{n:>7}{setup:>9.2f}{m['fit_s']:>8.2f}{m['sampling_s']:>8.2f}{m['bulk']:>7.0f}"
            f"{m['tail']:>7.0f}{m['ess_s']:>9.1f}{m['div']:>5}{m['rhat']:>7.3f}{f(speedup, '>9.1f'):>9}"
            f"{f(gap, '>8.3f'):>8}{f(regap, '>8.3f'):>8}")  # fmt: skip


def compare(name, df, formula, options, run_bambi=True, skip_note="") -> dict:
    out = {}
    s_m, t_m, tree_m = fit(df, formula, "marginal", options)
    mm = measure(tree_m, t_m)
    if run_bambi:
        s_b, t_b, tree_b = fit(df, formula, "bambi", options)
        mb = measure(tree_b, t_b)
        print(row(name, "bambi", len(df), s_b, mb), flush=True)
        print(row(name, "marginal", len(df), s_m, mm, mm["ess_s"] / mb["ess_s"], mean_gap(mb, mm),
                  effects_gap(tree_b, tree_m)), flush=True)  # fmt: skip
        out["bambi"] = mb
    else:
        print(row(name, "bambi", len(df), skip_note, None), flush=True)
        print(row(name, "marginal", len(df), s_m, mm), flush=True)
    out["marginal"] = mm
    return out


# ---------------------------------------------------------------------------------------
# Whole processes
# ---------------------------------------------------------------------------------------

_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from bayeslmm.engines import bayes, marginal
from bayeslmm.model.data import load
from bayeslmm.model.formula import model_frame, parse
path, formula, engine = sys.argv[1:4]
f = parse(formula)
data = bayes.model_data(f, load(path))
model = bayes.build_model(f, data)
opts = bayes.SamplerOptions()
if engine == "marginal":
    tree = marginal.sample(model, model_frame(f, data), opts, progress=False)
else:
    tree = bayes.sample(model, opts, progress=False)
fit = bayes.BayesFit("fit", f, data, tree, opts, bayes.prior_table(model), engine, 0.0, False, "")
print(fit.tidy().head(8).to_string())
"""


def cli_has_engine() -> bool:
    res = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", "--help"], capture_output=True, text=True)
    return "--engine" in res.stdout


def time_process(path: Path, formula: str, engine: str, use_cli: bool, env=None) -> tuple[float, str]:
    if use_cli:
        cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(path), formula, "--engine", engine, "--no-progress",
               "--refit"]  # fmt: skip
    else:
        cmd = [sys.executable, "-c", _SCRIPT, str(path), formula, engine]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return seconds, "FAILED: " + (res.stderr.strip().splitlines() or ["?"])[-1][:100]
    return seconds, ""


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="data file with the tutorial's columns (default: shared real data or built-in)")
    ap.add_argument("--limit", type=float, default=300.0, help="skip a Bambi cell estimated above this (s)")
    ap.add_argument("--quick", action="store_true", help="tutorial models only")
    ap.add_argument("--no-process", action="store_true", help="skip the whole-process timings")
    args = ap.parse_args(argv)

    import logging

    import bambi  # noqa: F401  (imports are not part of any timing below)

    from bayeslmm.engines import marginal  # noqa: F401  (numba kernels load from the cache here
    from bayeslmm.engines.bayes import SamplerOptions
    from bayeslmm.model.data import load

    logging.getLogger("pymc").setLevel(logging.ERROR)
    logging.getLogger("bambi").setLevel(logging.ERROR)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other work on the machine slows both engines)")

    options = SamplerOptions()
    source = args.data or (str(REAL) if REAL.is_file() else "builtin:dragons")
    print(f"data: {source}; {options.chains} chains x {options.draws} draws (+{options.tune} tuning), "
          f"seed {options.seed}, target_accept {options.target_accept}; cores: {os.cpu_count()}")  # fmt: skip
    print("fit s: in-process fit (Bambi: bayes.sample incl. PyMC compile and log-likelihood; marginal:")
    print("marginal.sample incl. sufficient statistics, NUTS, random-effect draws, log-likelihood).")
    print("bulk/tail: minimum ESS over fixed effects and sds; bulk/s = bulk / fit s; x bambi: ratio of bulk/s;")
    print("gap sd: largest |mean difference| / posterior sd over fixed effects and sds;")
    print("re gap: the same over every level of every random effect\n")

    df = prepare(load(source))
    print("1. Tutorial models")
    print(HEAD)
    results = {name: compare(name, df, formula, options) for name, formula in TUTORIAL.items()}

    if not args.quick:
        print("\n2. Scaling (simulated; nested model mixed.lmer2 unless crossed)")
        print(HEAD)
        cells = [
            ("dragons 8x3x20", "nested", prepare(simulate_ranges(1, 8, 20)), NESTED),
            ("10x dragons/site", "sites", prepare(simulate_ranges(2, 8, 200)), NESTED),
            ("100x dragons/site", "sites", prepare(simulate_ranges(3, 8, 2000)), NESTED),
            ("10x ranges", "ranges", prepare(simulate_ranges(4, 80, 20)), NESTED),
            ("100x ranges", "ranges", prepare(simulate_ranges(5, 800, 20)), NESTED),
            ("crossed 80x40x2", "crossed", prepare(simulate_crossed(6, 80, 40, 2)), CROSSED),
        ]
        last: dict[str, tuple[int, float]] = {}
        base = None
        for label, family, cdf, formula in cells:
            ref = last.get(family) or base
            est = ref[1] * len(cdf) / ref[0] if ref else 0.0
            run = est <= args.limit
            note = f"skipped: estimated {est:.0f} s > {args.limit:.0f} s (linear in rows from {ref[0] if ref else 0})"
            res = compare(label, cdf, formula, options, run_bambi=run, skip_note=note)
            if run:
                last[family] = (len(cdf), res["bambi"]["fit_s"])
                if base is None:
                    base = last[family]
            results[label] = res

    if not args.no_process:
        use_cli = cli_has_engine()
        how = "bayeslmm fit DATA FORMULA --engine E --refit" if use_cli else (
            "python -c script (load, build Bambi model, engine, tidy table): the CLI has no --engine yet")
        print(f"\n3. Whole process ({how})")
        print(f"{'design':<24}{'engine':<20}{'process s':>10}{'bulk':>7}{'bulk/s':>9}{'x bambi':>9}  note")
        with tempfile.TemporaryDirectory() as tmp:
            runs = [("tutorial (mixed.lmer2)", df, NESTED, "mixed.lmer2", True)]
            if not args.quick:
                big_sites = prepare(simulate_ranges(3, 8, 2000))
                big_ranges = prepare(simulate_ranges(5, 800, 20))
                runs += [("100x dragons/site", big_sites, NESTED, "100x dragons/site", False),
                         ("100x ranges", big_ranges, NESTED, "100x ranges", False)]  # fmt: skip
            for label, cdf, formula, key, with_bambi in runs:
                path = Path(tmp) / f"{key.replace(' ', '_').replace('/', '_')}.csv"
                cdf.to_csv(path, index=False)
                ess = {e: results[key][e]["bulk"] for e in ("bambi", "marginal") if e in results[key]}
                per_s = {}
                engines = [("bambi", None), ("marginal", None)] if with_bambi else [("marginal", None)]
                engines.append(("marginal cold cache", {**os.environ, "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=tmp)}))
                for engine, env in engines:
                    seconds, note = time_process(path, formula, engine.split()[0], use_cli, env)
                    bulk = ess.get(engine.split()[0], np.nan)
                    per_s[engine] = bulk / seconds
                    ratio = per_s[engine] / per_s["bambi"] if "bambi" in per_s and engine != "bambi" else None
                    print(f"{label:<24}{engine:<20}{seconds:>10.2f}{bulk:>7.0f}{per_s[engine]:>9.1f}"
                          f"{format(ratio, '>9.1f') if ratio else '':>9}  {note}", flush=True)  # fmt: skip
        print("(bulk: ESS of the same seeded fit in part 1/2; the process repeats it exactly)")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
