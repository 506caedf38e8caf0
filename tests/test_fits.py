"""Real seeded NUTS fits of every tutorial model (default engine), checked against lme4 and the truth.

Tolerances are in posterior sd: with n = 480 and weak default priors the posterior mean of a
fixed effect should sit within a fraction of a posterior sd of lme4's estimate; the Monte Carlo
error of a posterior mean with bulk ESS >= 400 is below 0.05 posterior sd, so 0.5 sd leaves room
for the prior and the REML/posterior difference, not for a wrong model.
"""

import numpy as np
import pytest

from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary.tables import diagnostics

pytestmark = pytest.mark.slow


def _row(fit, term, effect="fixed", group=""):
    t = fit.tidy()
    return t[(t["term"] == term) & (t["effect"] == effect) & (t["group"] == group)].iloc[0]


def test_basic_lm_finds_the_pooled_effect(real_fits, reference):
    row = _row(real_fits["basic.lm"], "bodyLength2")
    lme4 = reference["basic.lm"]["coef"]["bodyLength2"]
    assert abs(row.estimate - lme4) < 0.5 * row.std_error
    assert row.conf_low > 0


def test_mixed_lmer2_effect_vanishes(real_fits, reference):
    row = _row(real_fits["mixed.lmer2"], "bodyLength2")
    lme4 = reference["mixed.lmer2"]["fixef"]["bodyLength2"]
    assert abs(row.estimate - lme4) < 0.5 * row.std_error
    assert row.conf_low < 0 < row.conf_high


@pytest.mark.parametrize("name", ["basic.lm", "mountain.lm", "mixed.lmer", "mixed.WRONG", "mixed.lmer2",
                                  "full.lmer", "reduced.lmer"])
def test_fixed_effects_agree_with_lme4(real_fits, reference, name):
    ref = reference[name]
    coefs = ref.get("fixef") or ref["coef"]
    t = real_fits[name].tidy()
    fixed = t[t["effect"] == "fixed"].set_index("term")
    assert set(fixed.index) == set(coefs)
    for term, value in coefs.items():
        z = abs(fixed.loc[term, "estimate"] - value) / fixed.loc[term, "std_error"]
        assert z < 0.5, f"{name} {term}: posterior mean {fixed.loc[term, 'estimate']:.3f} vs lme4 {value:.3f}"


@pytest.mark.parametrize("name", ["mixed.lmer", "mixed.lmer2", "mixed.WRONG"])
def test_standard_deviations_cover_lme4(real_fits, reference, name):
    # sds are skewed and lean on the prior with 8 ranges: only ask that lme4's REML value lies
    # inside the 95% interval, and that the residual sd (480 rows) is within 1 posterior sd.
    t = real_fits[name].tidy()
    for group, sd in reference[name]["sd"].items():
        if group == "Residual":
            row = _row(real_fits[name], "sd__Observation", "ran_pars", "Residual")
            assert abs(row.estimate - sd) < row.std_error
        else:
            row = t[(t["effect"] == "ran_pars") & (t["group"] == group)].iloc[0]
            assert row.conf_low < sd < row.conf_high


@pytest.mark.parametrize("name", ["basic.lm", "mountain.lm", "mixed.lmer", "mixed.WRONG", "mixed.lmer2", "full.lmer",
                                  "reduced.lmer"])
def test_converged(real_fits, name):
    d = diagnostics(real_fits[name])
    assert d["max_r_hat"] <= 1.01
    assert d["min_ess_bulk"] >= 400
    assert d["divergences"] == 0


def test_ranef_levels_match_lme4(real_fits, reference):
    ranef = real_fits["mixed.lmer2"].ranef()
    for group, modes in reference["mixed.lmer2"]["ranef"].items():
        rows = ranef[ranef["group"] == group].set_index("level")
        assert list(rows.index) == list(modes)
        # Conditional modes and posterior means agree in sign and roughly in size.
        est = rows.loc[list(modes), "estimate"].to_numpy()
        assert np.corrcoef(est, list(modes.values()))[0, 1] > 0.95


def test_builtin_truth_is_recovered(study, builtin, tmp_path):
    from bayeslmm.engines import bayes
    from bayeslmm.model.simulate import TRUTH

    fit = bayes.fit(study.model("mixed.lmer2").formula, builtin, SamplerOptions(seed=2), run=RunOptions(progress=False))
    truth = {("fixed", "", "(Intercept)"): TRUTH["(Intercept)"], ("fixed", "", "bodyLength2"): TRUTH["bodyLength2"],
             ("ran_pars", "mountainRange", "sd__(Intercept)"): TRUTH["sd_mountainRange"],
             ("ran_pars", "sample", "sd__(Intercept)"): TRUTH["sd_sample"],
             ("ran_pars", "Residual", "sd__Observation"): TRUTH["sigma"]}
    t = fit.tidy().set_index(["effect", "group", "term"])
    for key, value in truth.items():
        row = t.loc[key]
        assert row.conf_low < value < row.conf_high, f"{key}: truth {value} outside [{row.conf_low}, {row.conf_high}]"


def test_random_slopes_fit(builtin):
    from bayeslmm.engines import bayes
    from bayeslmm.model.formula import parse

    fit = bayes.fit(parse("testScore ~ bodyLength2 + (bodyLength2||mountainRange)"), builtin,
                    SamplerOptions(draws=300, tune=500, seed=5), run=RunOptions(progress=False))
    t = fit.tidy()
    pars = t[t["effect"] == "ran_pars"].set_index(["group", "term"])
    assert ("mountainRange", "sd__bodyLength2") in pars.index
    slopes = t[(t["effect"] == "ran_vals") & (t["term"] == "bodyLength2")]
    assert len(slopes) == 8
