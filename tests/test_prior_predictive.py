"""Data replicated from the priors, and the prior predictive check figure.

* LKJ draws: each correlation's marginal is the exact Beta of an LKJ(eta) matrix
  (:func:`bayeslmm.model.priors.lkj_marginal`), and the joint matches PyMC's ``LKJCorr`` draws (the
  determinant's distribution, two-sample);
* the group effects: with the sds and correlation held fixed, the linear predictor's covariance over
  draws is lme4's ``Z D Z'``, pair of rows by pair of rows (a correlated slope included);
* a whole replicate: its mean is the intercept's prior mean (the response's shift put back);
  binomial proportions and Poisson counts are on their support;
* the figure, by its structure.

Monte Carlo tolerances are stated where used (seeded: the outcome is fixed, and a wrong construction
misses by many standard errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bayeslmm.engines import bayes, prior_density
from bayeslmm.engines.bayes import SamplerOptions
from bayeslmm.graphics import plots_priors
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions
from bayeslmm.model.priors import lkj_marginal
from bayeslmm.summary import prior_predictive as pp
from conftest import beyond

TINY = SamplerOptions(draws=30, tune=150, chains=1, seed=5)


def _fit(formula, df, family="gaussian", name="fit"):
    return bayes.fit(parse(formula, family), df, TINY, run=RunOptions(progress=False), name=name)


@pytest.mark.parametrize(("k", "eta"), [(2, 1.0), (3, 2.0), (4, 0.7)])
def test_lkj_draws_have_the_exact_marginals(k, eta):
    R = pp.lkj_draws(eta, k, 20000, np.random.default_rng(k))
    assert np.allclose(R, np.swapaxes(R, 1, 2)) and np.allclose(np.diagonal(R, axis1=1, axis2=2), 1.0)
    for i, j in zip(*np.tril_indices(k, -1), strict=True):
        assert stats.kstest(R[:, i, j], lkj_marginal(eta, k).cdf).pvalue > 1e-3, (i, j)


def test_lkj_draws_are_pymcs():
    """The joint, through det R (which the marginals do not fix): against PyMC's LKJCorr sampler."""
    import pymc as pm

    k, eta, n = 3, 1.5, 20000
    ours = np.linalg.det(pp.lkj_draws(eta, k, n, np.random.default_rng(9)))
    L = pm.draw(pm.LKJCorr.dist(n=k, eta=eta), draws=n, random_seed=10)
    theirs = np.linalg.det(L @ np.swapaxes(L, 1, 2))
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
    wrong = np.linalg.det(pp.lkj_draws(eta + 1.0, k, n, np.random.default_rng(9)))
    assert stats.ks_2samp(wrong, theirs).pvalue < 1e-6  # the test can tell a different eta


def test_group_effects_have_lme4s_covariance():
    """Fixed sds (5, 2), correlation -0.4 and zero coefficients: Cov(eta_i, eta_j) = z_i' Sigma z_j for rows of
    one subject (z = (1, day)), 0 across subjects; each of 20000 draws is independent, so a covariance has
    standard error sqrt((Var_i Var_j + Cov^2) / n), and we accept 5 of them."""
    _, df = beyond("slopes_correlated")
    fit = _fit("reaction ~ day + (day|subject)", df)
    sp = prior_density.spec(fit)
    n = 20000
    s = np.array([5.0, 2.0])
    Sigma = np.diag(s) @ np.array([[1.0, -0.4], [-0.4, 1.0]]) @ np.diag(s)
    beta = np.zeros((n, sp.X.shape[1]))
    cors = {sp.blocks[0].cor.start: np.broadcast_to(np.array([[1.0, -0.4], [-0.4, 1.0]]), (n, 2, 2))}
    eta = pp.linear_predictor(sp, beta, np.tile(s, (n, 1)), cors, np.random.default_rng(4))
    subject = df["subject"].astype(str).to_numpy()
    day = df["day"].to_numpy(dtype=float)
    first = np.flatnonzero(subject == subject[0])
    other = np.flatnonzero(subject != subject[0])[0]
    pairs = [(first[0], first[0]), (first[1], first[-1]), (first[2], first[5]), (first[0], other)]
    for i, j in pairs:
        zi, zj = np.array([1.0, day[i]]), np.array([1.0, day[j]])
        want = zi @ Sigma @ zj if subject[i] == subject[j] else 0.0
        got = np.cov(eta[:, i], eta[:, j])[0, 1]
        se = np.sqrt((np.var(eta[:, i]) * np.var(eta[:, j]) + got**2) / n)
        assert abs(got - want) < 5 * se, (i, j, got, want)


def test_gaussian_replicates_centre_on_the_intercepts_prior(builtin):
    """The predictors are centred, so a replicate's mean is the intercept + a mean of group effects + noise:
    over replicates it estimates the intercept's prior mean (Bambi: the mean of the response), within 4
    standard errors of the replicates' means; without the response's shift it would miss by that mean."""
    fit = _fit("testScore ~ bodyLength2 + (1|mountainRange)", builtin)
    sp = prior_density.spec(fit)
    out = pp.prior_predictive(fit, seed=1)
    assert out.draws.shape == (500, len(builtin)) and out.family == "gaussian"
    np.testing.assert_array_equal(out.observed, builtin["testScore"].to_numpy(dtype=float))
    means = out.draws.mean(axis=1)
    prior_mean = sp.bpar[0, 0] + sp.shift
    assert abs(means.mean() - prior_mean) < 4 * means.std(ddof=1) / np.sqrt(means.size)
    assert abs(sp.shift) > 8 * means.std(ddof=1) / np.sqrt(means.size)  # the shift matters at this precision


@pytest.mark.parametrize(("entry", "family", "formula"), [
    ("binomial_trials", "binomial", "cbind(sick, size - sick) ~ season + (1|farm)"),
    ("poisson_offset", "poisson", "birds ~ temp + offset(log(hours)) + (1|site)"),
])  # fmt: skip
def test_glmm_replicates_are_on_the_familys_support(entry, family, formula):
    _, df = beyond(entry)
    fit = _fit(formula, df, family)
    out = pp.prior_predictive(fit, replicates=80, seed=2)
    assert out.draws.shape == (80, len(df))
    if family == "binomial":
        size = df["size"].to_numpy(dtype=float)
        assert ((out.draws >= 0) & (out.draws <= 1)).all()
        np.testing.assert_allclose(out.draws * size, np.round(out.draws * size), atol=1e-9)  # successes / trials
        np.testing.assert_allclose(out.observed, df["sick"] / size)
    else:
        assert (out.draws >= 0).all() and (out.draws == np.round(out.draws)).all()
        np.testing.assert_array_equal(out.observed, df["birds"].to_numpy(dtype=float))


def test_prior_predictive_figure_by_structure(builtin):
    gaussian = _fit("testScore ~ bodyLength2 + (1|mountainRange)", builtin, name="mixed.lmer")
    _, df = beyond("poisson_offset")
    counts = _fit("birds ~ temp + offset(log(hours)) + (1|site)", df, "poisson", name="counts")
    made = {f.name: pp.prior_predictive(f, seed=3) for f in (gaussian, counts)}
    fig = plots_priors.prior_predictive_check([gaussian, counts], ci=0.9, draws=made)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["mixed.lmer", "counts"]
    for ax, name in zip(axes, made, strict=True):
        reps = made[name].draws.ravel()
        lo, hi = np.quantile(reps, [0.005, 0.995])
        bars = [line for line in ax.lines if len(line.get_xdata()) == 2 and line.get_ydata()[0] < 0]
        assert len(bars) == 4  # 99%, 90%, 50% and the observed range
        np.testing.assert_allclose(bars[0].get_xdata(), [lo, hi])  # the widest bar is the 99% interval
        np.testing.assert_allclose(bars[-1].get_xdata(), [made[name].observed.min(), made[name].observed.max()])
        x0, x1 = ax.get_xlim()
        assert x0 <= min(lo, made[name].observed.min()) and x1 >= hi  # the axis shows the whole width
        assert "prior predictive 90%:" in ax.texts[0].get_text()
    assert axes[0].get_xscale() == "linear" and axes[1].get_xscale() == "symlog"  # Bambi's log-link priors reach 1e9
    assert [t.get_text() for t in fig.legends[0].get_texts()][2] == "prior predictive 99%, 90%, 50% intervals"


def test_replicate_count_shrinks_with_the_data(builtin, monkeypatch):
    fit = _fit("testScore ~ bodyLength2 + (1|mountainRange)", builtin)
    monkeypatch.setattr(pp, "MAX_CELLS", 60 * len(builtin))
    assert pp.prior_predictive(fit).draws.shape[0] == 60
    monkeypatch.setattr(pp, "MAX_CELLS", 10 * len(builtin))
    assert pp.prior_predictive(fit).draws.shape[0] == 50  # never fewer than 50
