"""The report at scale (issue 15): per-level figures draw a labelled sample, LOO a subsample of rows.

The thresholds are passed (or patched) small, so the built-in dragons study's tiny fits (conftest's
``study_run``: 480 rows, 8 ranges, 24 sites) exercise what triggers at thousands of levels or rows;
at the defaults nothing of it touches the dragons report.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arviz_stats.utils import ELPDDataLOOSubsample

from bayeslmm.graphics import figures, plots, plots_checks, plots_pooling
from bayeslmm.reporting import report
from bayeslmm.reporting.document import to_markdown
from bayeslmm.summary import compare


@pytest.fixture(scope="module")
def fits(study_run):
    return study_run.fits


def _ytick_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def test_level_sample_keeps_both_ends_and_a_seeded_random_middle():
    key = np.random.default_rng(1).normal(size=500)
    shown, note = plots.level_sample(key, ("highest", "lowest"), max_levels=30)
    assert shown.size == 30 and np.all(np.diff(shown) > 0)  # sorted, no repeats
    order = np.argsort(key)
    assert set(order[-5:]) <= set(shown) and set(order[:5]) <= set(shown)  # 30 // 6 = 5 at each end
    assert note == "30 of 500 levels: the 5 highest, the 5 lowest and 20 drawn at random (seed 0)"
    assert note == plots.sample_note(500, ("highest", "lowest"), max_levels=30)  # the caption's words
    again, _ = plots.level_sample(key, ("highest", "lowest"), max_levels=30)
    np.testing.assert_array_equal(shown, again)  # seeded: the same levels in every run
    other, _ = plots.level_sample(key, ("highest", "lowest"), max_levels=30, seed=1)
    assert not np.array_equal(shown, other)
    everything, none = plots.level_sample(key[:30], ("highest", "lowest"), max_levels=30)
    np.testing.assert_array_equal(everything, np.arange(30))
    assert none == "" and plots.sample_note(30, ("a", "b"), max_levels=30) == ""


def test_shrinkage_draws_a_labelled_sample_with_the_most_and_least_shrunk(fits):
    fit = fits["mixed.lmer2"]
    table = plots_pooling.shrinkage_table(fit, "sample")
    assert len(table) == 24
    fig = plots_pooling.shrinkage(fit, "sample", max_levels=12)
    (ax,) = fig.axes
    labels = _ytick_labels(ax)
    assert len(labels) == 12
    moved = (table["no_pooling"] - table["partial"]).abs()
    assert set(table["level"][moved.nlargest(2).index]) <= set(labels)  # 12 // 6 = 2 at each end
    assert set(table["level"][moved.nsmallest(2).index]) <= set(labels)
    kept = table[table["level"].isin(labels)]
    assert labels == list(kept["level"])  # still in the no-pooling order
    assert "12 of 24 levels: the 2 most shrunk, the 2 least shrunk and 8 drawn at random (seed 0)" in ax.get_title()
    whole = plots_pooling.shrinkage(fit, "sample")  # at the default threshold: every level, as before
    assert len(_ytick_labels(whole.axes[0])) == 24 and "drawn at random" not in whole.axes[0].get_title()


def test_caterpillar_samples_each_panel_with_many_levels(fits):
    fig = plots_pooling.caterpillar(fits["mixed.lmer2"], max_levels=6)
    ranges, samples = fig.axes
    assert len(_ytick_labels(ranges)) == 6 and len(_ytick_labels(samples)) == 6
    assert "6 of 8 levels" in ranges.get_title(loc="left") and "6 of 24 levels" in samples.get_title(loc="left")
    from bayeslmm.summary import predict

    levels, u = predict.group_effect_draws(fits["mixed.lmer2"], "sample")
    means = u.mean(axis=0)
    shown = _ytick_labels(samples)
    assert shown[0] == levels[int(np.argmin(means))] and shown[-1] == levels[int(np.argmax(means))]
    assert [means[levels.index(lv)] for lv in shown] == sorted(means[levels.index(lv)] for lv in shown)


def test_boxplot_samples_its_levels(builtin):
    fig = plots.group_boxplot(builtin, "testScore", "sample", max_levels=6)
    (ax,) = fig.axes
    assert len(ax.get_xticklabels()) == 6
    assert "6 of 24 levels: the 1 highest medians" in ax.get_title()


def test_residual_smooth_goes_through_a_sample_of_rows_when_rows_are_many(fits, monkeypatch):
    fit = fits["mixed.lmer2"]
    legend = [t.get_text() for t in plots_checks.residuals_vs_fitted([fit]).legends[0].get_texts()]
    assert "lowess smooth of the residuals" in legend  # 480 rows: every row
    monkeypatch.setattr(plots_checks, "LOWESS_ROWS", 100)
    legend = [t.get_text() for t in plots_checks.residuals_vs_fitted([fit]).legends[0].get_texts()]
    assert "lowess smooth of the residuals (of 100 rows drawn at random, seed 0)" in legend


def test_captions_say_what_the_sampled_figures_draw(study_run, tmp_path, monkeypatch):
    text = (study_run.out / "report.md").read_text()
    assert "drawn at random" not in text  # the dragons report at the default threshold: every level drawn
    monkeypatch.setattr(plots, "MAX_LEVELS", 12)
    from bayeslmm.runner import Fitted

    images = figures.make_figures(Fitted(study_run.study, study_run.data, study_run.fits), tmp_path,
                                  study_run.tidy, side=None)
    caption = {im.path.split("/")[-1]: im.caption for im in images}
    assert "12 of 24 levels: the 2 most shrunk" in caption["shrinkage_sample.png"]
    assert "drawn at random" not in caption["shrinkage_mountainRange.png"]  # 8 levels: all of them
    assert "Of sample, it draws 12 of 24 levels: the 2 highest" in caption["caterpillar_mixed.lmer2.png"]


def test_loo_subsample_is_the_difference_estimator_over_psis_on_the_sampled_rows(fits):
    fit = fits["mixed.lmer2"]
    full = compare.loo(fit)
    sub = compare.loo(fit, subsample_rows=100, subsample=200)
    assert isinstance(sub, ELPDDataLOOSubsample) and sub.subsample_size == 200
    rows = np.asarray(sub.loo_subsample_observations)
    assert rows.size == 200 and np.unique(rows).size == 200
    # PSIS smooths each row on its own: the sampled rows' elpd is exactly the full LOO's
    np.testing.assert_allclose(np.asarray(sub.elpd_i)[rows], np.asarray(full.elpd_i)[rows], rtol=1e-12)
    assert np.all(np.isnan(np.delete(np.asarray(sub.pareto_k), rows)))  # k only where PSIS ran
    assert 0 < sub.subsampling_se < sub.se
    assert abs(sub.elpd - full.elpd) < 4 * sub.subsampling_se
    # every row "sampled": the difference estimator is the full sum, without subsampling error
    whole = compare.loo(fit, subsample_rows=0, subsample=len(fit.data))
    assert whole.elpd == pytest.approx(full.elpd, rel=1e-12) and whole.subsampling_se == pytest.approx(0, abs=1e-9)
    assert not isinstance(compare.loo(fit), ELPDDataLOOSubsample)  # 480 rows: full PSIS at the default


def test_pair_difference_of_subsampled_loos_uses_the_shared_rows(fits):
    a, b = fits["mixed.lmer2"], fits["mixed.lmer"]
    full = compare.pair_difference(compare.loo(a), compare.loo(b))
    n = len(a.data)
    whole = compare.pair_difference(compare.loo(a, subsample_rows=0, subsample=n),
                                    compare.loo(b, subsample_rows=0, subsample=n))
    assert whole[0] == pytest.approx(full[0], rel=1e-9)
    with pytest.raises(ValueError, match="same subsample"):
        compare.pair_difference(compare.loo(a, subsample_rows=0, subsample=100, seed=1),
                                compare.loo(b, subsample_rows=0, subsample=100, seed=2))


def test_the_comparison_states_a_subsampled_loo(study_run, monkeypatch):
    monkeypatch.setattr(compare, "LOO_SUBSAMPLE_ROWS", 100)
    monkeypatch.setattr(compare, "LOO_SUBSAMPLE", 200)
    comp = study_run.study.comparisons[0]
    table = compare.compare_models(comp.name, comp.models, study_run.fits, {})
    assert list(table["loo_subsample"]) == [200] * len(comp.models)
    assert (table["elpd_subsampling_se"] > 0).all() and (table["elpd_se"] > table["elpd_subsampling_se"]).all()
    text = to_markdown(report.comparison_section(dataclasses.replace(study_run.study, comparisons=(comp,)), table))
    assert "**LOO from a subsample.** The elpd is estimated from 200 rows drawn at random (seed 0)" in text
    assert "loo_subsample" in text and "elpd_subsampling_se" in text
    assert "LOO from a subsample" not in (study_run.out / "report.md").read_text()  # 480 rows: every row


@pytest.mark.parametrize("model", ["mixed.lmer2", "mixed.WRONG", "slopes.lmer", "basic.lm"])
def test_summed_log_likelihood_is_the_sum_of_the_pointwise_one(fits, model):
    """Power-scaling's log-likelihood per draw: from the data's cross-products (marginal engine), the
    same numbers as summing the pointwise log-likelihood over the rows."""
    from bayeslmm.engines import bayes

    fit = fits[model]
    by_rows = bayes.log_likelihood(fit).sum("__obs__").values
    summed = bayes.summed_log_likelihood(fit)
    assert summed.shape == by_rows.shape
    np.testing.assert_allclose(summed, by_rows, rtol=1e-10)


def _scatter_points(ax) -> int:
    from matplotlib.collections import PathCollection

    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_point_clouds_draw_a_sample_of_rows_when_rows_are_many(fits, builtin, monkeypatch):
    from bayeslmm.summary import predict

    mask, note = plots.point_rows(480, max_points=100)
    assert mask.sum() == 100 and note == "100 of 480 rows drawn at random (seed 0)"
    np.testing.assert_array_equal(mask, plots.point_rows(480, max_points=100)[0])  # seeded
    assert plots.point_rows(480)[0].all() and plots.point_rows(480)[1] == ""  # the dragons: every row
    monkeypatch.setattr(plots, "MAX_POINTS", 100)
    (ax,) = plots.pooled_regression(builtin, "bodyLength2", "testScore").axes
    assert _scatter_points(ax) == 100
    assert "observations (100 of 480 rows drawn at random (seed 0))" in ax.get_legend_handles_labels()[1]
    fit = fits["mixed.lmer2"]
    (ax,) = plots_checks.residuals_vs_fitted([fit]).axes
    assert _scatter_points(ax) == 100
    (ax,) = plots_checks.qq_residuals([fit]).axes
    res = np.sort(predict.residuals(fit))
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    assert ys.size == 100 and ys.min() == res[0] and ys.max() == res[-1]  # both extremes kept
    assert any("100 of 480 sorted residuals" in t.get_text() for t in ax.texts)


def test_posterior_summaries_in_blocks_of_parameters_are_the_whole_arrays(fits):
    """Thousands of levels are summarised a block at a time: every number is the same as all at once."""
    from bayeslmm.summary import predict, tables

    levels, u = predict.group_effect_draws(fits["mixed.lmer2"], "sample")
    draws = u.reshape(2, -1, len(levels))  # conftest's STUDY_RUN: 2 chains
    whole = tables._summarise(draws, 0.9, block_bytes=2**40)
    blocks = tables._summarise(draws, 0.9, block_bytes=5 * 8 * draws.shape[0] * draws.shape[1])  # 5 levels a block
    assert set(whole) == set(blocks)
    for key in whole:
        assert whole[key].shape == (len(levels),)
        np.testing.assert_array_equal(blocks[key], whole[key], err_msg=key)


def test_shrinkage_table_in_blocks_of_levels_is_the_whole_table(fits, monkeypatch):
    fit = fits["mixed.lmer2"]
    whole = plots_pooling.shrinkage_table(fit, "sample")
    monkeypatch.setattr(plots_pooling, "_BLOCK_BYTES", 5 * 8 * 300)  # 5 levels of 300 draws at a time
    import pandas as pd

    pd.testing.assert_frame_equal(plots_pooling.shrinkage_table(fit, "sample"), whole)
