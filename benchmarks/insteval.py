"""A Bayesian fit of an InstEval-sized crossed design: timings, ESS, r_hat, lme4 inside the intervals.

Run from the repository root::

    .venv/bin/python benchmarks/insteval.py                 # whole `bayeslmm fit` process + lme4 (R)
    .venv/bin/python benchmarks/insteval.py --in-process    # in-process fit with the stages timed
    .venv/bin/python benchmarks/insteval.py --gradient      # one log-density gradient, timed
    .venv/bin/python benchmarks/insteval.py --data FILE     # lme4's own InstEval, exported by the user
    .venv/bin/python benchmarks/insteval.py --scale 0.1 --write-csv FILE   # the simulated data only

lme4's ``InstEval`` (GPL) is not shipped: :func:`simulate` draws a data set of the same shape.
Its numbers come from lme4's data and its REML fit, measured here with lme4 1.1-31
(``lmer(y ~ service + (1|s) + (1|d) + (1|dept), InstEval)``):

- 73,421 ratings; 2,972 students (ratings per student 1-92, median 22, mean 24.7), 1,128
  lecturers (10-792, median 31, mean 65), each in one of 14 departments (44-144 lecturers);
  every (student, lecturer) pair at most once;
- crossing: 58% of a student's ratings are of lecturers of the student's own (modal) department,
  the rest spread over other departments; ``service`` (a lecture for another department) is 1
  for 95% of those and for 5.5% of the others (43% of all rows);
- REML estimates: intercept 3.283, service1 -0.0926, sd(s) 0.326, sd(d) 0.515,
  sd(dept) 0.0831, residual sd 1.1775.

The response is drawn Gaussian from those values (InstEval's is a 1-5 rating), so the model is
the one fitted and lme4's REML estimates should lie inside the posterior's 95% intervals.
lme4's side is R's lme4 (``Rscript``) when installed, else bayeslmm's own REML
(``bayeslmm.lme4.frequentist``); ``--no-lme4`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "y ~ service + (1|s) + (1|d) + (1|dept)"
SEED = 20260401
#: lme4 1.1-31's REML fit of InstEval with FORMULA (see the module docstring)
TRUTH = {"(Intercept)": 3.28259, "service1": -0.09264, "s": 0.32557, "d": 0.51499, "dept": 0.08314,
         "Residual": 1.17750}
#: sizes of lme4's InstEval
N_STUDENTS, N_LECTURERS, N_DEPTS, N_ROWS = 2972, 1128, 14, 73421
HOME_SHARE, SERVICE_AWAY, SERVICE_HOME = 0.58, 0.95, 0.055


def simulate(seed: int = SEED, scale: float = 1.0) -> pd.DataFrame:
    """A seeded data set with InstEval's levels, crossing pattern and variance components.

    ``scale`` multiplies the numbers of students and lecturers (and so the rows); 1 gives
    InstEval's sizes.  Columns ``s``, ``d``, ``dept`` (categorical, levels "1", "2", ...),
    ``service`` ("0"/"1") and ``y``.
    """
    rng = np.random.default_rng(seed)
    n_s, n_d = round(N_STUDENTS * scale), round(N_LECTURERS * scale)
    # departments of 44-144 lecturers: sizes from a Dirichlet, every department at least 3 % of lecturers
    share = 0.03 + (1 - 0.03 * N_DEPTS) * rng.dirichlet(np.full(N_DEPTS, 3.0))
    dept_of = np.sort(rng.choice(N_DEPTS, size=n_d, p=share))
    members = [np.flatnonzero(dept_of == k) for k in range(N_DEPTS)]
    # lecturer popularity: log-normal weights give InstEval's skew (median 31, mean 65 ratings)
    weight = rng.lognormal(0.0, 1.3, size=n_d)
    home = rng.choice(N_DEPTS, size=n_s, p=np.bincount(dept_of, minlength=N_DEPTS) / n_d)
    # ratings per student: 1 + negative binomial, mean 24.7, scaled to InstEval's total
    extra = rng.negative_binomial(2.2, 2.2 / (2.2 + 23.7), size=n_s)
    per = np.clip(1 + np.round(extra * (N_ROWS * scale - n_s) / extra.sum()), 1, 92).astype(int)
    rows_s, rows_d = [], []
    dept_p = np.bincount(dept_of, minlength=N_DEPTS) / n_d
    for i in range(n_s):
        k_home = min(rng.binomial(per[i], HOME_SHARE), members[home[i]].size)
        away = dept_p.copy()
        away[home[i]] = 0.0
        k_away = rng.multinomial(per[i] - k_home, away / away.sum())
        for dept, k in ((home[i], k_home), *enumerate(k_away)):
            if k == 0:
                continue
            pool = members[dept]
            k = min(k, pool.size)
            w = weight[pool] / weight[pool].sum()
            rows_d.append(rng.choice(pool, size=k, replace=False, p=w))
            rows_s.append(np.full(k, i))
    s = np.concatenate(rows_s)
    d = np.concatenate(rows_d)
    missing = np.setdiff1d(np.arange(n_d), d)  # every lecturer rated: a student each for the unrated
    s = np.concatenate([s, rng.choice(n_s, size=missing.size)])
    d = np.concatenate([d, missing])
    pairs = np.unique(s * n_d + d)  # at most one rating per (student, lecturer)
    s, d = pairs // n_d, pairs % n_d
    dept = dept_of[d]
    away = dept != home[s]
    service = rng.random(s.size) < np.where(away, SERVICE_AWAY, SERVICE_HOME)
    t = TRUTH
    y = (t["(Intercept)"] + t["service1"] * service + rng.normal(0, t["s"], n_s)[s]
         + rng.normal(0, t["d"], n_d)[d] + rng.normal(0, t["dept"], N_DEPTS)[dept]
         + rng.normal(0, t["Residual"], s.size))
    order = rng.permutation(s.size)
    return pd.DataFrame({
        "y": y[order], "service": np.where(service, "1", "0")[order],
        "s": (s + 1)[order].astype(str), "d": (d + 1)[order].astype(str), "dept": (dept + 1)[order].astype(str),
    })  # fmt: skip


def describe(df: pd.DataFrame) -> str:
    """Level counts and rows per level, as the module docstring gives InstEval's."""
    ns, nd = df["s"].value_counts(), df["d"].value_counts()
    lect = df.drop_duplicates("d")["dept"].value_counts()
    return (f"{len(df):,} rows; {ns.size:,} students ({ns.min()}-{ns.max()}, median {ns.median():.0f}, "
            f"mean {ns.mean():.1f}); {nd.size:,} lecturers ({nd.min()}-{nd.max()}, median {nd.median():.0f}, "
            f"mean {nd.mean():.1f}); {lect.size} departments ({lect.min()}-{lect.max()} lecturers); "
            f"service {np.mean(df['service'] == '1'):.0%}")


# ---------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------

_R_SCRIPT = """
suppressMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1], colClasses = c(y = "numeric", service = "character", s = "character",
              d = "character", dept = "character"))
for (v in c("service", "s", "d", "dept")) d[[v]] <- factor(d[[v]])
t0 <- Sys.time()
m <- lmer(FORMULA, d, REML = TRUE)
secs <- as.numeric(Sys.time() - t0, units = "secs")
vc <- as.data.frame(VarCorr(m))
out <- c(as.list(fixef(m)), setNames(as.list(vc$sdcor), vc$grp), list(seconds = secs))
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = 10))
""".replace("FORMULA", FORMULA)


def lme4_side(csv: Path) -> dict:
    """lme4's REML estimates (fixed effects and sds by group, ``Residual``) and its fit's seconds.

    R's lme4 when ``Rscript`` is on the path, else bayeslmm's own REML (``bayeslmm.lme4``).
    """
    if shutil.which("Rscript"):
        res = subprocess.run(["Rscript", "-e", _R_SCRIPT, str(csv)], capture_output=True, text=True)
        if res.returncode == 0:
            return {"source": "R lme4", **json.loads(res.stdout)}
        print(f"Rscript failed ({res.stderr.strip().splitlines()[-1:]}); using bayeslmm's REML", file=sys.stderr)
    from bayeslmm.lme4 import frequentist
    from bayeslmm.model.formula import model_frame, parse

    df = pd.read_csv(csv, dtype={"service": str, "s": str, "d": str, "dept": str})
    t0 = time.perf_counter()
    fit = frequentist.fit_lmm(model_frame(parse(FORMULA), df), "reml")
    out = {"source": "bayeslmm.lme4", **fit.fixef.to_dict(), "seconds": time.perf_counter() - t0}
    out.update({r["group"]: float(r["sd"]) for _, r in fit.varcorr.iterrows() if r["term"].startswith("sd__")})
    return out


def parse_table(stdout: str) -> pd.DataFrame:
    """The table ``bayeslmm fit`` prints: effect, group, term, mean, sd, conf_low, conf_high, r_hat, ess_bulk."""
    rows = []
    for line in stdout.splitlines()[2:]:
        tok = line.split()
        if len(tok) < 8:
            continue
        *head, term, mean, _sd, lo, hi, rhat, ess = tok
        rows.append({"effect": head[0], "group": head[1] if len(head) > 1 else "", "term": term,
                     "mean": float(mean), "conf_low": float(lo), "conf_high": float(hi), "r_hat": float(rhat),
                     "ess_bulk": float(ess)})  # fmt: skip
    return pd.DataFrame(rows)


def whole_process(data: Path, extra: tuple[str, ...] = ()) -> tuple[float, float, pd.DataFrame, str]:
    """Wall seconds, peak RSS (GB) and printed table of ``python -m bayeslmm.cli fit DATA FORMULA`` (``extra``:
    more of its options, e.g. ``--out DIR``)."""
    cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(data), FORMULA, "--no-progress", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    timer = ["/usr/bin/time", "-f", "MAXRSS_KB %M"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    res = subprocess.run([*timer, *cmd], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t0
    rss = [float(line.split()[1]) / 1e6 for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    if res.returncode != 0:
        raise SystemExit(f"bayeslmm fit failed ({res.returncode}):\n{res.stderr[-2000:]}")
    notes = "\n".join(line for line in res.stderr.splitlines() if not line.startswith("MAXRSS_KB"))
    return seconds, (rss[0] if rss else float("nan")), parse_table(res.stdout), notes


def in_process(df: pd.DataFrame) -> tuple[dict, pd.DataFrame, str]:
    """Stage timings of an in-process fit (prepare, sampling, all of it) and its fixed effects and sds."""
    from bayeslmm.engines import bayes
    from bayeslmm.model.formula import parse

    t0 = time.perf_counter()
    prep = bayes.prepare(parse(FORMULA), df)
    t1 = time.perf_counter()
    fit = bayes.sample_prepared(prep, progress=False)
    t2 = time.perf_counter()
    tidy = fit.tidy(effects=("fixed", "ran_pars")).rename(columns={"estimate": "mean"})
    attrs = fit.idata["posterior"].attrs
    steps = fit.idata["sample_stats"]["n_steps"].values
    times = {"prepare": t1 - t0, "sample_prepared": t2 - t1, "sampling": attrs["sampling_time"],
             "gradients (draws)": int(steps.sum()), "steps per draw": float(steps.mean()),
             "draws per chain": int(fit.idata["posterior"].sizes["draw"])}  # fmt: skip
    return times, tidy, fit.engine_note


def gradient_times(df: pd.DataFrame, repeats: int = 5) -> None:
    """CPU seconds of one log density and gradient, factor and selected inverse: scalar loops vs the dense block."""
    from threadpoolctl import threadpool_limits

    from bayeslmm.engines import bayes, marginal
    from bayeslmm.engines import marginal_lik as ml
    from bayeslmm.model.formula import parse

    prep = bayes.prepare(parse(FORMULA), df)
    sp = marginal.spec(prep.formula, prep.frame, prep.model, prep.user_priors)

    def best(func, *args):
        out = []
        for _ in range(repeats):
            t0 = time.thread_time()
            func(*args)
            out.append(time.thread_time() - t0)
        return min(out)

    def one(label: str, dense_min: int) -> None:
        st = ml.sufficient_stats(y, sp.X, list(sp.factors), len(sp.random), dense_min)
        q = st.q
        nt = q - int(ml.dense_start(st.Lp, dense_min)) if dense_min < 10**9 else q - int(ml.full_trailing(st.Lp))
        args = (*st.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar, dense_min)
        grad = np.empty(sp.n_dim)
        value = ml.logp_grad(theta, grad, *args)
        Lx = st.Ax.copy()
        Lx[st.Lp[:-1]] += 5.0
        L = Lx.copy()
        ml.factor(st.Lp, st.Li, st.Rp, st.Rk, st.Rpos, L, np.empty(q, np.int64), dense_min)
        Sx = np.empty(L.size)
        t_f = best(lambda: ml.factor(st.Lp, st.Li, st.Rp, st.Rk, st.Rpos, Lx.copy(), np.empty(q, np.int64), dense_min))
        t_s = best(ml.selected_inverse, st.Lp, st.Li, L, Sx, np.empty(q), np.empty(q), dense_min)
        t_g = best(ml.logp_grad, theta, grad, *args)
        print(f"{label:<22} q {q}, nnz(L) {st.Li.size:,}, trailing full block {nt}: factor {t_f:.4f} s, "
              f"selected inverse {t_s:.4f} s, log density + gradient {t_g:.4f} s (value {value:.6f})")
        if dense_min < 10**9:  # LAPACK's share: dpotrf and dpotri of the block alone
            F = ml._trailing_to_dense(st.Lp, L, q - nt)
            t_inv = best(lambda: ml._dense_lapack(F.copy(), True))
            S = np.triu(F).T @ np.triu(F)
            t_chol = best(lambda: ml._dense_lapack(S.copy(), False))
            print(f"{'':<22} of which LAPACK: dpotrf {t_chol:.4f} s, dpotri {t_inv:.4f} s (copies included)")

    y = sp.y - sp.offset - sp.shift
    theta = marginal.initial_point(sp)
    p = sp.X.shape[1]
    theta[p : p + 4] = np.log([TRUTH["s"], TRUTH["d"], TRUTH["dept"], TRUTH["Residual"]])
    with threadpool_limits(limits=1, user_api="blas"):
        one("scalar loops (before)", 10**9)
        one("dense block (LAPACK)", ml.DENSE_MIN)


def check(tidy: pd.DataFrame, lme4: dict) -> list[str]:
    """One line per parameter: posterior mean, 95% interval, r_hat, bulk ESS, lme4's estimate and whether inside."""
    lines = []
    for _, r in tidy.iterrows():
        key = r["term"] if r["effect"] == "fixed" else r["group"]
        est = lme4.get(key)
        where = "" if est is None else f"  lme4 {est:.4f} " + ("inside" if r["conf_low"] <= est <= r["conf_high"]
                                                                else "OUTSIDE")
        lines.append(f"{r['effect']:<9}{r['group']:<9}{r['term']:<16}{r['mean']:>9.4f} [{r['conf_low']:.4f}, "
                     f"{r['conf_high']:.4f}]  r_hat {r['r_hat']:.3f}  ESS {r['ess_bulk']:>5.0f}{where}")  # fmt: skip
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a CSV with InstEval's columns y, service, s, d, dept (lme4's own, exported)")
    ap.add_argument("--scale", type=float, default=1.0, help="students and lecturers x this (simulated data)")
    ap.add_argument("--seed", type=int, default=SEED, help="of the simulated data")
    ap.add_argument("--in-process", action="store_true", help="fit in this process, stages timed")
    ap.add_argument("--gradient", action="store_true", help="time one gradient only")
    ap.add_argument("--no-lme4", action="store_true", help="skip lme4's side")
    ap.add_argument("--write-csv", metavar="FILE", help="write the simulated data (y to 6 digits) and stop")
    ap.add_argument("fit_args", nargs="*", help="passed on to bayeslmm fit (after --)")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            df = pd.read_csv(args.data, dtype={"service": str, "s": str, "d": str, "dept": str})[
                ["y", "service", "s", "d", "dept"]]
        else:
            df = simulate(args.seed, args.scale)
        print(describe(df), flush=True)
        if args.write_csv:
            df.to_csv(args.write_csv, index=False, float_format="%.6g")
            return 0
        if args.gradient:
            gradient_times(df)
            return 0
        csv = Path(tmp) / "insteval.csv"
        df.to_csv(csv, index=False)
        data = Path(tmp) / "insteval.parquet"  # categorical columns: service is a factor, as in InstEval
        df.astype({c: "category" for c in ("service", "s", "d", "dept")}).to_parquet(data)
        lme4 = {} if args.no_lme4 else lme4_side(csv)
        if lme4:
            print(f"lme4 ({lme4['source']}): REML fit in {lme4['seconds']:.1f} s", flush=True)
        if args.in_process:
            times, tidy, note = in_process(df)
            print(f"in-process fit ({note}): " + ", ".join(
                f"{k} {v:.1f} s" if isinstance(v, float) and "per" not in k else f"{k} {v}"
                for k, v in times.items()))
        else:
            seconds, rss, tidy, notes = whole_process(data, tuple(args.fit_args))
            what = "with --out" if "--out" in args.fit_args else "no --out"
            print(f"bayeslmm fit (whole process, {what}): {seconds:.1f} s, peak RSS {rss:.2f} GB")
            print("\n".join(f"  {line}" for line in notes.splitlines()))
        for line in check(tidy, lme4):
            print(line)
        core = tidy[tidy["effect"].isin(["fixed", "ran_pars"])]
        print(f"min bulk ESS {core['ess_bulk'].min():.0f}, max r_hat {core['r_hat'].max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
