"""The lme4 side against R on the simulated data sets of tests/data/beyond (no shared folder needed).

Every lmer entry of ``lme4_reference.json`` (R 4.x, lme4 1.1; provenance in README.md there) is
fitted by REML with :func:`bayeslmm.lme4.frequentist.fit` on its CSV read as R's
``read.csv(stringsAsFactors = TRUE)`` reads it, and profiled with
:func:`bayeslmm.lme4.profile.profile_ci`: fixed effects, their SEs, VarCorr (sds and
correlations), logLik, AIC, BIC and the profile intervals, as R reports them. The glmer entries
(binomial, Poisson) are tests/test_glmer.py's.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from scipy import optimize, stats

from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.lmer import LmerProblem
from bayeslmm.lme4.profile import _Profiler, profile_ci
from bayeslmm.model.formula import model_frame, parse
from conftest import BEYOND, beyond

#: Relative tolerance of the fits against lme4: the project's (tests/test_frequentist.py), set by
#: where lme4's BOBYQA stops. Largest differences seen: 4.5e-5 (the intercept variance of
#: slopes_correlated), 8e-5 (that of slopes_uncorrelated), 5.4e-9 (many_groups). Our REML criterion
#: is no higher than lme4's in each (test_criteria_at_lme4_estimates), so these are lme4's stopping.
FIT_REL = 1e-4
#: Relative tolerance of the profile intervals against R's, per fit. lme4 reads the ends off an
#: interpolation spline of zeta on a grid, we solve zeta = +-1.96 with a root finder, so the
#: differences are R's: at each end where they are largest, zeta at R's end (inner optimisation by
#: Nelder-Mead, not ours) is not -1.959964 (the normal quantile) but the value given.
PROFILE_REL = {
    # nearly quadratic: largest difference 6.9e-8 (the lower end of the group sd)
    "many_groups": 1e-6,
    # 9.7e-7 at the lower end of sd_day|subject, where zeta(R's end) = -1.959955
    "slopes_uncorrelated": 1e-5,
    # 2.0e-5 at the lower end of the correlation, where zeta(R's end) = -1.960165 (the upper end:
    # CORRELATION_UPPER below), 1.4e-6 at the lower end of sd_day|subject (zeta -1.959951)
    "slopes_correlated": 1e-4,
}
#: The one end where R's number is off by more than PROFILE_REL: the upper end of the correlation
#: of slopes_correlated, -0.2952390 in R, -0.2951013 ours (4.7e-4 relative). zeta at R's end is
#: 1.95915 and at ours 1.959964 (test_correlation_upper_end_is_off_in_r): lme4's spline, which is
#: coarse where the correlation's profile bends towards its bound, not our profile.
CORRELATION_UPPER = ("slopes_correlated", "cor_day.(Intercept)|subject", "hi")
Z95 = float(stats.norm.ppf(0.975))

ENTRIES = json.loads((BEYOND / "lme4_reference.json").read_text())
LMER = [e["name"] for e in ENTRIES if e["family"] == "gaussian"]


@cache
def _fitted(name: str) -> tuple[dict, frequentist.FreqFit, object]:
    """R's entry, our REML fit and its frame."""
    entry, df = beyond(name)
    frame = model_frame(parse(entry["formula"]), df)
    return entry, frequentist.fit(frame, "reml"), frame


@cache
def _profile(name: str):
    _, fit, frame = _fitted(name)
    return profile_ci(frame, fit)


def _r_name(row) -> str:
    """lme4's confint name (oldNames = FALSE) of a row of profile_ci: ``sd_day|subject``,
    ``cor_day.(Intercept)|subject`` (R names the second coefficient first), ``sigma`` or the
    fixed effect's name."""
    if row.effect == "fixed":
        return row.term
    if row.group == "Residual":
        return "sigma"
    kind, coefs = row.term.split("__", 1)
    if kind == "cor":
        first, second = coefs.split(".", 1)  # coefficient names here have no dots
        return f"cor_{second}.{first}|{row.group}"
    return f"sd_{coefs}|{row.group}"


def _our_varcorr_key(row: dict) -> tuple[str, str]:
    """Our (group, term) of a row of R's ``as.data.frame(VarCorr(fit))``. lme4 calls the second
    term of ``(day||subject)`` ``subject.1``; we name it by its grouping factor."""
    if row["grp"] == "Residual":
        return "Residual", "sd__Observation"
    group = row["grp"].removesuffix(".1")
    if row["var2"] is None:
        return group, f"sd__{row['var1']}"
    return group, f"cor__{row['var1']}.{row['var2']}"


def test_every_gaussian_entry_is_compared():
    assert set(PROFILE_REL) == set(LMER)
    assert {e["family"] for e in ENTRIES} == {"gaussian", "binomial", "poisson"}  # the others: test_glmer.py


@pytest.mark.parametrize("name", LMER)
def test_fit_matches_lme4(name):
    entry, fit, frame = _fitted(name)
    assert entry["method"] == "REML" and fit.method == "reml" and fit.converged
    assert frame.y.size == entry["nobs"] and fit.singular == entry["singular"]
    assert fit.fixef.to_dict() == pytest.approx(entry["fixef"], rel=FIT_REL, abs=0)
    assert fit.se.to_dict() == pytest.approx(entry["se"], rel=FIT_REL, abs=0)
    vc = fit.varcorr.set_index(["group", "term"])
    assert sorted(vc.index) == sorted(_our_varcorr_key(row) for row in entry["varcorr"])
    for row in entry["varcorr"]:  # variances and covariances; sds and correlations
        key = _our_varcorr_key(row)
        assert vc.at[key, "variance"] == pytest.approx(row["vcov"], rel=FIT_REL, abs=0), key
        assert vc.at[key, "sd"] == pytest.approx(row["sdcor"], rel=FIT_REL, abs=0), key
    for ours, theirs in ((fit.loglik, "logLik"), (fit.aic, "AIC"), (fit.bic, "BIC")):
        assert ours == pytest.approx(entry[theirs], rel=FIT_REL, abs=0), theirs


def _lme4_theta(entry: dict) -> np.ndarray:
    """lme4's theta from its VarCorr: per term, the lower Cholesky factor of the covariance over
    sigma^2, column by column (``getME(fit, "theta")``)."""
    rows = entry["varcorr"]
    sigma = next(r["sdcor"] for r in rows if r["grp"] == "Residual")
    theta = []
    for grp in dict.fromkeys(r["grp"] for r in rows if r["grp"] != "Residual"):
        term = [r for r in rows if r["grp"] == grp]
        coefs = [r["var1"] for r in term if r["var2"] is None]
        cov = np.diag([r["vcov"] for r in term if r["var2"] is None])
        for r in term:
            if r["var2"] is not None:
                i, j = coefs.index(r["var1"]), coefs.index(r["var2"])
                cov[i, j] = cov[j, i] = r["vcov"]
        low = np.linalg.cholesky(cov) / sigma
        theta += [low[i, j] for j in range(len(coefs)) for i in range(j, len(coefs))]
    return np.array(theta)


@pytest.mark.parametrize("name", LMER)
def test_criteria_at_lme4_estimates(name):
    """At lme4's theta our REML criterion is R's -2 logLik to 1e-9 (seen: up to 1e-14), and ours at
    our optimum is no higher (so the differences in test_fit_matches_lme4 are lme4's stopping); our
    ML fit's deviance is R's ML deviance (flat at the optimum, so 1e-9 holds; seen: 1e-14)."""
    entry, fit, frame = _fitted(name)
    problem = LmerProblem(frame, reml=True)
    theirs = problem.objective(_lme4_theta(entry))
    assert theirs == pytest.approx(-2 * entry["logLik"], rel=1e-9, abs=0)
    assert problem.objective(fit.theta.to_numpy()) <= theirs + 1e-9
    assert frequentist.fit(frame, "ml").deviance == pytest.approx(entry["deviance"], rel=1e-9, abs=0)


PROFILE_CASES = [
    pytest.param(e["name"], row["par"], side, id=f"{e['name']}-{row['par']}-{side}",
                 marks=[pytest.mark.xfail(strict=True, reason="lme4's spline: see CORRELATION_UPPER")]
                 if (e["name"], row["par"], side) == CORRELATION_UPPER else [])
    for e in ENTRIES if e["name"] in LMER for row in e["confint"] for side in ("lo", "hi")
]


@pytest.mark.parametrize("name", LMER)
def test_profile_rows_are_rs(name):
    """One interval per row of R's confint, in R's order, under R's names."""
    entry, _, _ = _fitted(name)
    ci = _profile(name)
    assert [_r_name(row) for row in ci.itertuples()] == [row["par"] for row in entry["confint"]]
    assert (ci.conf_low < ci.conf_high).all()


@pytest.mark.parametrize(("name", "par", "side"), PROFILE_CASES)
def test_profile_matches_lme4(name, par, side):
    want = {row["par"]: row for row in _fitted(name)[0]["confint"]}[par][side]
    ci = _profile(name)
    got = ci.set_index(ci.apply(_r_name, axis=1)).at[par, "conf_low" if side == "lo" else "conf_high"]
    assert got == pytest.approx(want, rel=PROFILE_REL[name], abs=0), f"{par} {side}: {got} vs lme4's {want}"


def test_correlation_upper_end_is_off_in_r():
    """Why CORRELATION_UPPER is an expected failure: with the other parameters optimised by
    Nelder-Mead (not the profiler's L-BFGS-B), zeta is 1.959964 at our end and 1.95915 at R's."""
    name, par, _ = CORRELATION_UPPER
    entry, fit, frame = _fitted(name)
    prof = _Profiler(frame, fit.theta.to_numpy())
    k = [row["par"] for row in entry["confint"]].index(par)
    assert not prof.is_sd[k]  # the correlation (sdcor scale)
    free = np.arange(prof.nth + 1) != k

    def zeta(x: float) -> float:
        def dev(u):
            v = np.insert(u, k, x)
            return prof.deviance_v(v) if (v[prof.is_sd] >= 0).all() and abs(x) < 1 else 1e10

        res = optimize.minimize(dev, prof.v_hat[free], method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 20000})
        return float(np.sqrt(res.fun - prof.base))

    ours = _profile(name).set_index("lme4_name").at[f".sig{k + 1:02d}", "conf_high"]
    theirs = {row["par"]: row for row in entry["confint"]}[par]["hi"]
    assert zeta(ours) == pytest.approx(Z95, abs=1e-5)
    assert Z95 - zeta(theirs) > 5e-4  # R's end falls short of the 95% cutoff (seen: 1.95915)
