"""Figures of binomial and Poisson fits: DHARMa's residual plots, discrete predictive checks, the report.

Structure, not pixels: panels, lines, bars, colours and labels, each checked against numbers
computed here from the residuals. The per-figure tests use the point fits of
tests/test_glmm_checks.py (posteriors at a simulation's truth: no sampler); the report tests run
``bayeslmm fit`` end to end on tests/data/beyond's counts and yes/no data with small real fits
(marked slow).
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from bayeslmm.graphics import plots_glmm
from bayeslmm.graphics.plots import FREQ
from bayeslmm.intervals import eti
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import residuals
from conftest import BEYOND
from test_glmm_checks import COUNTS, TRUTH, counts_data, point_fit

SMALL = SamplerOptions(draws=200, tune=200, chains=2, seed=5)


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


@pytest.fixture(scope="module")
def right():
    df, u = counts_data()
    return point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u}, name="right")


@pytest.fixture(scope="module")
def overdispersed():
    df, u = counts_data(olre=0.6)
    return point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u}, name="overdispersed")


@pytest.fixture(scope="module")
def curved():
    df, u = counts_data(curve=0.5)
    return point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u}, name="curved")


def _texts(ax) -> dict[str, str]:
    return {t.get_text(): to_hex(t.get_color()) for t in ax.texts}


def test_qq_uniform_one_panel_per_fit_with_the_tests(right, overdispersed):
    fig = plots_glmm.qq_uniform([right, overdispersed])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["right (poisson)", "overdispersed (poisson)"]
    for ax, fit in zip(axes, (right, overdispersed), strict=True):
        res = residuals.simulate_residuals(fit)
        (points,) = ax.collections[1:]  # the band first, then the residuals
        np.testing.assert_allclose(points.get_offsets()[:, 1], np.sort(res.residuals))
        assert any(list(ln.get_xdata()) == [0, 1] and list(ln.get_ydata()) == [0, 1] for ln in ax.lines)
    ok, bad = _texts(axes[0]), _texts(axes[1])
    disp = residuals.dispersion_test(residuals.simulate_residuals(overdispersed))
    line = next(t for t in bad if t.startswith("dispersion"))
    assert line == f"dispersion: ratio {disp.statistic:.2f}, p < 0.004" and bad[line] == FREQ.lower()
    assert all(colour == "#000000" for colour in ok.values())  # nothing flagged in the right model
    # no simulation p-value reads "p = 0": one no replicate reached says "p < 1/replicates"
    assert not any(", p = 0" == t[-len(", p = 0"):] for t in [*ok, *bad])
    uni = residuals.uniformity_test(residuals.simulate_residuals(overdispersed))
    line = next(t for t in bad if t.startswith("uniformity"))
    assert line.endswith(residuals.format_p(uni.p_value, residuals.simulate_residuals(overdispersed).null.shape[0]))


def test_residuals_predicted_draws_the_binned_quantiles(right, curved):
    fig = plots_glmm.residuals_predicted([right, curved])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    for ax, fit in zip(axes, (right, curved), strict=True):
        res = residuals.simulate_residuals(fit)
        bins = residuals.quantile_bins(res.predicted)
        dashed = sorted(ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--")
        assert dashed == [0.25, 0.5, 0.75]
        solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
        assert len(solid) == 3
        medians = [np.median(res.residuals[bins == b]) for b in range(bins.max() + 1)]
        np.testing.assert_allclose(solid[1].get_ydata(), medians)
    right_lines = [to_hex(ln.get_color()) for ln in axes[0].lines if ln.get_linestyle() == "-"]
    curved_lines = [to_hex(ln.get_color()) for ln in axes[1].lines if ln.get_linestyle() == "-"]
    assert FREQ.lower() not in right_lines and FREQ.lower() in curved_lines  # the missing x^2 bends them
    assert "quantile test p" in axes[1].get_title() and to_hex(axes[1].title.get_color()) == FREQ.lower()


def test_ppc_counts_bars_are_the_datas_frequencies(right, overdispersed):
    fig = plots_glmm.ppc_counts([right, overdispersed])
    for ax, fit in zip([ax for ax in fig.axes if ax.get_visible()], (right, overdispersed), strict=True):
        res = residuals.simulate_residuals(fit)
        bars = ax.patches
        top = len(bars) - 1
        heights = np.array([b.get_height() for b in bars])
        expect = np.bincount(np.minimum(res.observed.astype(int), top), minlength=top + 1)
        np.testing.assert_array_equal(heights, expect)
        reps = np.array([np.bincount(np.minimum(r, top), minlength=top + 1) for r in res.replicated])
        lo, hi = eti(reps, 0.95)
        outside = (expect < lo) | (expect > hi)
        red = np.array([to_hex(b.get_facecolor()[:3]) == FREQ.lower() for b in bars])
        np.testing.assert_array_equal(red, outside)
        if max(res.observed.max(), res.replicated.max()) > top:
            assert ax.get_xticklabels()[-1].get_text() == f"{top}+"
    # the overdispersed counts spread wider than Poisson replicates: some values fall outside
    assert any(to_hex(b.get_facecolor()[:3]) == FREQ.lower() for b in fig.axes[1].patches)


def test_value_frequencies_pool_the_tail():
    obs, reps = plots_glmm.value_frequencies(np.array([0, 1, 1, 7]), np.array([[0, 0, 2, 3], [5, 1, 1, 1]]), 3)
    np.testing.assert_array_equal(obs, [1, 2, 0, 1])
    np.testing.assert_array_equal(reps, [[2, 0, 1, 1], [0, 3, 0, 1]])


def test_ppc_groups_counts_the_groups_outside(right, overdispersed):
    fig = plots_glmm.ppc_groups([right, overdispersed], "g", ci=0.9)
    for ax, fit in zip([ax for ax in fig.axes if ax.get_visible()], (right, overdispersed), strict=True):
        res = residuals.simulate_residuals(fit)
        labels = fit.data["g"].astype(str).to_numpy()
        obs = pd.Series(res.observed).groupby(labels).mean()
        reps = pd.DataFrame(res.replicated.T.astype(float)).groupby(labels).mean()  # levels x replicates
        lo, hi = eti(reps.to_numpy().T, 0.9)
        outside = int(((obs.to_numpy() < lo) | (obs.to_numpy() > hi)).sum())
        assert ax.get_title() == f"{fit.name}: {outside} of 40 outside"
        assert ax.get_ylabel() == "mean y per row" and len(ax.get_xticklabels()) == 40
        order = np.argsort(reps.mean(axis=1).to_numpy(), kind="stable")
        assert [t.get_text() for t in ax.get_xticklabels()] == list(obs.index[order])


def test_residual_figures_take_computed_residuals_and_refuse_gaussian_fits(right):
    res = residuals.simulate_residuals(right)
    fig = plots_glmm.qq_uniform([res])
    assert fig.axes[0].get_title() == "right (poisson)"
    df, u = counts_data()
    gaussian = point_fit("x ~ 1 + (1|g)", "gaussian", df, {"Intercept": 0.0, "sigma": 1.0}, {"g": 0.3}, {"g": u})
    with pytest.raises(ValueError, match="gaussian model"):
        plots_glmm.residuals_predicted(gaussian)


# ---------------------------------------------------------------------------------------
# Reports of GLMMs (real fits)
# ---------------------------------------------------------------------------------------


def _fit_report(data: str, formula: str, family: str, out):
    from bayeslmm.runner import fit_formula

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_formula(BEYOND / data, formula, family=family, out=out, options=SMALL,
                           run=RunOptions(progress=False), echo=lambda m: None)


@pytest.fixture(scope="module")
def counts_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("glmm") / "counts"
    return _fit_report("counts.csv", "birds ~ temp + offset(log(hours)) + (1|site)", "poisson", out)


@pytest.mark.slow
def test_a_poisson_report_has_the_glmm_figures_and_no_gaussian_ones(counts_report):
    names = {p.stem for p in (counts_report.out / "figures").glob("*.png")}
    assert {"qq_uniform", "residuals_predicted", "ppc_counts", "ppc_site", "population_lines_temp",
            "fitted_lines_model", "caterpillar_model", "prior_posterior_sd", "variance_partition",
            "shrinkage_site"} <= names
    assert not names & {"residuals_fitted", "qq_residuals", "ppc"}
    report = (counts_report.out / "report.md").read_text()
    assert "latent-scale variance" in report  # the GLMM's shares: against ln(1 + 1/mean count)
    assert all(f"figures/{n}.png" in report for n in names)
    assert "Not drawn:" in report and "No shrinkage plot" not in report
    assert "On the link scale (log of the mean birds): no pooling is each level's own maximum-likelihood" in report
    assert "**Residual checks**" in report and "rate ratio" in report and "birds / hours at temp = 1" in report


@pytest.mark.slow
def test_the_counts_are_overdispersed_and_the_run_says_to_add_obs(counts_report):
    """counts.csv was simulated with an observation-level sd of 0.3 (its README): without (1|obs) the run warns."""
    notes = [n for n in counts_report.report_notes if n.startswith("overdispersion")]
    assert len(notes) == 1 and "+ (1|obs)" in notes[0]
    assert notes[0] in (counts_report.out / "report.md").read_text()


@pytest.mark.slow
def test_tidy_stays_on_the_link_scale_and_ratios_are_its_exp(counts_report):
    tidy = pd.read_csv(counts_report.out / "tidy.csv")
    ratios = pd.read_csv(counts_report.out / "ratios.csv")
    bayes = tidy[(tidy["method"] == "bayes") & (tidy["term"] == "temp")].iloc[0]
    assert abs(bayes["estimate"] - 0.05) < 0.02  # the log rate per degree (truth 0.05), not a ratio near 1.05
    row = ratios[ratios["term"] == "temp"].iloc[0]
    assert row["scale"] == "rate ratio"
    np.testing.assert_allclose([row["post_conf_low"], row["post_conf_high"]],
                               np.exp([bayes["conf_low"], bayes["conf_high"]]), rtol=1e-12)
    assert row["post_median"] == pytest.approx(np.exp(bayes["estimate"]), rel=0.01)


@pytest.mark.slow
def test_a_yes_no_report(tmp_path):
    result = _fit_report("bernoulli.csv", "passed ~ hours + urban + (1|school)", "binomial", tmp_path / "yes_no")
    names = {p.stem for p in (result.out / "figures").glob("*.png")}
    assert {"qq_uniform", "residuals_predicted", "ppc_school", "pooled_regression", "response_histogram"} <= names
    assert not names & {"ppc_counts", "boxplot_school", "residuals_fitted"}  # nothing to count in 0s and 1s
    report = (result.out / "report.md").read_text()
    assert "odds ratio" in report and "P(success) at urbanyes = 1" in report
    assert "dispersion: not computed for a 0/1 response" in report
    assert "No boxplot or scatter of passed by school" in report
    assert not any(n.startswith(("overdispersion", "zero inflation")) for n in result.report_notes)
