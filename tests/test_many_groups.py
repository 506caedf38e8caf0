"""Many groups: 1,000 groups x 3 rows (lme4's answers for it: tests/test_lme4_beyond.py), and
designs whose fits or profiles failed.

Up to commit 2a5f2c8 the lme4 side factored ``X'X - R_ZX'R_ZX`` by Cholesky, a difference that
cancels to rounding error (potrf: "not positive definite") once an intercept lies in the span
of a term with a large theta; the profiler's first L-BFGS-B step took sigma to its bound
(theta = sd / sigma ~ 1e8) and L-BFGS-B's line searches in the fit tried theta ~ 1e9. So
profiles died from about 120 groups on, and some ML and REML fits of nested designs too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.lmer import LmerProblem
from bayeslmm.lme4.profile import profile_ci
from bayeslmm.model.formula import model_frame, parse
from conftest import beyond


@pytest.fixture(scope="module")
def many_groups():
    """tests/data/beyond/many_groups.csv fitted by REML (lme4's answers on it: tests/test_lme4_beyond.py)."""
    entry, df = beyond("many_groups")
    frame = model_frame(parse(entry["formula"]), df)
    return frame, frequentist.fit(frame, "reml")


def test_profiler_stays_near_the_estimates(many_groups, monkeypatch):
    """The nuisance parameters move in units of their Wald se, so no theta far from the estimate
    is tried (the first step on the old scale took sigma to its bound: theta = 1e8)."""
    frame, fit = many_groups
    assert fit.ngroups == {"group": 1000}
    seen, solve = [], LmerProblem.solve

    def spy(self, theta):
        seen.append(float(np.max(theta)))
        return solve(self, theta)

    monkeypatch.setattr(LmerProblem, "solve", spy)
    profile_ci(frame, fit)
    assert len(seen) > 100 and max(seen) < 2 * fit.theta.iloc[0]


# ---------------------------------------------------------------------------------------
# Designs that failed: seeded simulations (the seeds are ones where the old code raised)
# ---------------------------------------------------------------------------------------


def _groups(n_groups: int, per: int, seed: int) -> tuple[str, pd.DataFrame]:
    """y = 2 + 0.5 x + u_g + e with u, e ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    y = 2 + 0.5 * x + rng.normal(size=n_groups)[g] + rng.normal(size=g.size)
    return "y ~ x + (1|g)", pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{i:04d}" for i in g])})


def _nested(n_ranges: int, n_sites: int, per: int, seed: int) -> tuple[str, pd.DataFrame]:
    """The dragons recipe (bayeslmm.model.simulate) with more ranges: range sd 18, site sd 4.5, residual
    15, and a standardised body length that tracks the range effects but has no effect itself."""
    rng = np.random.default_rng(seed)
    r = np.repeat(np.arange(n_ranges), n_sites * per)
    s = np.tile(np.repeat(np.arange(n_sites), per), n_ranges)
    u, v = rng.normal(0, 18, n_ranges), rng.normal(0, 4.5, (n_ranges, n_sites))
    body = 0.9 * u[r] + rng.normal(0, 5, (n_ranges, n_sites))[r, s] + rng.normal(0, 12, r.size)
    df = pd.DataFrame({
        "y": 50 + u[r] + v[r, s] + rng.normal(0, 15, r.size), "x": (body - body.mean()) / body.std(),
        "range": pd.Categorical([f"r{i:03d}" for i in r]), "site": pd.Categorical(np.array(list("abc"))[s]),
    })  # fmt: skip
    return "y ~ x + (1|range/site)", df


#: Simulations where the old code raised: the profiles of 150 x 2 and 1000 x 3 for seeds 1-3
#: (of the REML and the ML fit); the ML fit of 80 x 3 x 20 for seed 16 (the REML fit for 3, 13, 20).
FAILED = {
    "150x2": lambda: _groups(150, 2, 1),
    "1000x3": lambda: _groups(1000, 3, 1),
    "80x3x20": lambda: _nested(80, 3, 20, 16),
}


def _estimates(fit) -> dict[str, float]:
    """A fit's estimates under profile_ci's lme4 names (sds in lme4's order, sigma, fixed effects)."""
    sds = fit.varcorr[fit.varcorr.group != "Residual"].sd.to_numpy()
    return {**{f".sig{i + 1:02d}": v for i, v in enumerate(sds)}, ".sigma": fit.sigma, **fit.fixef.to_dict()}


@pytest.mark.parametrize("design", list(FAILED))
def test_fits_and_profiles_where_they_failed(design):
    formula, df = FAILED[design]()
    frame = model_frame(parse(formula), df)
    fits = {method: frequentist.fit(frame, method) for method in ("reml", "ml")}
    for method, fit in fits.items():
        assert fit.converged, method
        ci = profile_ci(frame, fit).set_index("lme4_name")
        assert np.isfinite(ci[["conf_low", "conf_high"]].to_numpy()).all()
        for name in ci.index:  # both fits' estimates (the profile is about the ML one, as lme4's)
            for f in fits.values():
                assert ci.at[name, "conf_low"] < _estimates(f)[name] < ci.at[name, "conf_high"], (method, name)
    # the ML optimum is a minimum: an independent optimiser from it finds nothing lower
    problem = LmerProblem(frame, reml=False)
    theta = fits["ml"].theta.to_numpy()
    res = optimize.minimize(problem.objective, theta, method="Nelder-Mead",
                            bounds=[(0, None)] * theta.size, options={"xatol": 1e-8, "fatol": 1e-10})
    assert problem.objective(theta) <= res.fun + 1e-7


# ---------------------------------------------------------------------------------------
# The penalized least squares at extreme theta, and a saddle on the bound
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("design", ["1000x3", "nested"])
def test_criterion_is_finite_at_extreme_theta(design):
    """Dense (QR of the augmented system) and sparse (residual cross-products) paths: finite and
    growing with theta up to 1e12, with the sparse one's intercept in the span of a huge term."""
    if design == "1000x3":
        (formula, df), paths, lopsided = _groups(1000, 3, 1), [False], np.array([1e9])
    else:  # theta: site (within range), range; the ML fit of 80 x 3 x 20 died at (6e-6, 1.3e9)
        (formula, df), paths, lopsided = _nested(8, 3, 20, 16), [True, False], np.array([6e-6, 1e9])
    frame = model_frame(parse(formula), df)
    for reml in (True, False):
        values = []
        for dense in paths:
            m = LmerProblem(frame, reml=reml, dense=dense)
            crit = np.array([m.objective(np.full(m.theta0.size, t)) for t in 10.0 ** np.arange(1, 13)])
            assert np.isfinite(crit).all() and (np.diff(crit) > 0).all()
            assert np.isfinite(m.objective(lopsided))
            values.append(crit)
        if len(values) == 2:  # the paths agree where double precision resolves the criterion
            np.testing.assert_allclose(values[0][:4], values[1][:4], rtol=1e-10)


def test_optimizer_leaves_a_saddle_on_the_bound(crossed):
    """(x|subj): the criterion is even in the slope's diagonal theta, so at 0 its slope is 0 and
    L-BFGS-B (and the gradient check) can stop there although the curvature is negative. Seen on
    this crossed design (conftest's, fitted in tests/test_frequentist.py too) once the R_X change
    moved L-BFGS-B's path."""
    m = LmerProblem(model_frame(parse("y ~ x + (x|subj) + (1|item)"), crossed), reml=True)
    assert m.theta_names[2] == "subj.x"
    saddle = np.array([1.4774778, 0.0209838, 0.0, 0.7638932])  # where L-BFGS-B stopped
    e = np.array([0.0, 0.0, 1e-3, 0.0])
    assert m.objective(saddle + e) < m.objective(saddle)  # downhill off the bound
    m.theta0 = saddle
    theta, converged = m.optimize()
    assert converged and theta[2] > 0.05
    assert m.objective(theta) < m.objective(saddle) - 0.05
