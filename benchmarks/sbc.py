"""Simulation-based calibration (Talts et al. 2018) of the marginal engine, with explicit priors.

Run from the repository root::

    .venv/bin/python benchmarks/sbc.py                 # 300 simulations per design
    .venv/bin/python benchmarks/sbc.py --n 100 --design nested --design crossed

Each simulation draws every parameter from the priors the fit is given (:data:`PRIORS`, one list
for both: the fixed slope, the intercept on the centred predictor, each group sd, the residual
sd, and for ``(1 + x|g)`` the correlation from its LKJ prior), then the random effects and the
response on a fixed design, and fits it with ``bayes.fit`` (marginal engine, these priors, a
seed per simulation). Each parameter's true value is ranked among ``L`` = 99 posterior draws,
thinned evenly from the pooled chains; a fit whose smallest bulk or tail ESS over the ranked
quantities is below ``L`` is refitted with twice the draws (Talts et al.'s Algorithm 2). Ranked:
the intercept (centred, as its prior is stated), the slope, every sd, the residual sd, the
correlation, and the effect of each grouping factor's first level. If the engine samples the
posterior of these priors, each rank is uniform on 0..L over the simulations: per parameter,
a chi-square test of the rank histogram (:data:`BINS` bins) and a Kolmogorov-Smirnov test of
the randomised ranks ``(rank + U) / (L + 1)``, exactly uniform under calibration (its statistic
is the largest ECDF difference). Divergent fits are kept (dropping them would bias the ranks).

``--sd-scale 2`` simulates the group sds from priors twice as wide as the fit's: a deliberate
mismatch calibration must detect (at N = 100 the sds' chi-square p-values fell to 8e-7 for
sd(range), 7e-6 and 4e-5 for sd(a) and sd(b), 0.0015 for sd(range:site)); it is how the check's
power was shown, not part of the calibration.

Designs (:data:`DESIGNS`): nested, 6 ranges x 3 sites x 4 rows, ``(1|range/site)``; crossed,
10 x 8 levels, one row per pair, ``(1|a) + (1|b)``; correlated, 12 groups x 6 rows,
``(1 + x|g)``. ``x`` is standard normal with mean 0.3 (so the intercept's centring matters).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bayeslmm.model.priors import Priors, lkj_marginal  # noqa: E402

SEED = 20260413
#: Draws ranked per fit (Talts et al.'s L): ranks run over 0..L.
L = 99
#: Bins of the chi-square test; they divide the L + 1 ranks evenly.
BINS = 10
#: The priors of every simulation and of every fit (``cor`` reaches only the correlated design).
PRIORS = ("b ~ Normal(0, 1)", "Intercept ~ Normal(0, 2)", "sd ~ HalfNormal(1)", "sigma ~ HalfNormal(1)",
          "cor ~ LKJ(2)")
#: Sampling per fit: 2 chains (the 2 cores), 500 tuning steps, 500 draws each (pooled 1000,
#: thinned to L); measured ~0.3 s per fit after the first.
SAMPLER = {"chains": 2, "tune": 500, "draws": 500, "target_accept": 0.95}


@dataclass(frozen=True)
class Term:
    """A random term: its grouping columns (``range, site`` for ``range:site``); ``("1",)`` or ``("1", "x")``."""

    columns: tuple[str, ...]
    coefs: tuple[str, ...] = ("1",)

    @property
    def group(self) -> str:
        """lme4's name of the grouping factor (``range:site``), as the posterior names it."""
        return ":".join(self.columns)


@dataclass(frozen=True)
class Design:
    name: str
    formula: str
    data: pd.DataFrame  # x and the grouping columns (fixed across simulations)
    terms: tuple[Term, ...]


def _design_rng(name: str) -> np.random.Generator:
    return np.random.default_rng([SEED, sum(map(ord, name))])


def nested() -> Design:
    """6 ranges x 3 sites (labels a, b, c reused in each range) x 4 rows: ``(1|range/site)``."""
    r = np.repeat(np.arange(6), 12)
    s = np.tile(np.repeat(np.arange(3), 4), 6)
    df = pd.DataFrame({"x": _design_rng("nested").normal(0.3, 1.0, r.size),
                       "range": pd.Categorical([f"r{i}" for i in r]),
                       "site": pd.Categorical(["abc"[i] for i in s])})
    return Design("nested", "y ~ x + (1|range/site)", df, (Term(("range",)), Term(("range", "site"))))


def crossed() -> Design:
    """10 levels of a crossed with 8 of b, one row per pair: ``(1|a) + (1|b)``."""
    a = np.repeat(np.arange(10), 8)
    b = np.tile(np.arange(8), 10)
    df = pd.DataFrame({"x": _design_rng("crossed").normal(0.3, 1.0, a.size),
                       "a": pd.Categorical([f"a{i}" for i in a]), "b": pd.Categorical([f"b{i}" for i in b])})
    return Design("crossed", "y ~ x + (1|a) + (1|b)", df, (Term(("a",)), Term(("b",))))


def correlated() -> Design:
    """12 groups x 6 rows, a correlated intercept and slope per group: ``(1 + x|g)``."""
    g = np.repeat(np.arange(12), 6)
    df = pd.DataFrame({"x": _design_rng("correlated").normal(0.3, 1.0, g.size),
                       "g": pd.Categorical([f"g{i:02d}" for i in g])})
    return Design("correlated", "y ~ x + (1 + x|g)", df, (Term(("g",), ("1", "x")),))


DESIGNS = {"nested": nested, "crossed": crossed, "correlated": correlated}


def _draw(statement, rng: np.random.Generator, scale: float = 1.0) -> float:
    """One draw from a prior statement (the distributions :data:`PRIORS` uses), its scale times ``scale``."""
    kw = statement.kwargs
    if statement.dist == "Normal":
        return float(rng.normal(kw["mu"], kw["sigma"] * scale))
    if statement.dist == "HalfNormal":
        return float(abs(rng.normal(0.0, kw["sigma"] * scale)))
    raise ValueError(f"the simulator cannot draw from {statement.text}")


def simulate(design: Design, priors: Priors, rng: np.random.Generator,
             sd_scale: float = 1.0) -> tuple[pd.DataFrame, dict[str, float]]:
    """A data set from the priors: the response and the true value of every ranked quantity.

    Names are the posterior's: ``Intercept`` here is the intercept on the centred predictor,
    ``1|a_sigma`` an sd, ``1|a[a0]`` the first level's effect.
    """
    df = design.data.copy()
    x = df["x"].to_numpy()
    truth = {"Intercept": _draw(priors.chosen("Intercept"), rng), "x": _draw(priors.chosen("b", coef="x"), rng)}
    mu = truth["Intercept"] + truth["x"] * (x - x.mean())
    for term in design.terms:
        group = term.group
        labels = df[term.columns[0]].astype(str).to_numpy()
        for column in term.columns[1:]:
            labels = np.char.add(np.char.add(labels, ":"), df[column].astype(str).to_numpy())
        levels, index = np.unique(labels, return_inverse=True)
        names = ["(Intercept)" if c == "1" else c for c in term.coefs]
        sds = np.array([_draw(priors.chosen("sd", group, n), rng, sd_scale) for n in names])
        cor = np.eye(len(sds))
        if len(sds) == 2:
            cor[0, 1] = cor[1, 0] = float(lkj_marginal(priors.lkj_eta(group), 2).rvs(random_state=rng))
            truth[f"cor__(Intercept).{term.coefs[1]}|{group}"] = cor[0, 1]
        cov = sds[:, None] * cor * sds[None, :]
        effects = rng.multivariate_normal(np.zeros(len(sds)), cov, levels.size, method="cholesky")
        for j, coef in enumerate(term.coefs):
            column = np.ones(len(df)) if coef == "1" else df[coef].to_numpy()
            mu = mu + column * effects[index, j]
            truth[f"{coef}|{group}_sigma"] = sds[j]
            truth[f"{coef}|{group}[{levels[0]}]"] = effects[0, j]
    truth["sigma"] = _draw(priors.chosen("sigma"), rng)
    df.insert(0, "y", mu + rng.normal(0.0, truth["sigma"], len(df)))
    return df, truth


def posterior_draws(fit, names) -> np.ndarray:
    """The ranked quantities' draws, (chain, draw, quantity): the intercept re-centred as its prior is stated."""
    post = fit.idata["posterior"].to_dataset()
    out = []
    for name in names:
        if name == "Intercept":  # reported for x = 0; its prior is on the centred predictor
            out.append(post["Intercept"].values + post["x"].values * fit.data["x"].mean())
        elif name.endswith("]"):
            var, level = name[:-1].split("[")
            arr = post[var]
            out.append(arr.sel({arr.dims[-1]: level}).values)
        else:
            out.append(post[name].values)
    return np.stack(out, axis=-1)


def fit_and_rank(design: Design, priors: Priors, df: pd.DataFrame, truth: dict[str, float],
                 seed: int) -> tuple[np.ndarray, dict]:
    """Fit one simulated data set and rank each true value among L thinned draws (refit once if ESS < L)."""
    import arviz as az

    from bayeslmm.engines import bayes
    from bayeslmm.model.formula import parse
    from bayeslmm.model.options import RunOptions, SamplerOptions

    names = list(truth)
    values = np.array([truth[n] for n in names])
    draws = SAMPLER["draws"]
    for attempt in range(2):
        options = SamplerOptions(engine="marginal", seed=seed, **{**SAMPLER, "draws": draws})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = bayes.fit(parse(design.formula), df, options, run=RunOptions(progress=False), priors=priors)
        d = posterior_draws(fit, names)
        ess = float(min(np.min(az.ess(d, method="bulk")), np.min(az.ess(d, method="tail", prob=0.9))))
        if ess >= L or attempt:
            break
        draws *= 2
    flat = d.reshape(-1, d.shape[-1])
    thin = flat[np.linspace(0, flat.shape[0] - 1, L).round().astype(int)]
    ranks = (thin < values).sum(axis=0)
    info = {"seconds": fit.seconds, "divergent": int(fit.idata["sample_stats"]["diverging"].values.sum()),
            "refit": attempt, "ess": ess}
    return ranks, info


@dataclass(frozen=True)
class Calibration:
    """The ranks of one design's simulations and the tests of their uniformity."""

    design: str
    names: tuple[str, ...]
    ranks: np.ndarray  # (simulations, quantities), each in 0..L
    seconds: float
    fit_seconds: np.ndarray
    divergent: np.ndarray
    refits: int
    low_ess: int  # fits whose ESS stayed below L after the refit

    def table(self, seed: int = SEED) -> pd.DataFrame:
        """Per quantity: chi-square p of the rank histogram, KS statistic (max ECDF difference) and p."""
        from scipy import stats

        counts = np.stack([np.bincount(r * BINS // (L + 1), minlength=BINS) for r in self.ranks.T])
        u = (self.ranks + np.random.default_rng(seed).random(self.ranks.shape)) / (L + 1)
        ks = [stats.kstest(col, "uniform") for col in u.T]
        return pd.DataFrame({"quantity": self.names,
                             "chisq_p": [stats.chisquare(c).pvalue for c in counts],
                             "ks_D": [k.statistic for k in ks], "ks_p": [k.pvalue for k in ks],
                             "min_bin": counts.min(axis=1), "max_bin": counts.max(axis=1)})


def calibrate(name: str, n: int, seed: int = SEED, sd_scale: float = 1.0, progress: bool = False) -> Calibration:
    """Run ``n`` simulations of one design (seeded by ``seed`` and their index) and rank them."""
    from bayeslmm.model.formula import parse

    design = DESIGNS[name]()
    correlated = any(r.correlated for r in parse(design.formula).random)
    # a cor prior only where there are correlations (bayeslmm refuses one that reaches nothing)
    priors = Priors.from_texts([t for t in PRIORS if correlated or not t.startswith("cor")])
    start = time.perf_counter()
    ranks, infos, names = [], [], None
    for i in range(n):
        rng = np.random.default_rng([seed, sum(map(ord, name)), i])
        df, truth = simulate(design, priors, rng, sd_scale)
        r, info = fit_and_rank(design, priors, df, truth, seed=(seed + 7919 * i) % 2**31)
        names = names or tuple(truth)
        ranks.append(r)
        infos.append(info)
        if progress and ((i + 1) % 25 == 0 or i + 1 == n):
            print(f"  {name}: {i + 1}/{n} fits, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return Calibration(name, names, np.array(ranks), time.perf_counter() - start,
                       np.array([x["seconds"] for x in infos]), np.array([x["divergent"] for x in infos]),
                       sum(x["refit"] for x in infos), sum(x["ess"] < L for x in infos))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="simulations per design (default 300)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--design", action="append", choices=list(DESIGNS),
                    help="a design to run (repeatable; default all)")
    ap.add_argument("--sd-scale", type=float, default=1.0,
                    help="simulate the sds from priors this many times wider than the fit's (a power check)")
    args = ap.parse_args(argv)
    print(f"SBC of the marginal engine: priors {'; '.join(PRIORS)}; L = {L} draws ranked, {BINS} bins; "
          f"sampler {SAMPLER}; seed {args.seed}" + (f"; sds simulated x{args.sd_scale}" if args.sd_scale != 1 else ""))
    worst = 1.0
    for name in args.design or list(DESIGNS):
        cal = calibrate(name, args.n, args.seed, args.sd_scale, progress=True)
        table = cal.table(args.seed)
        worst = min(worst, table["chisq_p"].min(), table["ks_p"].min())
        print(f"\n{name}: {DESIGNS[name]().formula}; N = {args.n} simulations in {cal.seconds:.1f} s "
              f"(fit median {np.median(cal.fit_seconds):.3f} s, max {cal.fit_seconds.max():.2f} s); "
              f"{int((cal.divergent > 0).sum())} fits with divergences ({int(cal.divergent.sum())} in all); "
              f"{cal.refits} refitted for ESS < {L}, {cal.low_ess} still below")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nsmallest p-value: {worst:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
