"""The built-in simulator's GLMM outcomes: passed (yes/no) and flames (counts over hoursObserved)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from bayeslmm.model.simulate import TRUTH_FLAMES, TRUTH_PASSED, simulate_dragons
from bayeslmm.model.study import load
from conftest import ROOT

TUTORIAL_COLUMNS = ["testScore", "bodyLength", "mountainRange", "site"]
GLMM_STUDY = ROOT / "models" / "dragons_glmm.toml"


def _fingerprint(df: pd.DataFrame) -> str:
    """sha256 of the tutorial columns' bytes (float64 values, then category codes), first 32 hex digits."""
    raw = np.ascontiguousarray(df[["testScore", "bodyLength"]].to_numpy(dtype="<f8")).tobytes()
    raw += b"".join(df[c].cat.codes.to_numpy().astype("<i2").tobytes() for c in ("mountainRange", "site"))
    return hashlib.sha256(raw).hexdigest()[:32]


@pytest.mark.parametrize(("seed", "expected"), [
    # Computed from simulate_dragons as it was before the GLMM columns (commit bc17d5e), same function.
    (20260401, "444ec22e59dba8647ec2e6a8d19b70d3"),
    (1, "65a6d7b9236f90752572d2ccbd57fbc0"),
])
def test_tutorial_columns_are_unchanged(seed, expected):
    assert _fingerprint(simulate_dragons(seed)) == expected


def test_glmm_columns_shapes_types_and_seeds():
    a = simulate_dragons()
    assert list(a.columns) == [*TUTORIAL_COLUMNS, "passed", "flames", "hoursObserved", "dragon"]
    assert list(a["passed"].cat.categories) == ["no", "yes"]  # R's order: "no" is the failure
    assert pd.api.types.is_integer_dtype(a["flames"]) and (a["flames"] >= 0).all()
    hours = a["hoursObserved"].to_numpy()
    assert hours.min() >= 1 and hours.max() <= 6 and np.all(hours * 2 == np.round(hours * 2))
    assert a["dragon"].nunique() == len(a) == 480
    pd.testing.assert_frame_equal(a, simulate_dragons())
    b = simulate_dragons(2)
    assert not a["passed"].equals(b["passed"]) and not a["flames"].equals(b["flames"])
    assert simulate_dragons(1, n_per_site=5)["dragon"].nunique() == 120


def _logit_slope(y: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    fit = sm.GLM(y, X, family=sm.families.Binomial()).fit()
    return float(fit.params[1]), float(fit.bse[1])


def test_passing_teaches_the_lesson(builtin):
    """Pooled, bigger dragons pass more often; within sites (fixed effects), body length does nothing."""
    y = (builtin["passed"] == "yes").to_numpy(dtype=float)
    x = builtin["bodyLength2"].to_numpy()
    pooled, pooled_se = _logit_slope(y, sm.add_constant(x))
    sites = pd.get_dummies(builtin["sample"], drop_first=True, dtype=float).to_numpy()
    within, within_se = _logit_slope(y, np.column_stack([np.ones_like(x), x, sites]))
    assert pooled / pooled_se > 4
    assert abs(within - TRUTH_PASSED["bodyLength2"]) < 2 * within_se


def test_flames_are_overdispersed_with_a_real_body_length_effect(builtin):
    """Within sites the body-length effect is found near its truth; the counts vary more than Poisson's."""
    sites = pd.get_dummies(builtin["sample"], drop_first=True, dtype=float).to_numpy()
    X = np.column_stack([np.ones(len(builtin)), builtin["bodyLength2"], sites])
    fit = sm.GLM(builtin["flames"].to_numpy(float), X, family=sm.families.Poisson(),
                 offset=np.log(builtin["hoursObserved"].to_numpy())).fit()
    assert abs(fit.params[1] - TRUTH_FLAMES["bodyLength2"]) < 2 * fit.bse[1]
    assert fit.pearson_chi2 / fit.df_resid > 1.3  # a Poisson model's would be near 1


def test_glmm_study_loads():
    study = load(GLMM_STUDY)
    assert study.source == "builtin:dragons"
    families = {m.name: m.formula.family for m in study.models}
    assert families["pass.glmer"] == "binomial" and families["flames.olre"] == "poisson"
    assert all(set(c.models) <= set(families) for c in study.comparisons)


@pytest.mark.slow
def test_bambi_recovers_the_passing_truth(builtin):
    """Bambi's fit of the study's pass.glmer holds the simulator's truth in its 95% intervals; the pooled
    model's body-length interval lies above 0 (the lesson, on the logit scale)."""
    from bayeslmm.engines import bayes
    from bayeslmm.model.options import RunOptions, SamplerOptions

    study = load(GLMM_STUDY)
    options = SamplerOptions(draws=400, tune=400, chains=2, seed=3)
    fit = bayes.fit(study.model("pass.glmer").formula, builtin, options, run=RunOptions(progress=False))
    t = fit.tidy().set_index(["effect", "group", "term"])
    truth = {("fixed", "", "(Intercept)"): TRUTH_PASSED["(Intercept)"],
             ("fixed", "", "bodyLength2"): TRUTH_PASSED["bodyLength2"],
             ("ran_pars", "mountainRange", "sd__(Intercept)"): TRUTH_PASSED["sd_mountainRange"],
             ("ran_pars", "sample", "sd__(Intercept)"): TRUTH_PASSED["sd_sample"]}
    for key, value in truth.items():
        row = t.loc[key]
        assert row.conf_low < value < row.conf_high, f"{key}: truth {value} outside [{row.conf_low}, {row.conf_high}]"
    pooled = bayes.fit(study.model("pass.glm").formula, builtin, options, run=RunOptions(progress=False))
    assert pooled.tidy().set_index("term").loc["bodyLength2", "conf_low"] > 0
