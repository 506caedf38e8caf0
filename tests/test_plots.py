"""Figures and the predictions behind them, on small seeded fits of the built-in data.

Structure, not pixels: axes, titles, labels, lines, collections, arrows and legend entries. The
fits are tiny (2 chains x 150 draws): enough for every figure to have something to draw, not for
accurate posteriors. The whole study is run once per session through ``runner.run_study`` (which
calls ``figures.make_figures``; conftest's ``study_run``, shared with test_cli.py) and its fits are
reused by the per-figure tests.
"""

from __future__ import annotations

import hashlib
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from matplotlib.text import Annotation
from PIL import Image

from bayeslmm.engines.bayes import build_model
from bayeslmm.engines.bayes import fit as bayes_fit
from bayeslmm.graphics import figures, plots, plots_checks, plots_pooling
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import predict
from bayeslmm.summary.tables import fixed_draws, sd_draws, variance_partition_draws

SMALL = SamplerOptions(draws=150, tune=200, chains=2, seed=11)
RANGES = 8
SITES = 24


@pytest.fixture(scope="module")
def run(study_run):
    """The dragons study run end to end on the built-in data with tiny fits (conftest.STUDY_RUN)."""
    return study_run


@pytest.fixture(scope="module")
def fits(run):
    return run.fits


@pytest.fixture(scope="module")
def slopes(builtin, tmp_path_factory):
    """A random-slope model (independent intercept and slope per range) for the 2-D shrinkage plot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bayes_fit(parse("testScore ~ bodyLength2 + (1 + bodyLength2|mountainRange)"), builtin, SMALL,
                         name="slopes.lmer", run=RunOptions(progress=False))


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    """Every plotting function builds its Figure outside pyplot: nothing is left open."""
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def _visible(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def _arrows(ax) -> list[Annotation]:
    return [c for c in ax.get_children() if isinstance(c, Annotation) and c.arrow_patch is not None]


# ---------------------------------------------------------------------------------------
# predict: the linear predictor rebuilt from the posterior
# ---------------------------------------------------------------------------------------


def test_linear_predictor_matches_bambi(fits):
    fit = fits["mixed.lmer2"]
    model = build_model(fit.formula, fit.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = model.predict(fit.idata.copy(), kind="response_params", inplace=False)
    mu = idata["posterior"]["mu"].transpose("chain", "draw", "__obs__").values.reshape(-1, len(fit.data))
    np.testing.assert_allclose(predict.linear_predictor(fit), mu, atol=1e-9)


def test_linear_predictor_on_new_rows_and_population_level(fits):
    fit = fits["mountain.lm"]  # a factor fixed effect: new rows must get the fit's dummy columns
    rows = fit.data.sample(17, random_state=2)
    new = predict.linear_predictor(fit, rows.drop(columns="testScore"), max_draws=40)
    same = predict.linear_predictor(fit, max_draws=40)[:, rows.index.to_numpy()]
    np.testing.assert_allclose(new, same)
    assert new.shape == (40, 17)
    mixed = fits["mixed.lmer"]
    grid = pd.DataFrame({"bodyLength2": [0.0, 1.0]})
    pop = predict.linear_predictor(mixed, grid, groups=())
    np.testing.assert_allclose(pop[:, 1] - pop[:, 0], fixed_draws(mixed, "bodyLength2"))
    with pytest.raises(ValueError, match="not in the fitted data"):
        predict.linear_predictor(mixed, pd.DataFrame({"bodyLength2": [0.0], "mountainRange": ["Atlantis"]}))


def test_residuals_ppc_and_variance_shares(fits):
    fit = fits["mixed.lmer2"]
    res = predict.residuals(fit)
    assert res.shape == (len(fit.data),) and abs(res.mean()) < 2
    reps = predict.posterior_predictive(fit, 30, seed=1)
    assert reps.shape == (30, len(fit.data))
    np.testing.assert_array_equal(reps, predict.posterior_predictive(fit, 30, seed=1))
    shares = variance_partition_draws(fit)
    assert list(shares) == ["mountainRange", "sample", "Residual"]
    np.testing.assert_allclose(sum(shares.values()), 1.0)
    assert list(sd_draws(fit)) == [("mountainRange", "sd__(Intercept)"), ("sample", "sd__(Intercept)"),
                                   ("Residual", "sd__Observation")]


# ---------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------


def test_data_figures(builtin, fits):
    fig = plots.response_histogram(builtin, "testScore", bins=25)
    (ax,) = fig.axes
    assert len(ax.patches) == 25 and "testScore" in ax.get_title() and ax.get_xlabel() == "testScore"

    draws = {"(Intercept)": fixed_draws(fits["basic.lm"], "(Intercept)"),
             "bodyLength2": fixed_draws(fits["basic.lm"], "bodyLength2")}
    fig = plots.pooled_regression(builtin, "bodyLength2", "testScore", draws)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("bodyLength2", "testScore")
    assert len(ax.lines) == 1 and any(isinstance(c, PolyCollection) for c in ax.collections)
    assert len(_legend_texts(fig)) == 3

    fig = plots.group_boxplot(builtin, "testScore", "mountainRange")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(builtin["mountainRange"].cat.categories)

    fig = plots.group_scatter(builtin, "bodyLength2", "testScore", "mountainRange")
    assert len(fig.axes[0].collections) == RANGES and len(_legend_texts(fig)) == RANGES

    fig = plots.group_facets(builtin, "bodyLength2", "testScore", "mountainRange")
    axes = _visible(fig)
    assert len(axes) == RANGES and all(len(ax.lines) == 1 for ax in axes)
    assert "no pooling" in fig.get_suptitle()
    assert {ax.get_xlabel() for ax in axes} == {"", "bodyLength2"}


# ---------------------------------------------------------------------------------------
# Estimates across models, any method
# ---------------------------------------------------------------------------------------


def test_forest_mixes_methods(run, study):
    order = [m.name for m in study.models]
    bayes = run.tidy[run.tidy["method"] == "bayes"]
    fig = plots.forest(bayes, "bodyLength2", models=order)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [m for m in order if m != "reduced.lmer"][::-1]
    with_term = len(labels)  # every model but reduced.lmer has bodyLength2
    assert len(ax.lines) == 2 * with_term + 1  # interval + dot per model, the zero line
    assert len(ax.texts) == with_term  # each estimate written out
    # The report's table also holds lme4's rows (OLS, REML, ML): a dot and interval each, one legend entry each.
    fig = plots.forest(run.tidy, "bodyLength2", models=order)
    fixed_rows = ((run.tidy["term"] == "bodyLength2") & (run.tidy["effect"] == "fixed")).sum()
    assert len(fig.axes[0].lines) == 2 * fixed_rows + 1
    assert _legend_texts(fig)[0] == "Bayesian: posterior mean, 95% interval" and len(_legend_texts(fig)) == 4
    # Rows without intervals (as lme4's sds in broom.mixed's tidy): a dot only, and the legend says so.
    reml = bayes.assign(method="reml", conf_low=np.nan, conf_high=np.nan)
    both = pd.concat([bayes, reml], ignore_index=True)
    fig = plots.forest_sd(both, models=order, response="testScore")
    axes = fig.axes
    assert [ax.get_title(loc="left").split(" (")[0] for ax in axes] == [
        "sd of the mountainRange effects", "sd of the site effects", "sd of the sample effects", "residual sd"]
    assert len(axes[1].lines) == 1 + 2  # mixed.WRONG: Bayesian interval and dot, REML dot
    assert _legend_texts(fig) == ["Bayesian: posterior mean, 95% interval", "lme4 REML: estimate"]
    assert axes[-1].get_xlabel() == "standard deviation (units of testScore)"


# ---------------------------------------------------------------------------------------
# Checks of each model
# ---------------------------------------------------------------------------------------


def test_residuals_qq_and_ppc_grids(fits, builtin):
    chosen = [fits["basic.lm"], fits["mixed.lmer"], fits["mixed.lmer2"]]
    fig = plots_checks.residuals_vs_fitted(chosen, colour_by="mountainRange", data=builtin)
    assert _titles(fig) == ["basic.lm", "mixed.lmer", "mixed.lmer2"]
    for ax in _visible(fig):
        assert len(ax.lines) == 2 and ax.collections[0].get_offsets().shape == (len(builtin), 2)
        assert ax.get_xlabel() == "fitted value (posterior mean)"
    assert len(_legend_texts(fig)) == 2 + RANGES

    fig = plots_checks.qq_residuals(chosen)
    assert len(_visible(fig)) == 3 and _visible(fig)[0].get_ylabel() == "residual"
    assert all(ax.get_xlabel() == "theoretical normal quantile" for ax in _visible(fig))

    fig = plots_checks.ppc(chosen, n=20)
    for ax in _visible(fig):
        assert len(ax.lines) == 21  # 20 replicates and the observed density
    assert _legend_texts(fig) == ["observed data", "20 data sets replicated from the posterior"]

    # a score piled up at its bounds (the real data's 0s and 100s): histograms, the range marked, the share outside
    import dataclasses

    fit = fits["mixed.lmer2"]
    clipped = dataclasses.replace(fit, data=fit.data.assign(testScore=fit.data["testScore"].clip(30, 60)))
    assert plots_checks.piled_up(clipped.data["testScore"]) and not plots_checks.piled_up(fit.data["testScore"])
    (ax,) = _visible(plots_checks.ppc([clipped], n=20))
    # the observed histogram; the 20 replicates' outlines in one collection; the two bounds
    assert len(ax.patches) == 1 and len(ax.lines) == 2
    (reps,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(reps.get_segments()) == 20
    heights = np.array([seg[1:-1:2, 1] for seg in reps.get_segments()])  # each outline's bar heights
    width = np.diff(reps.get_segments()[0][::2, 0])
    assert np.allclose(heights @ width, 1)  # densities: each replicate's histogram has area 1
    assert [ln.get_xdata()[0] for ln in ax.lines] == [30, 60]
    assert "% of replicated values outside the observed [30, 60]" in ax.texts[0].get_text()


def test_fitted_lines_per_site_and_population_lines(fits, builtin):
    fig = plots_checks.group_lines(fits["mixed.lmer2"], builtin, "bodyLength2", "mountainRange", "site")
    axes = _visible(fig)
    assert len(axes) == RANGES and _titles(fig) == list(builtin["mountainRange"].cat.categories)
    assert all(len(ax.lines) == 3 for ax in axes)  # one line per site
    assert _legend_texts(fig) == ["a", "b", "c"] and "mixed.lmer2" in fig.get_suptitle()

    fig = plots_checks.population_lines([fits["basic.lm"], fits["mixed.lmer2"]], builtin, "bodyLength2")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and sum(isinstance(c, PolyCollection) for c in ax.collections) == 2
    assert len(_legend_texts(fig)) == 3  # observations and the two lines
    with pytest.raises(ValueError, match="population line"):
        plots_checks.population_lines(fits["mountain.lm"], builtin, "bodyLength2")


# ---------------------------------------------------------------------------------------
# Partial pooling
# ---------------------------------------------------------------------------------------


def test_shrinkage_table_pulls_levels_towards_their_target(fits):
    t = plots_pooling.shrinkage_table(fits["mixed.lmer2"], "sample")
    assert len(t) == SITES and (t["n"] == 20).all()
    assert t["no_pooling"].is_monotonic_increasing
    closer = (t["partial"] - t["target"]).abs() < (t["no_pooling"] - t["target"]).abs()
    assert closer.mean() >= 0.8
    # A site is pulled towards its own range, not towards the grand mean: 8 distinct targets.
    assert t["target"].round(6).nunique() == RANGES
    # A range, the top level, is pulled towards the one population intercept, not plus its own sites' effects
    top = plots_pooling.shrinkage_table(fits["mixed.lmer2"], "mountainRange")
    assert top["target"].round(9).nunique() == 1
    assert top["target"].iloc[0] == pytest.approx(top["population"].iloc[0], rel=1e-12)


def test_shrinkage_figure(fits):
    fig = plots_pooling.shrinkage(fits["mixed.lmer2"], "mountainRange")
    (ax,) = fig.axes
    assert len(_arrows(ax)) == RANGES and len(ax.collections) >= 3  # intervals, two kinds of points
    assert len(ax.get_yticklabels()) == RANGES and ax.get_ylabel() == "mountainRange"
    assert ax.get_xlabel().startswith("testScore at bodyLength2 = 0")
    assert len(_legend_texts(fig)) == 4 and "mountainRange" in ax.get_title()
    # a top-level factor shrinks towards one value, the population intercept: one line, not a tick per level
    population = plots_pooling.shrinkage_table(fits["mixed.lmer2"], "mountainRange")["population"].iloc[0]
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-" and len(set(ln.get_xdata())) == 1]
    assert [ln.get_xdata()[0] for ln in solid] == [pytest.approx(population)]
    assert not [ln for ln in ax.lines if ln.get_marker() == "|"]
    assert "population intercept" in _legend_texts(fig)[2]
    sites = plots_pooling.shrinkage(fits["mixed.lmer2"], "sample").axes[0]  # nested: a tick at each site's range
    (ticks,) = [ln for ln in sites.lines if ln.get_marker() == "|"]
    assert len(ticks.get_xdata()) == SITES
    with pytest.raises(ValueError, match="no random term"):
        plots_pooling.shrinkage(fits["basic.lm"], "mountainRange")


def test_shrinkage_2d_for_random_slopes(slopes):
    t = plots_pooling.shrinkage_table_2d(slopes, "mountainRange")
    assert len(t) == RANGES and t[["no_pooling_slope", "partial_slope"]].notna().all().all()
    fig = plots_pooling.shrinkage_2d(slopes, "mountainRange")
    (ax,) = fig.axes
    assert len(_arrows(ax)) == RANGES
    assert sum(isinstance(p, Ellipse) for p in ax.patches) == 2
    assert ax.get_ylabel() == "slope of bodyLength2" and len(_legend_texts(fig)) == 7
    assert {a.get_text() for a in ax.texts if a.get_text()} == set(t["level"])


def test_caterpillar(fits, slopes):
    fig = plots_pooling.caterpillar(fits["mixed.lmer2"])
    assert [len(ax.get_yticklabels()) for ax in fig.axes] == [RANGES, SITES]
    assert [ax.get_ylabel() for ax in fig.axes] == ["mountainRange", "sample"]
    fig = plots_pooling.caterpillar(slopes)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "mountainRange: intercept effects (8 levels)", "mountainRange: slope of bodyLength2 effects (8 levels)"]


def test_variance_partition(fits):
    chosen = [fits["basic.lm"], fits["mixed.lmer"], fits["mixed.WRONG"], fits["mixed.lmer2"]]
    fig = plots_pooling.variance_partition(chosen)
    assert _titles(fig) == ["mountainRange", "site", "sample", "residual"]
    counts = [len(ax.lines) for ax in _visible(fig)]
    assert counts == [3 * 3 + 1, 3 + 1, 3 + 1, 3 * 3 + 1]  # curve, interval, mean per model; baseline
    assert _legend_texts(fig) == ["mixed.lmer", "mixed.WRONG", "mixed.lmer2"]  # basic.lm has no groups
    # lme4's shares as crosses on each model's row (variance_partition.csv's lme4_share)
    fig = plots_pooling.variance_partition(chosen, lme4={("mixed.lmer", "mountainRange"): 0.54,
                                                         ("mixed.lmer", "Residual"): 0.46})
    crosses = [ln for ax in _visible(fig) for ln in ax.lines if ln.get_marker() == "x"]
    assert sorted(float(ln.get_xdata()[0]) for ln in crosses) == [0.46, 0.54]
    assert _legend_texts(fig)[-1] == "lme4's share"


def test_prior_against_posterior(fits):
    """Exact priors: the same prior gives the same interval in every panel (the Monte Carlo quantiles of old
    differed), and the interval printed is the distribution's own."""
    from bayeslmm.engines.prior_density import sd_priors

    fit = fits["mixed.lmer2"]
    prior = sd_priors(fit)
    assert set(prior) == set(sd_draws(fit))
    fig = plots_pooling.prior_posterior_sd(fit, prior)
    assert _titles(fig) == ["sd of mountainRange (Intercept) (8 levels)", "sd of sample (Intercept) (24 levels)",
                            "residual sd (480 rows)"]
    assert all(ax.get_xlabel() == "standard deviation (testScore)" for ax in _visible(fig))
    assert _legend_texts(fig) == ["prior (exact density)", "posterior"]
    texts = [t.get_text().splitlines()[1] for ax in _visible(fig) for t in ax.texts]
    lo, hi = prior[("mountainRange", "sd__(Intercept)")].ppf([0.025, 0.975])
    assert texts[0] == f"prior 95%: {lo:.1f} to {hi:.1f}"
    assert texts[0] == texts[1]  # both groups' sds have the same prior (Bambi's HalfNormal of the same scale)
    assert texts[2] != texts[0]  # the residual's is a half-Student-t


# ---------------------------------------------------------------------------------------
# The interval mass (--ci) reaches every figure
# ---------------------------------------------------------------------------------------


def _band(ax, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, lower and upper edge of the one fill_between band of ``ax`` over ``n`` points."""
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    v = band.get_paths()[0].vertices  # start, lower edge forward, end, upper edge backward, close
    return v[1:n + 1, 0], v[1:n + 1, 1], v[n + 2:2 * n + 2, 1][::-1]


def test_bands_and_legends_follow_ci(fits, builtin, run):
    x = "bodyLength2"
    fit = fits["mixed.lmer2"]
    fig = plots_checks.population_lines([fit], builtin, x, ci=0.9)
    grid = pd.DataFrame({x: np.linspace(float(builtin[x].min()), float(builtin[x].max()), 60)})
    eta = predict.linear_predictor(fit, grid, groups=(), max_draws=1000)
    xs, lo, hi = _band(fig.axes[0], 60)
    np.testing.assert_allclose(xs, grid[x])
    np.testing.assert_allclose(np.stack([lo, hi]), np.quantile(eta, [0.05, 0.95], axis=0), rtol=1e-12)
    s_lo, s_hi = np.quantile(fixed_draws(fit, x), [0.05, 0.95])
    assert fig.legends[0].get_title().get_text() == "posterior mean and 90% credible band"
    assert _legend_texts(fig)[-1].endswith(f"[{s_lo:.2f}, {s_hi:.2f}]")

    pooled = fits["basic.lm"]
    draws = {"(Intercept)": fixed_draws(pooled, "(Intercept)"), x: fixed_draws(pooled, x)}
    fig = plots.pooled_regression(builtin, x, "testScore", draws, ci=0.9)
    xs, lo, hi = _band(fig.axes[0], 100)
    lines = draws["(Intercept)"][:, None] + draws[x][:, None] * xs[None, :]
    np.testing.assert_allclose(np.stack([lo, hi]), np.quantile(lines, [0.05, 0.95], axis=0), rtol=1e-12)
    assert "90% credible band of the line" in _legend_texts(fig)

    fig = plots.forest(run.tidy[run.tidy["method"] == "bayes"], x, ci=0.9)
    assert _legend_texts(fig) == ["Bayesian: posterior mean, 90% interval"]


def test_make_figures_passes_ci_to_every_figure(run, tmp_path):
    """``report.write`` hands ``--ci`` to ``make_figures``: every caption that names an interval says 90%."""
    tidy = pd.concat([f.tidy(0.9) for f in run.fits.values()], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = figures.make_figures(run, tmp_path, tidy, ci=0.9)
    captions = {img.path.split("/")[-1].removesuffix(".png"): img.caption for img in images}
    with_intervals = ["pooled_regression", "population_lines_bodyLength2", "forest_bodyLength2", "forest_sd",
                      "fitted_lines_mixed.lmer2", "shrinkage_mountainRange", "caterpillar_mixed.lmer2",
                      "variance_partition", "prior_posterior_sd", "prior_predictive"]
    for name in with_intervals:
        assert "90%" in captions[name], name
    assert not any("95%" in c for c in captions.values())


# ---------------------------------------------------------------------------------------
# The report's figures
# ---------------------------------------------------------------------------------------


def test_report_writes_at_least_12_distinct_wide_figures(run):
    pngs = sorted((run.out / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert len(pngs) >= 12
    assert {"response_histogram", "pooled_regression", "boxplot_mountainRange", "scatter_mountainRange",
            "facets_mountainRange", "forest_bodyLength2", "forest_sd", "residuals_fitted", "qq_residuals", "ppc",
            "fitted_lines_mixed.lmer2", "shrinkage_mountainRange", "shrinkage_sample", "caterpillar_mixed.lmer2",
            "variance_partition", "prior_posterior_sd", "prior_predictive"} <= names
    for p in pngs:
        assert Image.open(p).size[0] >= 800, p.name
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs}) == len(pngs)
    report = (run.out / "report.md").read_text()
    assert all(f"figures/{p.name}" in report for p in pngs)


def test_main_model_and_distinct_fits(run):
    assert figures.main_model(run) == "mixed.lmer2"
    names = [f.name for f in figures.distinct_fits(run)]
    assert names == ["basic.lm", "mountain.lm", "mixed.lmer", "mixed.WRONG", "mixed.lmer2 = full.lmer",
                     "reduced.lmer", "slopes.lmer"]


def test_kde_is_the_gaussian_kernel_density_with_scotts_bandwidth():
    """The binned, convolved density of the PPC panels against scipy's exact sum of kernels (same bandwidth:
    Scott's sd * n^(-1/5)); binning at 1/50 of a bandwidth moves it by well under 1% of its peak."""
    from scipy.stats import gaussian_kde

    from bayeslmm.graphics.plots_checks import kde

    x = np.random.default_rng(5).gamma(3.0, size=4000)
    grid = np.linspace(-1, 14, 256)
    exact = gaussian_kde(x, bw_method="scott")(grid)
    assert np.max(np.abs(kde(x, grid) - exact)) < 0.005 * exact.max()
    # reflected at a bound of the support: no mass below it, all of it above
    bounded = kde(x, np.linspace(0, 14, 256), lower=0.0)
    assert bounded.sum() * (14 / 255) == pytest.approx(1.0, abs=0.01)
