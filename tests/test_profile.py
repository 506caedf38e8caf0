"""Profile-likelihood intervals against lme4's ``confint(mixed.lmer2, method = "profile")``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from bayeslmm import labels
from bayeslmm.errors import OptionsError
from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.lmer import LmerProblem
from bayeslmm.lme4.profile import PROFILE_COLUMNS, _Profiler, profile_ci
from bayeslmm.model.formula import model_frame, parse

LMER2 = "testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)"
#: The quantities of the reference's ``profile_ci95`` (lme4's names), each compared at both ends.
NAMES = (".sig01", ".sig02", ".sigma", "(Intercept)", "bodyLength2")
#: Relative tolerance against R. lme4 reads the ends off an interpolation spline of zeta on a
#: grid (steps of about 1/8 in zeta); we solve zeta = +-1.96 with a root finder. The largest
#: difference is 2.2e-5 (the lower end of .sig02), and it is lme4's: an independent inner
#: optimisation (Nelder-Mead) puts zeta at R's end at -1.96007 and at ours at -1.959964 (the
#: normal quantile). 1e-4 leaves a margin of 4.5 over that while staying far below the
#: differences a wrong criterion makes (REML instead of ML deviance: up to 13%, test below).
REL = 1e-4
Z95 = float(stats.norm.ppf(0.975))


@pytest.fixture(scope="module")
def lmer2(dragons):
    frame = model_frame(parse(LMER2), dragons)
    fit = frequentist.fit_lmm(frame, "reml")
    return frame, fit, profile_ci(frame, fit).set_index("lme4_name")


def test_reference_holds_what_we_compare(reference):
    assert set(reference["mixed.lmer2"]["profile_ci95"]) == set(NAMES)


@pytest.mark.parametrize("side", ["low", "high"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_lme4(lmer2, reference, name, side):
    want = reference["mixed.lmer2"]["profile_ci95"][name][0 if side == "low" else 1]
    got = lmer2[2].at[name, f"conf_{side}"]
    assert got == pytest.approx(want, rel=REL), f"{name} conf_{side}: {got} vs lme4's {want}"


def test_rows_and_labels(lmer2):
    ci = lmer2[2].reset_index()
    assert list(ci.columns) == ["lme4_name", *[c for c in PROFILE_COLUMNS if c != "lme4_name"]]
    rows = list(ci[["lme4_name", "effect", "group", "term"]].fillna("-").itertuples(index=False, name=None))
    assert rows == [
        (".sig01", "ran_pars", "sample", "sd__(Intercept)"),
        (".sig02", "ran_pars", "mountainRange", "sd__(Intercept)"),
        (".sigma", "ran_pars", "Residual", "sd__Observation"),
        ("(Intercept)", "fixed", "-", "(Intercept)"),  # no group (missing, as in frequentist.tidy)
        ("bodyLength2", "fixed", "-", "bodyLength2"),
    ]
    assert (ci.conf_low < ci.conf_high).all()


def test_reml_fit_is_profiled_on_the_ml_deviance(lmer2, reference):
    """lme4's devfun2 refits by ML: a REML fit and an ML fit give the same intervals, and
    profiling the REML criterion instead would miss R's numbers by far more than REL."""
    frame, _, ci = lmer2
    ml = profile_ci(frame, frequentist.fit_lmm(frame, "ml")).set_index("lme4_name")
    pd.testing.assert_frame_equal(ml, ci, rtol=1e-6)
    reml = _Profiler(frame, lmer2[1].theta.to_numpy(), reml=True)
    low, high = reml.interval(1, Z95, 10.0)  # .sig02 on the REML criterion
    want = reference["mixed.lmer2"]["profile_ci95"][".sig02"]
    assert abs(high / want[1] - 1) > 0.05 and abs(low / want[0] - 1) > 0.02


def test_sd_whose_profile_stays_below_the_cutoff_gets_zero(dragons):
    """lme4's confint.thpr puts the sd's lower bound (0), not NA, where zeta never reaches -1.96."""
    frame = model_frame(parse("testScore ~ bodyLength2 + (bodyLength2||mountainRange)"), dragons)
    fit = frequentist.fit_lmm(frame, "reml")
    ci = profile_ci(frame, fit).set_index("lme4_name")
    assert ci.at[".sig02", "term"] == "sd__bodyLength2"
    assert ci.at[".sig02", "conf_low"] == 0.0
    zeta, _ = _Profiler(frame, fit.theta.to_numpy())._zeta_function(1)
    assert -Z95 < zeta(0.0) < 0
    assert np.isfinite(ci.conf_high).all()
    assert (ci.conf_low[[".sig01", ".sigma"]] > 0).all()


@pytest.fixture(scope="module")
def correlated_data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n_groups, per = 20, 15
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(n_groups, 2)) @ np.linalg.cholesky([[4.0, 1.2], [1.2, 1.0]]).T
    y = 1 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(scale=1.5, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "x2": x**2, "g": pd.Categorical([f"g{i:02d}" for i in g])})


def test_correlated_term(correlated_data):
    """(1 + x | g): the correlation is profiled too (lme4's .sig02 between the two sds), and each
    end solves zeta = +-1.96 under an independent inner optimiser."""
    frame = model_frame(parse("y ~ x + (1 + x|g)"), correlated_data)
    fit = frequentist.fit_lmm(frame, "reml")
    ci = profile_ci(frame, fit).set_index("lme4_name")
    assert list(ci.index) == [".sig01", ".sig02", ".sig03", ".sigma", "(Intercept)", "x"]
    assert list(ci.term[:3]) == ["sd__(Intercept)", "cor__(Intercept).x", "sd__x"]
    assert -1 < ci.at[".sig02", "conf_low"] < ci.at[".sig02", "conf_high"] < 1
    prof = _Profiler(frame, fit.theta.to_numpy())
    free = np.arange(prof.nth + 1) != 1
    for end, sign in ((ci.at[".sig02", "conf_low"], -1), (ci.at[".sig02", "conf_high"], 1)):

        def dev(u, end=end):
            v = np.insert(u, 1, end)
            if np.any(v[prof.is_sd] < 0):
                return 1e10
            return prof.deviance_v(v)

        res = optimize.minimize(dev, prof.v_hat[free], method="Nelder-Mead",
                                options={"xatol": 1e-9, "fatol": 1e-11, "maxfev": 5000})
        assert sign * np.sqrt(res.fun - prof.base) == pytest.approx(sign * Z95, abs=1e-5)


@pytest.fixture(scope="module")
def three(three_slopes):
    """(1 + x + z|g) profiled: its frame, REML fit and intervals (lme4 profiles such terms too)."""
    frame = model_frame(parse("y ~ x + z + (1 + x + z|g)"), three_slopes)
    fit = frequentist.fit_lmm(frame, "reml")
    return frame, fit, profile_ci(frame, fit).set_index("lme4_name")


def test_sdcor_round_trip_for_three_coefficients(three_slopes):
    """lme4's Cv_to_Sv and back (Sv_to_Cv) for a 3 x 3 term; correlations that make no valid
    matrix are reported (shortfall = minus the smallest eigenvalue) and replaced by a valid one."""
    frame = model_frame(parse("y ~ x + z + (1 + x + z|g)"), three_slopes)
    fit = frequentist.fit_lmm(frame, "reml")
    prof = _Profiler.__new__(_Profiler)  # the conversions only need the term layout
    prof.blocks, prof.nth = [(0, 3, LmerProblem.tri(3))], 6
    theta = fit.theta.to_numpy()
    back, sigma, shortfall = prof.from_sdcor(prof.to_sdcor(theta, fit.sigma))
    np.testing.assert_allclose(back, theta, rtol=1e-12)
    assert sigma == fit.sigma and shortfall == 0
    bad = np.array([1.0, 0.9, -0.9, 1.0, 0.9, 1.0, 1.0])  # sds 1, correlations 0.9, -0.9, 0.9: not valid
    cor = np.array([[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]])
    theta, _, shortfall = prof.from_sdcor(bad)
    assert shortfall == pytest.approx(-np.linalg.eigvalsh(cor)[0], rel=1e-12) and shortfall > 0
    low = np.zeros((3, 3))
    low[np.array(LmerProblem.tri(3)).T[0], np.array(LmerProblem.tri(3)).T[1]] = theta
    valid = low @ low.T
    assert np.diag(valid) == pytest.approx(np.ones(3)) and np.linalg.eigvalsh(valid)[0] > -1e-12


@pytest.mark.slow
def test_three_correlated_coefficients_are_profiled(three):
    """Rows in lme4's order (.sig01 ... .sig06 along theta: the sdcor_terms order), every interval
    around the ML estimate it is profiled about, correlations inside [-1, 1]."""
    frame, fit, ci = three
    assert list(ci.index) == [f".sig{i:02d}" for i in range(1, 7)] + [".sigma", "(Intercept)", "x", "z"]
    assert list(ci.term[:6]) == labels.sdcor_terms(("(Intercept)", "x", "z"))
    prof = _Profiler(frame, fit.theta.to_numpy())
    est = np.append(prof.v_hat, prof.beta_hat)
    assert (ci.conf_low.to_numpy() < est).all() and (est < ci.conf_high.to_numpy()).all()
    cors = ci[ci.term.str.startswith("cor__")]
    assert len(cors) == 3 and (cors.conf_low > -1).all() and (cors.conf_high < 1).all()


@pytest.mark.slow
def test_three_coefficient_ends_against_an_independent_optimiser(three):
    """At each end of the three correlations' intervals zeta is +-1.96 when the other parameters are
    optimised by Nelder-Mead over valid correlation matrices only (a point outside scores 1e10), from a
    valid start: so the profiler's penalised path outside them does not move the ends."""
    frame, fit, ci = three
    prof = _Profiler(frame, fit.theta.to_numpy())
    for k in np.flatnonzero(~prof.is_sd):
        free = np.arange(prof.nth + 1) != k
        for end, sign in ((ci.conf_low.iloc[k], -1), (ci.conf_high.iloc[k], 1)):
            start = prof.v_hat.copy()
            start[k] = end
            while prof.from_sdcor(start)[2] > 0:  # shrink the other correlations until the matrix is valid
                start[~prof.is_sd & free] *= 0.9

            def dev(u, k=k, end=end):
                v = np.insert(u, k, end)
                if np.any(v[prof.is_sd] < 0) or prof.from_sdcor(v)[2] > 0:
                    return 1e10
                return prof.deviance_v(v)

            res = optimize.minimize(dev, start[free], method="Nelder-Mead",
                                    options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 40000, "adaptive": True})
            assert sign * np.sqrt(res.fun - prof.base) == pytest.approx(sign * Z95, abs=1e-6), (k, end)


def test_bad_arguments(lmer2, correlated_data):
    frame, fit, _ = lmer2
    with pytest.raises(OptionsError, match="level"):
        profile_ci(frame, fit, level=1.5)
    with pytest.raises(OptionsError, match="mixed-model fit"):
        profile_ci(frame, frequentist.fit_ols(frame))
    with pytest.raises(OptionsError, match="not made from this frame"):
        profile_ci(model_frame(parse("y ~ x + (1|g)"), correlated_data), fit)
