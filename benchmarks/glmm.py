"""Bambi engine vs the GLMM engine on binomial, Poisson and negative binomial mixed models: speed, ESS, agreement.

Run from the repository root::

    .venv/bin/python benchmarks/glmm.py            # everything
    .venv/bin/python benchmarks/glmm.py --quick    # part 1 only

All fits use the default sampler settings (4 chains x 1000 draws after 1000 tuning steps, seed
20260401, target_accept 0.95).

1. In one process, both engines on tests/data/beyond/binomial.csv (``cbind(sick, size - sick) ~ season +
   (1|farm)``), counts.csv with an observation-level effect (``birds ~ temp + offset(log(hours)) +
   (1|site) + (1|obs)``), bernoulli.csv, and counts.csv as a negative binomial (``birds ~ temp +
   offset(log(hours)) + (1|site)``, alpha among the sds), with lme4's glmer.nb time: fit seconds
   (Bambi: ``bayes.sample``, PyMC compilation included; GLMM engine: ``glmm.sample``, its rough fit,
   NUTS and the output included), minimum bulk
   and tail ESS over the fixed effects and sds, bulk ESS per second, the ratio to Bambi's,
   divergences, the largest r_hat, and the largest difference of the engines' posterior means in
   posterior sds (fixed effects and sds; every level of every random effect).
2. A simulated 0/1 outcome, 20,000 rows in 500 groups (``y ~ x + w + (1|g)``): the GLMM engine in
   process, and the whole process -- ``bayeslmm fit DATA FORMULA --family binomial`` when the CLI
   has the flag and the GLMM engine, else a ``python -c`` script doing what the CLI's Bayesian side
   does (load, Bambi model, GLMM engine, tidy table; no lme4 fit) -- with numba's cache warm and cold.
3. (``--process``) Whole ``bayeslmm fit`` processes, the GLMM engine against ``--engine bambi`` on the
   three data sets of part 1, side by side in one run: after a warm-up run of each (numba's and the
   file cache warm), the two commands alternate three times and each keeps its fastest time (the
   machine's other load only adds); ``--refit`` so that both sample. The target is a ratio >= 3.
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
BEYOND = ROOT / "tests" / "data" / "beyond"

MODELS = {
    "binomial.csv": ("binomial", "cbind(sick, size - sick) ~ season + (1|farm)"),
    "counts.csv (1|obs)": ("poisson", "birds ~ temp + offset(log(hours)) + (1|site) + (1|obs)"),
    "bernoulli.csv": ("binomial", "passed ~ hours + urban + (1|school)"),
    "counts.csv negbin": ("negbinomial", "birds ~ temp + offset(log(hours)) + (1|site)"),
}
BIG_FORMULA = "y ~ x + w + (1|g)"


def simulate_big(seed: int = 2026, groups: int = 500, per_group: int = 40) -> pd.DataFrame:
    """A 0/1 outcome: logit P(y) = -0.5 + 0.8 x - 0.3 w + u_g, u_g ~ N(0, 0.8^2); 40 rows per group."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    x, w = rng.normal(size=g.size), rng.normal(size=g.size)
    eta = -0.5 + 0.8 * x - 0.3 * w + rng.normal(0.0, 0.8, groups)[g]
    y = (rng.random(g.size) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "w": w, "g": [f"g{i:03d}" for i in g]})


def bambi_model(formula, df):
    """Bambi's model of a GLMM formula (a 0/1 or yes/no response as Bambi's bernoulli on 0/1, as glmer
    reads it) and the model frame."""
    import bambi as bmb

    from bayeslmm.engines.bayes import model_data
    from bayeslmm.model.formula import binary_response, model_frame, to_bambi

    data = model_data(formula, df)
    family = {"negbinomial": "negativebinomial"}.get(formula.family, formula.family)
    if family == "binomial" and not formula.cbind:
        data[formula.response] = binary_response(data[formula.response], formula.response)[0]
        family = "bernoulli"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bmb.Model(to_bambi(formula), data, family=family)
        model.build()
    return model, model_frame(formula, data)


def population(tree) -> list[str]:
    post = tree["posterior"]
    return [v for v in post.data_vars if not any(d.endswith("__factor_dim") or d == "__obs__" for d in post[v].dims)]


def measure(tree, seconds: float) -> dict:
    import arviz as az

    s = az.summary(tree, var_names=population(tree))
    bulk = float(s["ess_bulk"].min())
    return {"fit_s": seconds, "bulk": bulk, "tail": float(s["ess_tail"].min()), "ess_s": bulk / seconds,
            "div": int(tree["sample_stats"]["diverging"].sum()), "rhat": float(s["r_hat"].max()), "summary": s}


def effects_gap(a, b) -> float:
    """Largest |mean_a - mean_b| / sd_b over every level of every random effect."""
    pa, pb = a["posterior"], b["posterior"]
    out = 0.0
    for v in pb.data_vars:
        if any(d.endswith("__factor_dim") for d in pb[v].dims):
            gap = abs(pa[v].mean(("chain", "draw")) - pb[v].mean(("chain", "draw"))) / pb[v].std(("chain", "draw"))
            out = max(out, float(gap.max()))
    return out


HEAD = (f"{'data':<20}{'engine':<8}{'fit s':>8}{'bulk':>7}{'tail':>7}{'bulk/s':>9}{'x bambi':>9}{'div':>5}"
        f"{'r_hat':>7}{'gap sd':>8}{'re gap':>8}")  # fmt: skip


def row(label, engine, m, ratio=None, gap=None, regap=None) -> str:
    f = lambda v, spec: format(v, spec) if v is not None else ""  # noqa: E731
    return (f"{label:<20}{engine:<8}{m['fit_s']:>8.2f}{m['bulk']:>7.0f}{m['tail']:>7.0f}{m['ess_s']:>9.1f}"
            f"{f(ratio, '>9.1f'):>9}{m['div']:>5}{m['rhat']:>7.3f}{f(gap, '>8.3f'):>8}{f(regap, '>8.3f'):>8}")


_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, sys.argv[3])
from glmm import bambi_model
from bayeslmm.engines import bayes, glmm
from bayeslmm.model.data import load
from bayeslmm.model.formula import parse
path, formula = sys.argv[1:3]
f = parse(formula, "binomial")
df = load(path)
model, frame = bambi_model(f, df)
opts = bayes.SamplerOptions()
tree = glmm.sample(model, frame, opts, progress=False, log_likelihood=False)
fit = bayes.BayesFit("fit", f, df, tree, opts, bayes.prior_table(model), "glmm", 0.0, False, "")
print(fit.tidy(effects=("fixed", "ran_pars")).to_string())
"""


def cli_fits_glmms() -> bool:
    """Whether ``bayeslmm fit`` has ``--family`` and the GLMM engine (the main branch wires them)."""
    res = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", "--help"], capture_output=True, text=True)
    return "--family" in res.stdout and "glmm" in res.stdout


def time_process(path: Path, use_cli: bool, env=None) -> tuple[float, str]:
    if use_cli:
        cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(path), BIG_FORMULA, "--family", "binomial",
               "--no-progress", "--refit"]  # fmt: skip
    else:
        cmd = [sys.executable, "-c", _SCRIPT, str(path), BIG_FORMULA, str(Path(__file__).resolve().parent)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.mkdtemp())
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return seconds, "FAILED: " + (res.stderr.strip().splitlines() or ["?"])[-1][:100]
    return seconds, ""


#: Part 3: data set, formula and family of each whole-process comparison.
PROCESS_CASES = (("binomial.csv", "cbind(sick, size - sick) ~ season + (1|farm)", "binomial"),
                 ("counts.csv", "birds ~ temp + offset(log(hours)) + (1|site) + (1|obs)", "poisson"),
                 ("bernoulli.csv", "passed ~ hours + urban + (1|school)", "binomial"))


def whole_processes() -> int:
    """Part 3: ``bayeslmm fit`` with the GLMM engine and with Bambi's, each timed on its second run."""
    data = Path(__file__).resolve().parents[1] / "tests" / "data" / "beyond"
    workdir = tempfile.mkdtemp()  # an empty folder: nothing there shadows a module (python -m puts cwd first)
    print("3. whole processes: bayeslmm fit DATA FORMULA --family F --refit [--engine bambi] (fastest of 3, warm)")
    print(f"{'data':<16}{'glmm engine':>14}{'bambi engine':>14}{'ratio':>8}")
    for name, formula, family in PROCESS_CASES:
        cmds = {engine: [sys.executable, "-m", "bayeslmm.cli", "fit", str(data / name), formula, "--family", family,
                         "--engine", engine, "--no-progress", "--refit"] for engine in ("auto", "bambi")}
        times = {engine: np.inf for engine in cmds}
        for repeat in range(4):  # the first of each is a warm-up
            for engine, cmd in cmds.items():
                t0 = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
                if res.returncode != 0:
                    print(f"{name}: {engine} FAILED: {(res.stderr.strip().splitlines() or ['?'])[-1][:100]}")
                    return 1
                if repeat:
                    times[engine] = min(times[engine], time.perf_counter() - t0)
        print(f"{name:<16}{times['auto']:>12.2f} s{times['bambi']:>12.2f} s{times['bambi'] / times['auto']:>7.1f}x",
              flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="part 1 only")
    ap.add_argument("--process", action="store_true", help="part 3 only: whole processes, both engines")
    args = ap.parse_args(argv)
    if args.process:
        return whole_processes()

    import logging

    import bambi  # noqa: F401  (imports are not part of any timing below)

    from bayeslmm.engines import bayes, glmm
    from bayeslmm.model.data import load
    from bayeslmm.model.formula import parse

    logging.getLogger("pymc").setLevel(logging.ERROR)
    logging.getLogger("bambi").setLevel(logging.ERROR)
    options = bayes.SamplerOptions()
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other work on the machine slows both engines)")
    print(f"{options.chains} chains x {options.draws} draws (+{options.tune} tuning), seed {options.seed}, "
          f"target_accept {options.target_accept}; cores: {os.cpu_count()}")  # fmt: skip
    print("bulk/tail: minimum ESS over fixed effects and sds; bulk/s = bulk / fit s; x bambi: ratio of bulk/s;")
    print("gap sd: largest |mean difference| / posterior sd over fixed effects and sds; re gap: over every level\n")
    print("1. In process")
    print(HEAD)
    for label, (family, formula) in MODELS.items():
        f = parse(formula, family)
        model, frame = bambi_model(f, load(str(BEYOND / label.split()[0])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            ref = bayes.sample(model, options, progress=False, log_likelihood=False)
            mb = measure(ref, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tree = glmm.sample(model, frame, options, progress=False, log_likelihood=False)
        mg = measure(tree, time.perf_counter() - t0)
        gap = float(((mb["summary"]["mean"] - mg["summary"]["mean"]).abs() / mg["summary"]["sd"]).max())
        print(row(label, "bambi", mb), flush=True)
        print(row(label, "glmm", mg, mg["ess_s"] / mb["ess_s"], gap, effects_gap(ref, tree)), flush=True)
        if family == "negbinomial":
            from bayeslmm.lme4 import frequentist

            t0 = time.perf_counter()
            nb = frequentist.fit(frame)
            print(f"{'':<20}glmer.nb (lme4's side, in process): {time.perf_counter() - t0:.2f} s, theta "
                  f"{nb.nb_theta:.4g}", flush=True)

    if not args.quick:
        print(f"\n2. 20,000 rows, 500 groups: {BIG_FORMULA} (binomial)")
        big = simulate_big()
        f = parse(BIG_FORMULA, "binomial")
        model, frame = bambi_model(f, big)
        t0 = time.perf_counter()
        tree = glmm.sample(model, frame, options, progress=False, log_likelihood=False)
        m = measure(tree, time.perf_counter() - t0)
        print(HEAD)
        print(row("simulated 20k", "glmm", m), flush=True)
        use_cli = cli_fits_glmms()
        how = (f"bayeslmm fit DATA '{BIG_FORMULA}' --family binomial --refit" if use_cli else
               "python -c script (load, Bambi model, GLMM engine, tidy table; no lme4 fit): "
               "the CLI has no --family / GLMM engine yet")  # fmt: skip
        print(f"whole process: {how}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.csv"
            big.to_csv(path, index=False)
            for label, env in (("warm cache", None),
                               ("cold cache", {**os.environ, "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=tmp)})):
                seconds, note = time_process(path, use_cli, env)
                print(f"  {label:<12}{seconds:>8.2f} s  {note}", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
