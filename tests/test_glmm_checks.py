"""Checks a GLMM user needs: simulated-quantile residuals and their tests, separation, odds and rate ratios.

Fast: the residual tests run on "point" fits, posteriors that put every draw at the truth of a
seeded simulation (the model's own parameters and group effects), so the replicates come from the
model that made the data. A right model must then pass the tests and a wrong one (overdispersed
counts, extra zeros, a missing curve) must fail them: the tests' calibration and power, without a
sampler. Real fits and reports of GLMMs are in tests/test_plots_glmm.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import special

from bayeslmm.engines.bayes import model_data
from bayeslmm.intervals import eti
from bayeslmm.model.checks import design_warnings, separating_direction, separation_warning
from bayeslmm.model.formula import group_codes, materialize, parse
from bayeslmm.summary import predict, residuals
from bayeslmm.summary.sidebyside import ratio_table, runaway_notes


@dataclass
class PointFit:
    """What the residual functions read of a fit: name, formula, data, posterior (and a cache)."""

    name: str
    formula: object
    data: pd.DataFrame
    idata: xr.DataTree
    _summaries: dict = field(default_factory=dict)


def point_fit(text: str, family: str, df: pd.DataFrame, fixed: dict, sds: dict | None = None,
              effects: dict | None = None, draws: int = 400, name: str = "truth") -> PointFit:
    """A fit whose posterior is ``fixed`` (Bambi's names; a number, or an array of draws), group
    intercepts ``effects[g]`` (one per level, R's level order) and their sds ``sds[g]``, in every draw."""
    formula = parse(text, family)
    data = model_data(formula, df)
    post, coords = {}, {}
    for var, v in fixed.items():
        post[var] = (("chain", "draw"), np.broadcast_to(np.asarray(v, dtype=float), (draws,))[None, :].copy())
    for g, u in (effects or {}).items():
        coords[f"{g}__factor_dim"] = list(group_codes(data, g)[0])
        post[f"1|{g}"] = (("chain", "draw", f"{g}__factor_dim"), np.tile(np.asarray(u, dtype=float), (1, draws, 1)))
        post[f"1|{g}_sigma"] = (("chain", "draw"), np.full((1, draws), float(sds[g])))
    tree = xr.DataTree.from_dict({"posterior": xr.Dataset(post, coords=coords)})
    return PointFit(name, formula, data, tree)


def counts_data(seed: int = 3, groups: int = 40, per: int = 10, sd: float = 0.3, olre: float = 0.0,
                zeros: float = 0.0, curve: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Seeded Poisson counts: log mean 0.3 + 0.4 x + curve x^2 + u_g (sd ``sd``) + e_row (sd ``olre``),
    a share ``zeros`` of them set to 0; returns the data and the group effects."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    x = rng.normal(size=g.size)
    u = rng.normal(scale=sd, size=groups)
    e = rng.normal(scale=olre, size=g.size) if olre else np.zeros(g.size)
    y = rng.poisson(np.exp(0.3 + 0.4 * x + curve * x**2 + u[g] + e))
    if zeros:
        y = np.where(rng.uniform(size=y.size) < zeros, 0, y)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g], "obs": [f"o{i:04d}" for i in range(g.size)]})
    return df, u


COUNTS = "y ~ x + (1|g)"
TRUTH = {"Intercept": 0.3, "x": 0.4}


# ---------------------------------------------------------------------------------------
# The scaled residuals
# ---------------------------------------------------------------------------------------


def test_pit_is_the_share_below_randomised_over_ties():
    sims = np.array([[0, 1, 2], [1, 1, 2], [2, 1, 5], [3, 1, 5]], dtype=float)  # 4 replicates, 3 rows
    r = residuals.pit(sims, np.array([1.5, 1.0, 9.0]), np.random.default_rng(0))
    assert r[0] == 0.5  # no replicate equals 1.5: two of four below
    assert 0.0 <= r[1] <= 1.0  # every replicate equals 1: anywhere in [0, 1]
    assert r[2] == 1.0  # all below
    again = residuals.pit(sims, np.array([1.5, 1.0, 9.0]), np.random.default_rng(0))
    np.testing.assert_array_equal(r, again)
    many = residuals.pit(np.tile(sims[:, [1]], (1, 4000)), np.ones(4000), np.random.default_rng(1))
    assert abs(many.mean() - 0.5) < 0.02 and abs(np.var(many) - 1 / 12) < 0.01  # uniform over the tie


def test_a_right_poisson_model_passes_every_test():
    df, u = counts_data()
    fit = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    res = residuals.simulate_residuals(fit, seed=1)
    assert res.residuals.shape == (len(df),) and ((res.residuals >= 0) & (res.residuals <= 1)).all()
    assert res.simulated.shape == res.replicated.shape == (residuals.N_SIM, len(df))
    tests = {t.name: t for t in residuals.residual_tests(res)}
    assert set(tests) == {"uniformity", "dispersion", "zero inflation", "quantiles"}
    assert not any(t.flagged for t in tests.values()), tests
    assert 0.8 < tests["dispersion"].statistic < 1.2 and 0.8 < tests["zero inflation"].statistic < 1.25
    assert residuals.check_notes(fit, res) == []
    # predicted: the typical group's mean exp(0.3 + 0.4 x), the posterior's only value
    np.testing.assert_allclose(res.predicted, np.exp(0.3 + 0.4 * df["x"]), rtol=1e-12)
    # seeded and kept: the same object the second time, the same numbers from a fresh cache
    assert residuals.simulate_residuals(fit, seed=1) is res
    fresh = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    np.testing.assert_array_equal(residuals.simulate_residuals(fresh, seed=1).residuals, res.residuals)


def test_overdispersed_counts_are_flagged_with_the_obs_advice():
    df, u = counts_data(olre=0.6)
    fit = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    res = residuals.simulate_residuals(fit)
    disp = residuals.dispersion_test(res)
    assert disp.flagged and disp.statistic > 1.3
    notes = residuals.check_notes(fit, res)
    assert len([n for n in notes if n.startswith("overdispersion")]) == 1
    assert "+ (1|obs)" in notes[0] and "df['obs'] = range(len(df))" in notes[0]


def test_an_observation_level_effect_is_drawn_anew_and_removes_the_warning():
    """With (1|obs) at its true values the counts are Poisson around the model's means: no overdispersion;
    the predictive check's replicates draw the obs effects anew (fitted ones would copy each row)."""
    df, u = counts_data(olre=0.6)
    rng = np.random.default_rng(3)  # counts_data's draws, in its order, to recover the row effects
    rng.normal(size=len(df)), rng.normal(scale=0.3, size=40)
    e = rng.normal(scale=0.6, size=len(df))
    fit = point_fit(COUNTS + " + (1|obs)", "poisson", df, TRUTH, {"g": 0.3, "obs": 0.6}, {"g": u, "obs": e})
    assert residuals.observation_level(fit) == ("obs",)
    res = residuals.simulate_residuals(fit)
    assert res.fresh == ("obs",)
    assert not residuals.dispersion_test(res).flagged
    assert residuals.check_notes(fit, res) == []


def test_extra_zeros_are_flagged():
    df, u = counts_data(zeros=0.25)
    fit = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    res = residuals.simulate_residuals(fit)
    zeros = residuals.zero_inflation_test(res)
    assert zeros.flagged and zeros.statistic > 1.5
    assert zeros.statistic == pytest.approx(np.sum(df["y"] == 0) / np.mean(np.sum(res.simulated == 0, axis=1)))
    assert any(n.startswith("zero inflation") for n in residuals.check_notes(fit, res))


def test_a_missing_curve_bends_the_residual_quantiles():
    df, u = counts_data(curve=0.5)
    fit = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    res = residuals.simulate_residuals(fit)
    assert residuals.quantile_test(res).flagged
    right = point_fit(COUNTS, "poisson", counts_data()[0], TRUTH, {"g": 0.3}, {"g": counts_data()[1]})
    assert not residuals.quantile_test(residuals.simulate_residuals(right)).flagged


def test_binomial_with_trials_and_yes_no_responses():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(30), 8)
    x = rng.normal(size=g.size)
    u = rng.normal(scale=0.5, size=30)
    p = special.expit(-0.5 + 0.8 * x + u[g])
    size = rng.integers(5, 30, size=g.size)
    sick = rng.binomial(size, p)
    df = pd.DataFrame({"sick": sick, "size": size, "x": x, "g": [f"g{i:02d}" for i in g],
                       "passed": np.where(rng.uniform(size=g.size) < p, "yes", "no")})
    truth = {"Intercept": -0.5, "x": 0.8}
    trials = point_fit("cbind(sick, size - sick) ~ x + (1|g)", "binomial", df, truth, {"g": 0.5}, {"g": u})
    res = residuals.simulate_residuals(trials)
    assert not res.binary and (res.replicated <= size[None, :]).all()
    assert not any(t.flagged for t in residuals.residual_tests(res))
    np.testing.assert_allclose(res.predicted, special.expit(-0.5 + 0.8 * x), rtol=1e-12)  # a probability
    yes_no = point_fit("passed ~ x + (1|g)", "binomial", df, truth, {"g": 0.5}, {"g": u})
    res = residuals.simulate_residuals(yes_no)
    assert res.binary and set(np.unique(res.simulated)) <= {0, 1}
    np.testing.assert_array_equal(res.observed, (df["passed"] == "yes").to_numpy(dtype=float))  # "no" first: failure
    disp, zeros = residuals.dispersion_test(res), residuals.zero_inflation_test(res)
    assert not disp.computed and not zeros.computed and "0/1" in disp.note
    assert residuals.uniformity_test(res).computed and residuals.check_notes(yes_no, res) == []


def test_gaussian_fits_have_no_simulated_quantile_residuals():
    df, u = counts_data()
    fit = point_fit("x ~ 1 + (1|g)", "gaussian", df.assign(x=df["x"]), {"Intercept": 0.0, "sigma": 1.0},
                    {"g": 0.3}, {"g": u})
    with pytest.raises(ValueError, match="gaussian model"):
        residuals.simulate_residuals(fit)
    assert residuals.check_notes(fit) == []


def test_new_level_effects_follow_the_draws_sd():
    df, u = counts_data(groups=2000, per=1)
    fit = point_fit(COUNTS, "poisson", df, TRUTH, {"g": 0.7}, {"g": u})
    term = predict.random_terms(fit)[0]
    new = predict.new_level_effects(fit, term, np.arange(3), np.random.default_rng(0))
    assert new.shape == (3, len(df))
    assert abs(new.std() - 0.7) < 0.03 and abs(new.mean()) < 0.03


def test_bh_adjust_is_r_p_adjust():
    # R: p.adjust(c(0.01, 0.04, 0.03), "BH") == c(0.03, 0.04, 0.04)
    np.testing.assert_allclose(residuals.bh_adjust(np.array([0.01, 0.04, 0.03])), [0.03, 0.04, 0.04])
    # R: p.adjust(c(0.5, 0.9, 0.001, 0.04), "BH") == c(0.6666667, 0.9, 0.004, 0.08)
    np.testing.assert_allclose(residuals.bh_adjust(np.array([0.5, 0.9, 0.001, 0.04])), [2 / 3, 0.9, 0.004, 0.08])


def test_simulation_p_is_dharmas_two_sided_p():
    sims = np.arange(100, dtype=float)
    assert residuals.simulation_p(sims, 4.0) == pytest.approx(0.1)  # 5 of 100 at or below, times 2
    assert residuals.simulation_p(sims, 200.0) == 0.0 and residuals.simulation_p(sims, 49.5) == 1.0


def test_quantile_bins_keep_ties_together():
    pred = np.repeat([0.1, 0.2, 0.3, 0.4], 30)
    bins = residuals.quantile_bins(pred)
    assert all(len(set(bins[pred == v])) == 1 for v in np.unique(pred))
    assert set(bins) == set(range(bins.max() + 1)) and bins.max() + 1 == 3  # 120 rows: 3 bins
    assert residuals.quantile_bins(np.arange(1000.0)).max() + 1 == 10


# ---------------------------------------------------------------------------------------
# Separation
# ---------------------------------------------------------------------------------------


def _binary(seed: int = 1, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"y": (rng.uniform(size=n) < special.expit(x)).astype(int), "x": x,
                         "f": rng.choice(["a", "b", "c"], n), "g": np.repeat([f"g{i}" for i in range(10)], n // 10)})


def _separation(text: str, df: pd.DataFrame) -> str | None:
    formula = parse(text, "binomial")
    return separation_warning(formula, materialize(formula, df))


def test_no_separation_in_ordinary_data():
    assert _separation("y ~ x + f + (1|g)", _binary()) is None
    cbind = pd.read_csv("tests/data/beyond/binomial.csv")
    assert _separation("cbind(sick, size - sick) ~ season + (1|farm)", cbind) is None


def test_a_level_with_one_outcome_is_quasi_complete_separation():
    df = _binary()
    df.loc[df["f"] == "c", "y"] = 0
    note = _separation("y ~ x + f + (1|g)", df)
    assert note.startswith("separation (complete or quasi-complete): fc predicts the outcome of at least")
    assert f"of {len(df)} rows" in note and "prior" in note
    cbind = pd.read_csv("tests/data/beyond/binomial.csv")
    cbind.loc[cbind["season"] == "summer", "sick"] = 0  # no sick animal in any summer
    note = _separation("cbind(sick, size - sick) ~ season + (1|farm)", cbind)
    assert note is not None and "seasonsummer predicts" in note and f"{(cbind['season'] == 'summer').sum()} of" in note


def test_a_threshold_in_a_numeric_predictor_is_complete_separation():
    df = _binary()
    df["y"] = np.where(df["x"] > 0.3, "yes", "no")
    note = _separation("y ~ x + f + (1|g)", df)
    assert note is not None and ": x predicts" in note  # x alone separates: named alone, not with f
    x = np.column_stack([np.ones(len(df)), df["x"]])
    b = separating_direction(x, np.where(df["y"] == "yes", 1.0, -1.0))
    assert b is not None and (np.where(df["y"] == "yes", 1, -1) * (x @ b) >= -1e-9).all()


def test_separation_is_a_design_warning_of_binomial_models_only():
    df = _binary()
    df.loc[df["f"] == "c", "y"] = 0
    binomial = parse("y ~ x + f + (1|g)", "binomial")
    assert any(n.startswith("separation") for n in design_warnings(binomial, materialize(binomial, df)))
    poisson = parse("y ~ x + f + (1|g)", "poisson")
    assert not any(n.startswith("separation") for n in design_warnings(poisson, materialize(poisson, df)))


# ---------------------------------------------------------------------------------------
# Odds ratios and rate ratios
# ---------------------------------------------------------------------------------------


def _side(model: str, rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "effect": "fixed", "group": "", "term": t, "lme4_method": "ml",
                          "lme4_estimate": e, "lme4_conf_low": lo, "lme4_conf_high": hi, "lme4_ci": "Wald",
                          "post_mean": np.nan} for t, e, lo, hi in rows])


def test_odds_ratios_are_exp_of_the_draws_and_of_lme4s_interval():
    rng = np.random.default_rng(2)
    draws = {"Intercept": rng.normal(-1.0, 0.3, 4000), "x": rng.normal(0.7, 0.4, 4000)}
    df = _binary()
    fit = point_fit("y ~ x + (1|g)", "binomial", df, draws, {"g": 0.5}, {"g": np.zeros(10)}, draws=4000)
    table = ratio_table(fit, _side("m", [("(Intercept)", -1.1, -1.6, -0.6), ("x", 0.65, 0.1, 1.2)]), ci=0.9)
    intercept, x = table.iloc[0], table.iloc[1]
    assert (intercept["scale"], x["scale"]) == ("odds", "odds ratio")
    lo, hi = eti(draws["x"], 0.9)
    assert (x["post_conf_low"], x["post_conf_high"]) == pytest.approx((np.exp(lo), np.exp(hi)), rel=1e-12)
    assert x["post_mean"] == pytest.approx(np.exp(draws["x"]).mean()) and x["post_mean"] > np.exp(draws["x"].mean())
    assert (x["lme4_ratio"], x["lme4_conf_low"], x["lme4_conf_high"]) == pytest.approx(np.exp([0.65, 0.1, 1.2]))
    assert x["predicted"] == "P(success) at x = 1"
    assert x["predicted_mean"] == pytest.approx(special.expit(draws["Intercept"] + draws["x"]).mean())
    assert intercept["predicted_mean"] == pytest.approx(special.expit(draws["Intercept"]).mean())


def test_rate_ratios_name_the_exposure():
    df, u = counts_data()
    df["hours"] = np.random.default_rng(0).uniform(1, 3, len(df))
    fit = point_fit("y ~ x + offset(log(hours)) + (1|g)", "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    table = ratio_table(fit, _side("m", [("(Intercept)", 0.3, 0.1, 0.5), ("x", 0.4, 0.3, 0.5)]))
    assert list(table["scale"]) == ["rate", "rate ratio"]
    assert table["predicted"].iloc[1] == "y / hours at x = 1"
    assert table["predicted_mean"].iloc[1] == pytest.approx(np.exp(0.7))
    with pytest.raises(ValueError, match="binomial and Poisson"):
        ratio_table(point_fit("x ~ 1 + (1|g)", "gaussian", df, {"Intercept": 0.0}, {"g": 0.3}, {"g": u}),
                    _side("m", [("(Intercept)", 0.0, -1.0, 1.0)]))


def test_runaway_estimates_are_named():
    formula = parse("y ~ x + f + (1|g)", "binomial")
    side = _side("m", [("(Intercept)", -0.2, -1, 1), ("fc", -23.4, -4000, 4000)]).assign(post_mean=[-0.1, -4.2])
    notes = runaway_notes(side, formula)
    assert len(notes) == 1 and notes[0].startswith("fc: lme4's estimate -23.4 on the log-odds scale")
    assert runaway_notes(side, parse("y ~ x + f + (1|g)", "poisson")) == []


def test_response_scale_values_and_labels():
    df = _binary().assign(y=lambda d: np.where(d["y"] == 1, "yes", "no"))
    y, label = predict.response_scale(parse("y ~ x", "binomial"), df)
    assert label == "y (yes = 1)" and set(y) == {0.0, 1.0}
    counts, _ = counts_data()
    counts["hours"] = 2.0
    y, label = predict.response_scale(parse("y ~ x + offset(log(hours))", "poisson"), counts)
    assert label == "y / hours" and np.allclose(y, counts["y"] / 2)
    assert predict.scale_label(parse("cbind(s, f) ~ x", "binomial")) == "log-odds of s"
