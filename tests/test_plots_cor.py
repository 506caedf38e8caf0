"""Figures of correlated random effects: the 2-D shrinkage plot's ellipses and the correlations' priors.

Structure, not pixels, as in test_plots.py: the ellipses' geometry, arrows, legends, the curves'
areas and the interval bars' ends. The fits are real and small: slopes.csv (40 subjects x 10 days,
``reaction ~ day + (day|subject)``, simulated with correlation -0.5; tests/data/beyond/README.md) on
the marginal engine, 2 chains x 200 draws, once per session; lme4's side is bayeslmm's own lme4 port
(checked against R in test_lme4_beyond.py). Exact synthetic cases test the pieces that compute.
"""

from __future__ import annotations

import dataclasses
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.patches import Ellipse
from matplotlib.text import Annotation
from scipy import stats

from bayeslmm.engines.bayes import fit as bayes_fit
from bayeslmm.graphics import figures, plots_pooling
from bayeslmm.intervals import eti
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.model.priors import lkj_marginal
from bayeslmm.model.study import ModelSpec, Study
from bayeslmm.runner import Fitted
from bayeslmm.summary import analysis, predict
from bayeslmm.summary.tables import fixed_draws
from conftest import beyond

SMALL = SamplerOptions(draws=200, tune=200, chains=2, seed=3)
SUBJECTS = 40


def _fit(formula: str, df: pd.DataFrame, name: str = "model"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bayes_fit(parse(formula), df, SMALL, name=name, run=RunOptions(progress=False))


def _study(fit) -> Study:
    return Study(name="fit", title=fit.formula.text, description="", source="slopes.csv", data_object=None,
                 models=(ModelSpec(fit.name, fit.formula),))


@pytest.fixture(scope="session")
def slopes_data() -> pd.DataFrame:
    return beyond("slopes_correlated")[1]


@pytest.fixture(scope="session")
def correlated(slopes_data):
    """``reaction ~ day + (day|subject)`` on the marginal engine (a correlated 2 x 2 block)."""
    fit = _fit("reaction ~ day + (day|subject)", slopes_data)
    assert fit.engine == "marginal"
    return fit


@pytest.fixture(scope="session")
def uncorrelated(slopes_data):
    """``reaction ~ day + (day||subject)``: the same sds, no correlation (separate terms)."""
    return _fit("reaction ~ day + (day||subject)", slopes_data, name="uncorrelated")


@pytest.fixture(scope="session")
def side(correlated) -> pd.DataFrame:
    """lme4's REML fit with profile intervals beside the posterior (the report's side-by-side table)."""
    study, fits = _study(correlated), {correlated.name: correlated}
    freq = analysis.frequentist_fits(fits)
    return analysis.side_by_side_all(study, fits, freq, 0.9, analysis.profile_intervals(study, fits, freq, 0.9))


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def _arrows(ax) -> list[Annotation]:
    return [c for c in ax.get_children() if isinstance(c, Annotation) and c.arrow_patch is not None]


def _ellipses(ax) -> list[Ellipse]:
    return [p for p in ax.patches if isinstance(p, Ellipse)]


def _bars(ax) -> list:
    """The interval bars under the curves (horizontal two-point lines below 0), top to bottom."""
    return [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1] < 0]


def _legend(fig) -> tuple[list[str], str]:
    (lg,) = fig.legends
    return [t.get_text() for t in lg.get_texts()], lg.get_title().get_text()


# ---------------------------------------------------------------------------------------
# The pieces that compute
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "eta"), [(2, 1.0), (3, 2.0), (4, 0.7)])
def test_lkj_marginal_is_what_pymc_draws(k, eta):
    """One correlation of PyMC's LKJCorr(n = k, eta) follows Beta(eta - 1 + k/2, same) on (-1, 1)."""
    import pymc as pm

    draws = np.asarray(pm.draw(pm.LKJCorr.dist(n=k, eta=eta), draws=20000, random_seed=7))
    if draws.ndim == 3:  # PyMC 6 draws the Cholesky factor L of R = L L'; older PyMC drew R's upper triangle
        draws = (draws @ np.swapaxes(draws, 1, 2))[:, 1, 0]
    else:
        draws = draws[:, 0]
    prior = lkj_marginal(eta, k)
    assert stats.kstest(draws, prior.cdf).pvalue > 1e-3
    # The test has power: the k = 2 marginal (ignoring the block size) is rejected for k >= 3.
    if k > 2:
        assert stats.kstest(draws, lkj_marginal(eta, 2).cdf).pvalue < 1e-6
    grid = np.linspace(-1, 1, 20001)
    assert np.trapezoid(prior.pdf(grid), grid) == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(ValueError, match="eta > 0"):
        lkj_marginal(0.0, k)


def test_no_pooling_is_the_least_squares_of_the_full_no_pooling_design():
    """Frisch-Waugh level by level gives the coefficients of y ~ common + group + group:x (dense lstsq)."""
    rng = np.random.default_rng(4)
    n_levels = 6  # rows per level: 12, 12, 12, 1 (cannot fit a line), 3, 0
    pos = rng.permutation(np.repeat(np.arange(n_levels), [12, 12, 12, 1, 3, 0]))
    rows = pos.size
    x = rng.normal(size=rows)
    common = rng.normal(size=(rows, 2))
    y = rng.normal(size=rows)
    own = np.column_stack([np.ones(rows), x])
    got = plots_pooling.no_pooling(y, common, own, pos, n_levels)
    full = [common]
    for lv in range(n_levels):
        full.append(own * (pos == lv)[:, None])
    coef = np.linalg.lstsq(np.column_stack(full), y, rcond=None)[0][2:].reshape(n_levels, 2)
    ok = np.array([True, True, True, False, True, False])
    np.testing.assert_allclose(got[ok], coef[ok], atol=1e-10)
    assert np.isnan(got[~ok]).all()  # one row for two coefficients; no rows
    # One own column (the 1-D shrinkage table): the levels' intercepts of y ~ common + group.
    got1 = plots_pooling.no_pooling(y, common, np.ones(rows), pos, n_levels)[:, 0]
    dummies = (pos[:, None] == np.arange(n_levels)).astype(float)
    want = np.linalg.lstsq(np.column_stack([common, dummies]), y, rcond=None)[0][2:]
    has = np.bincount(pos, minlength=n_levels) > 0
    np.testing.assert_allclose(got1[has], want[has], atol=1e-10)


@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.8])
def test_population_ellipse_holds_its_mass_and_tilts_with_the_correlation(rho):
    cov = np.array([[4.0, rho * 2 * 0.5], [rho * 2 * 0.5, 0.25]])
    e = plots_pooling.population_ellipse((1.0, -2.0), cov, 0.9)
    # Points on the ellipse are at the chi2(2) 90% quantile of the Mahalanobis distance.
    t = np.linspace(0, 2 * np.pi, 50)
    a, b, th = e.width / 2, e.height / 2, np.radians(e.angle)
    pts = np.column_stack([a * np.cos(t), b * np.sin(t)]) @ np.array([[np.cos(th), np.sin(th)],
                                                                     [-np.sin(th), np.cos(th)]])
    d2 = np.einsum("ij,jk,ik->i", pts, np.linalg.inv(cov), pts)
    np.testing.assert_allclose(d2, stats.chi2.ppf(0.9, 2), rtol=1e-10)
    assert e.center == (1.0, -2.0) and e.width >= e.height
    assert np.sign(e.angle) == np.sign(rho) and -90 < e.angle <= 90


# ---------------------------------------------------------------------------------------
# The 2-D shrinkage plot
# ---------------------------------------------------------------------------------------


def test_shrinkage_table_2d_of_a_correlated_term(correlated, slopes_data):
    t = plots_pooling.shrinkage_table_2d(correlated, "subject")
    assert len(t) == SUBJECTS and t.notna().all().all()
    # No pooling: each subject's own least-squares line (the formula has no other covariate).
    for r in t.sample(5, random_state=1).itertuples():
        rows = slopes_data[slopes_data["subject"] == r.level]
        slope, intercept = np.polyfit(rows["day"], rows["reaction"], 1)
        assert (r.no_pooling_intercept, r.no_pooling_slope) == pytest.approx((intercept, slope), rel=1e-9)
    # The population covariance is the posterior mean of Sigma, draw by draw.
    s0, s1 = predict.param_draws(correlated, "1|subject_sigma"), predict.param_draws(correlated, "day|subject_sigma")
    r = predict.param_draws(correlated, "cor__(Intercept).day|subject")
    cov = plots_pooling.population_covariance(correlated, "subject", "(Intercept)", "day")
    np.testing.assert_allclose(cov, [[np.mean(s0**2), np.mean(r * s0 * s1)], [np.mean(r * s0 * s1), np.mean(s1**2)]])
    np.testing.assert_allclose(t[["sd_intercept", "sd_slope"]].iloc[0], np.sqrt(np.diag(cov)))
    assert t["cor"].iloc[0] < 0  # simulated -0.5; the posterior says clearly negative
    # Partial pooling pulls levels in: the partial-pooling points spread less than the own lines.
    assert t["partial_slope"].std() < t["no_pooling_slope"].std()
    assert t["partial_intercept"].std() < t["no_pooling_intercept"].std()


def test_shrinkage_2d_draws_the_tilted_population(correlated):
    fig = plots_pooling.shrinkage_2d(correlated, "subject", ci=0.9)
    (ax,) = fig.axes
    inner, outer = _ellipses(ax)
    assert -90 < inner.angle < 0 and outer.angle == pytest.approx(inner.angle)  # negative correlation
    ratio = np.sqrt(stats.chi2.ppf(0.9, 2) / stats.chi2.ppf(0.5, 2))
    assert (outer.width / inner.width, outer.height / inner.height) == pytest.approx((ratio, ratio))
    t = plots_pooling.shrinkage_table_2d(correlated, "subject")
    assert inner.center == pytest.approx((t["population_intercept"].iloc[0], t["population_slope"].iloc[0]))
    assert len(_arrows(ax)) == SUBJECTS and not [a for a in ax.texts if a.get_text()]  # 40 levels: no labels
    labels, title = _legend(fig)
    assert labels[-2:] == ["50% of the population of levels", "90% of the population of levels"]
    assert "posterior-mean covariance" in title and "correlation -0." in title
    assert ax.get_xlabel() == "intercept: reaction at day = 0" and ax.get_ylabel() == "slope of day"


def test_shrinkage_2d_of_an_uncorrelated_term_is_axis_aligned(uncorrelated):
    fig = plots_pooling.shrinkage_2d(uncorrelated, "subject")
    (ax,) = fig.axes
    angles = {e.angle for e in _ellipses(ax)}
    assert len(_ellipses(ax)) == 2 and angles <= {0.0, 90.0}
    assert "no correlation in the model: (day || subject)" in _legend(fig)[1]
    assert plots_pooling.correlations(uncorrelated) == []
    with pytest.raises(ValueError, match="no random slope of 'week'"):
        plots_pooling.shrinkage_2d(uncorrelated, "subject", "week")


def test_shrinkage_2d_picks_the_slope_asked_for():
    """A (1 + x + z|g) block: the z figure shows z's own slopes, its sd and the (Intercept, z) correlation."""
    rng = np.random.default_rng(8)
    levels, per = 30, 12
    g = np.repeat(np.arange(levels), per)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    u = rng.normal(size=(levels, 3)) * [1.0, 0.2, 1.5]
    y = 1 + 0.5 * x - 2 * z + u[g, 0] + u[g, 1] * x + u[g, 2] * z + rng.normal(size=g.size) * 0.5
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": pd.Categorical([f"g{i:02d}" for i in g])})
    fit = _fit("y ~ x + z + (1 + x + z|g)", df)
    assert [c[1:3] for c in plots_pooling.correlations(fit)] == [("(Intercept)", "x"), ("(Intercept)", "z"),
                                                                   ("x", "z")]
    tx = plots_pooling.shrinkage_table_2d(fit, "g")  # the first slope by default
    tz = plots_pooling.shrinkage_table_2d(fit, "g", "z")
    own = np.linalg.lstsq(np.column_stack([np.ones(per), x[g == 3], z[g == 3]]), y[g == 3], rcond=None)[0]
    assert (tx["no_pooling_slope"][3], tz["no_pooling_slope"][3]) == pytest.approx((own[1], own[2]), rel=1e-9)
    np.testing.assert_allclose(tz["sd_slope"].iloc[0], np.sqrt(np.mean(predict.param_draws(fit, "z|g_sigma") ** 2)))
    cov = plots_pooling.population_covariance(fit, "g", "(Intercept)", "z")
    assert tz["cor"].iloc[0] == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    for t, slope in ((tx, "x"), (tz, "z")):  # each table's population slope is its own fixed slope
        assert t["population_slope"].iloc[0] == pytest.approx(fixed_draws(fit, slope).mean())
    fig = plots_pooling.shrinkage_2d(fit, "g", "z")
    assert fig.axes[0].get_ylabel() == "slope of z" and fig.axes[0].get_xlabel() == "intercept: y at x, z = 0"


def test_shrinkage_2d_at_many_levels_is_one_collection_without_labels():
    """300 levels: the no-pooling -> partial-pooling moves are one LineCollection, not 300 arrows."""
    rng = np.random.default_rng(9)
    levels, per = 300, 6
    g = np.repeat(np.arange(levels), per)
    x = rng.normal(size=g.size)
    u = rng.multivariate_normal([0, 0], [[1, 0.3], [0.3, 0.25]], size=levels)
    df = pd.DataFrame({"y": 2 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=g.size), "x": x,
                       "g": pd.Categorical([f"g{i:03d}" for i in g])})
    fit = _fit("y ~ x + (1 + x|g)", df)
    fig = plots_pooling.shrinkage_2d(fit, "g")
    (ax,) = fig.axes
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == levels and not _arrows(ax)
    assert not [a for a in ax.texts if a.get_text()] and len(_ellipses(ax)) == 2
    assert 0 < _ellipses(ax)[0].angle < 90  # positive correlation
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 2 and max(c.get_sizes().max() for c in points) < 15  # small points


# ---------------------------------------------------------------------------------------
# Correlations: prior against posterior
# ---------------------------------------------------------------------------------------


def test_prior_posterior_cor(correlated, uncorrelated, side):
    fig = plots_pooling.prior_posterior_cor([correlated, uncorrelated], side, ci=0.9)
    (ax,) = [a for a in fig.axes if a.get_visible()]  # the uncorrelated model has no correlation
    assert ax.get_title() == "subject: correlation of the (Intercept) and day effects"
    prior, post = ax.lines[0], ax.lines[1]
    for line in (prior, post):  # both curves are densities on (-1, 1)
        assert np.trapezoid(line.get_ydata(), line.get_xdata()) == pytest.approx(1.0, abs=0.01)
        assert tuple(line.get_xdata()[[0, -1]]) == (-1.0, 1.0)
    np.testing.assert_allclose(prior.get_ydata(), 0.5)  # LKJ(1) on a 2 x 2 block: uniform
    draws = predict.param_draws(correlated, "cor__(Intercept).day|subject")
    bars = _bars(ax)
    ends = [tuple(b.get_xdata()) for b in bars]
    assert ends[0] == pytest.approx(tuple(lkj_marginal(1.0, 2).ppf([0.05, 0.95])))
    assert ends[1] == pytest.approx(tuple(float(v) for v in eti(draws, 0.9)))
    reml = side[(side["term"] == "cor__(Intercept).day")].iloc[0]
    assert reml["lme4_ci"] == "profile" and reml["lme4_method"] == "reml"
    assert ends[2] == pytest.approx((reml["lme4_conf_low"], reml["lme4_conf_high"]))
    labels, _ = _legend(fig)
    assert "lme4 REML: estimate and 90% profile interval" in labels
    assert "posterior: mean and 90% interval (equal-tailed)" in labels and "90%" in fig.get_suptitle()
    with pytest.raises(ValueError, match="no correlated random effects"):
        plots_pooling.prior_posterior_cor(uncorrelated)


def test_prior_curve_follows_the_recorded_eta(correlated):
    """The prior drawn is the fit's own LKJ(eta): a fit recorded with LKJ(eta=3) gets Beta(3, 3)."""
    assert plots_pooling.cor_prior_eta(correlated, "subject") == 1.0
    fit = dataclasses.replace(correlated, priors={**correlated.priors, "cor(subject)": "LKJ(eta=3)"})
    fig = plots_pooling.prior_posterior_cor(fit)
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), stats.beta(3, 3).pdf((line.get_xdata() + 1) / 2) / 2)
    assert len(_bars(fig.axes[0])) == 2  # prior and posterior; no lme4 rows given
    with pytest.raises(ValueError, match="no LKJ prior"):
        plots_pooling.cor_prior_eta(correlated, "item")


# ---------------------------------------------------------------------------------------
# The report's figures for a correlated model
# ---------------------------------------------------------------------------------------


def test_make_figures_for_a_correlated_model(correlated, slopes_data, side, tmp_path):
    result = Fitted(_study(correlated), slopes_data, {correlated.name: correlated})
    tidy = correlated.tidy(0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = figures.make_figures(result, tmp_path, tidy, ci=0.9, side=side)
    captions = {img.path.split("/")[-1].removesuffix(".png"): img.caption for img in images}
    assert {"shrinkage_2d_model_subject", "prior_posterior_cor", "prior_posterior_sd"} <= set(captions)
    assert "50% and 90%" in captions["shrinkage_2d_model_subject"] and "90%" in captions["prior_posterior_cor"]
    assert not any("95%" in c for c in captions.values())
    assert all((tmp_path / img.path).is_file() for img in images)
    # Without the side-by-side table, lme4's estimate comes from the tidy table's REML rows (no interval).
    fits = {correlated.name: correlated}
    both = analysis.tidy_all(fits, analysis.frequentist_fits(fits), 0.9)
    fig = plots_pooling.prior_posterior_cor(correlated, figures._lme4_rows(both, None), ci=0.9)
    reml = both[(both["method"] == "reml") & (both["term"] == "cor__(Intercept).day")]["estimate"].item()
    dots = [ln for ln in fig.axes[0].lines if len(ln.get_xdata()) == 1]  # prior, posterior, lme4
    assert len(_bars(fig.axes[0])) == 2 and len(dots) == 3 and dots[-1].get_xdata()[0] == reml  # a dot, no bar
    assert "lme4 REML: estimate (no interval)" in _legend(fig)[0]
