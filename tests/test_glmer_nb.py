"""glmer.nb's side: negative binomial mixed models against lme4 and against independent computations.

``tests/data/glmer_nb_lme4.json`` holds what R 4.2.2 / lme4 1.1-31 / MASS 7.3-58.2 report on
``tests/data/beyond/counts.csv`` (written by ``tests/data/r/glmer_nb.R``, provenance in its header and in
``tests/data/README.md``; the tests never run R): ``glmer.nb`` of ``birds ~ temp + offset(log(hours)) +
(1|site)`` (``nb_offset``) and of ``birds ~ temp + (1|site)`` (``nb_plain``), a glmer at a fixed theta of
5 (``nb_fixed_theta5``: the inner fit alone) and MASS's ``glm.nb`` without the random term (``glm_nb``).

What matches R, and how closely (largest relative difference seen):

================================  ==========  ==========
quantity                          tolerance   seen
================================  ==========  ==========
theta                             1e-6        4.0e-9
fixed effects, sds                1e-4        1.1e-5
standard errors                   1e-4        1.2e-6
logLik, AIC, BIC                  1e-8        2.5e-12
deviance()                        1e-5        3.1e-7
conditional modes, their sds      1e-4        (see the test)
optimize()'s path: theta          1e-6        (every evaluation)
optimize()'s path: -2 logLik      1e-7        1.1e-8
================================  ==========  ==========

Why theta is this close (the brief allowed it looser): lme4's theta is where R's ``optimize`` (tol 5e-5
on log theta) stopped, not the exact optimum, and every value it compares is a glmer refit whose
deviance function restarts lme4's PIRLS from a point that depends on the refit before. bayeslmm
reproduces that process step for step (:mod:`bayeslmm.lme4.glmer_nb`: Brent's ``fmin``, lme4's PIRLS
from ``refit``'s own starting point), so it visits the same thetas and stops at the same one. Were one
of those details different (it was, while the refit's PIRLS started from the exact modes: deviances
1e-4 away from R's), the path would part from R's after a few steps and theta would land anywhere
within R's noise: the profile deviance rises by 1e-4 only 2e-3 (relative) from its minimum.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats

from bayeslmm.errors import OptionsError
from bayeslmm.lme4 import frequentist, glmer, glmer_nb
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.model.options import check_family
from bayeslmm.results import latent_residual_variance
from conftest import ROOT, beyond

REFERENCE = json.loads((ROOT / "tests" / "data" / "glmer_nb_lme4.json").read_text())
MODELS = REFERENCE["models"]
NB_FITS = ["nb_offset", "nb_plain"]
#: Relative tolerances (the module's table).
THETA_REL, FIT_REL, LOGLIK_REL, DEVIANCE_REL = 1e-6, 1e-4, 1e-8, 1e-5


def _frame(formula: str):
    return model_frame(parse(formula, "negbinomial"), beyond("poisson_offset")[1])


_CACHE: dict = {}


def _fit(name: str):
    """frequentist.fit of a reference entry (and its frame), once per session."""
    if name not in _CACHE:
        frame = _frame(MODELS[name]["formula"])
        _CACHE[name] = (frequentist.fit(frame), frame)
    return _CACHE[name]


def test_reference_provenance():
    info = REFERENCE["info"]
    assert info["lme4"] == "1.1.31" and info["MASS"] == "7.3.58.2" and info["R"].startswith("R version 4.2.2")
    assert MODELS["nb_offset"]["call"] == "glmer.nb(birds ~ temp + offset(log(hours)) + (1 | site), data = d)"
    assert not MODELS["nb_offset"]["use_sc"] and MODELS["nb_offset"]["sigma"] == 1  # VarCorr has no residual


@pytest.mark.parametrize("name", NB_FITS)
def test_glmer_nb_matches_lme4(name):
    entry = MODELS[name]
    fit, _ = _fit(name)
    assert fit.method == "laplace" and fit.family == "negbinomial" and fit.converged and not fit.singular
    assert fit.nb_theta == pytest.approx(entry["theta"], rel=THETA_REL, abs=0)
    assert fit.fixef.to_dict() == pytest.approx(entry["fixef"], rel=FIT_REL, abs=0)
    assert fit.se.to_dict() == pytest.approx(entry["se"], rel=FIT_REL, abs=0)
    assert fit.t.to_dict() == pytest.approx(entry["z"], rel=FIT_REL, abs=0)
    (row,) = entry["varcorr"]
    vc = fit.varcorr.set_index("group")
    assert list(vc.index) == [row["grp"]]  # no residual row: lme4's VarCorr of a glmer.nb fit has none
    assert vc.at[row["grp"], "sd"] == pytest.approx(row["sdcor"], rel=FIT_REL, abs=0)
    assert fit.deviance == pytest.approx(entry["deviance"], rel=DEVIANCE_REL, abs=0)
    # theta counts as a parameter of the likelihood, as lme4's logLik df says
    assert fit.npar == entry["df"] == len(entry["fixef"]) + len(entry["varcorr"]) + 1
    for ours, theirs in ((fit.loglik, "logLik"), (fit.aic, "AIC"), (fit.bic, "BIC")):
        assert ours == pytest.approx(entry[theirs], rel=LOGLIK_REL, abs=0), theirs
    re = entry["ranef"]["site"]
    modes, sds = fit.ranef["site"]["(Intercept)"], fit.ranef_sd["site"]["(Intercept)"]
    assert list(modes.index) == re["level"]
    np.testing.assert_allclose(modes.to_numpy(), re["condval"], rtol=FIT_REL, atol=FIT_REL * np.std(re["condval"]))
    np.testing.assert_allclose(sds.to_numpy(), re["condsd"], rtol=FIT_REL, atol=0)


@pytest.mark.parametrize("name", NB_FITS)
def test_theta_search_is_glmer_nbs(name):
    """The starting theta (theta.ml on the Poisson glmer's fitted values) and every step of R's optimize():
    the same thetas, and -2 logLik of the refits there, as glmer.nb's verbose output printed them."""
    entry = MODELS[name]
    frame = _frame(entry["formula"])
    nb = glmer_nb.fit_glmer_nb(frame)
    assert nb.theta_start == pytest.approx(entry["theta_start"], rel=THETA_REL, abs=0)
    thetas, devs = zip(*nb.path, strict=True)
    assert len(nb.path) == entry["nevals"] == len(entry["path_theta"])
    # R prints theta to 10 significant digits and the deviance to 8 decimals
    np.testing.assert_allclose(thetas, entry["path_theta"], rtol=THETA_REL, atol=0)
    np.testing.assert_allclose(devs, entry["path_deviance"], rtol=1e-7, atol=0)
    assert thetas[-1] == nb.theta  # the answer is the refit at the minimum, evaluated last
    # the smallest deviance of the path, up to the refit's dependence on where it started (R: 1e-8)
    assert devs[-1] - min(devs) < 1e-8


def test_glmer_at_a_fixed_theta_matches_lme4():
    """glmer(..., family = negative.binomial(theta = 5)): the inner fit alone, both of glmer's stages."""
    entry = MODELS["nb_fixed_theta5"]
    frame = _frame(entry["formula"])
    g = glmer.fit_glmer(frame, nb_theta=5.0)
    names = list(entry["fixef"])
    assert dict(zip(names, g.modes.beta, strict=True)) == pytest.approx(entry["fixef"], rel=FIT_REL, abs=0)
    se = np.sqrt(np.diag(g.vcov))
    assert dict(zip(names, se, strict=True)) == pytest.approx(entry["se"], rel=FIT_REL, abs=0)
    assert g.modes.theta[0] == pytest.approx(entry["varcorr"][0]["sdcor"], rel=FIT_REL, abs=0)
    assert g.loglik == pytest.approx(entry["logLik"], rel=LOGLIK_REL, abs=0)
    assert g.deviance == pytest.approx(entry["deviance"], rel=DEVIANCE_REL, abs=0)


def test_glm_nb_matches_mass():
    entry = MODELS["glm_nb"]
    fit, _ = _fit("glm_nb")
    assert fit.method == "glm" and fit.npar == entry["df"] == 3
    # R's glm.nb stops its alternation at epsilon = 1e-8; bayeslmm's goes on to rounding error
    assert fit.nb_theta == pytest.approx(entry["theta"], rel=THETA_REL, abs=0)
    assert fit.fixef.to_dict() == pytest.approx(entry["fixef"], rel=1e-6, abs=0)
    assert fit.se.to_dict() == pytest.approx(entry["se"], rel=1e-5, abs=0)
    for ours, theirs in ((fit.loglik, "logLik"), (fit.aic, "AIC"), (fit.bic, "BIC"), (fit.deviance, "deviance")):
        assert ours == pytest.approx(entry[theirs], rel=LOGLIK_REL, abs=0), theirs


# ---------------------------------------------------------------------------------------
# The family against independent computations
# ---------------------------------------------------------------------------------------


def test_family_functions_are_the_negative_binomials():
    """-2 log p is scipy's nbinom (n = theta, p = theta / (theta + mu)); the IRLS score and weight are the
    derivative of the log-likelihood in eta and its expected information (the variance of the score under
    the model, by summing over the support); the deviance residuals are 2 [log p(y | mu = y) - log p(y | mu)]."""
    fam = glmer.NegBinomial(3.7)
    y = np.array([0.0, 1, 2, 5, 17, 40])
    eta = np.array([-1.0, 0.2, 0.9, 1.4, 2.5, 3.1])
    mu = np.exp(eta)
    ll = stats.nbinom.logpmf(y, 3.7, 3.7 / (3.7 + mu))
    assert glmer.neg2loglik(fam, eta, y, None) == pytest.approx(-2 * ll.sum(), rel=1e-13)
    score, weight = glmer.working(fam, eta, y, None)
    h = 1e-6
    def logpmf(yi, e):
        return stats.nbinom.logpmf(yi, 3.7, 3.7 / (3.7 + np.exp(e)))

    fd = [(logpmf(yi, e + h) - logpmf(yi, e - h)) / (2 * h) for yi, e in zip(y, eta, strict=True)]
    np.testing.assert_allclose(score, fd, rtol=1e-7)
    support = np.arange(0, 2000.0)
    for m, e, w in zip(mu, eta, weight, strict=True):
        pmf = stats.nbinom.pmf(support, 3.7, 3.7 / (3.7 + m))
        s = glmer.working(fam, np.full(support.size, e), support, None)[0]
        assert w == pytest.approx(np.sum(pmf * s**2), rel=1e-9)
    sat = stats.nbinom.logpmf(y, 3.7, 3.7 / (3.7 + y))
    np.testing.assert_allclose(glmer.deviance_residuals(fam, mu, y, None), 2 * (sat - ll), rtol=1e-10, atol=1e-12)
    assert glmer.saturated_deviance(fam, y, None) == pytest.approx(-2 * sat.sum(), rel=1e-13)


def test_theta_ml_is_the_maximum_at_fixed_means():
    """theta.ml's Newton steps end where the profile log-likelihood in theta has its maximum (scipy)."""
    rng = np.random.default_rng(3)
    mu = np.exp(rng.normal(1.0, 0.5, 400))
    y = rng.negative_binomial(2.5, 2.5 / (2.5 + mu)).astype(float)
    th = glmer_nb.theta_ml(y, mu, limit=50, eps=1e-10)
    best = max(np.linspace(0.5, 10, 2001), key=lambda t: stats.nbinom.logpmf(y, t, t / (t + mu)).sum())
    assert th == pytest.approx(best, abs=0.01) and 1.5 < th < 4


def test_brent_fmin_finds_minima_to_its_tolerance():
    """R's optimize(): a smooth minimum to about tol, an end of the interval when the minimum is beyond it."""
    for target in (0.3, 1.7, -2.2):
        x = glmer_nb.brent_fmin(lambda t, c=target: math.cosh(t - c), -3.0, 3.0, 1e-6)
        assert x == pytest.approx(target, abs=1e-5)
    assert glmer_nb.brent_fmin(lambda t: -t, 0.0, 1.0, 1e-6) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------
# Tidy rows, shares, refusals
# ---------------------------------------------------------------------------------------


def test_tidy_has_theta_as_a_residual_row_and_varcorr_does_not():
    fit, _ = _fit("nb_offset")
    rows = fit.tidy()
    pars = rows[rows["effect"] == "ran_pars"]
    assert list(zip(pars["group"], pars["term"], strict=True)) == [("site", "sd__(Intercept)"), ("Residual", "theta")]
    theta = pars[pars["term"] == "theta"].iloc[0]
    assert theta["estimate"] == fit.nb_theta and np.isnan(theta["std_error"]) and np.isnan(theta["conf_low"])
    table = fit.varcorr_table()
    assert list(table["Groups"]) == ["site"]  # lme4's print(VarCorr(fit)) has no theta either


def test_variance_partition_uses_theta():
    """Nakagawa et al. 2017: the negative binomial's latent residual variance is ln(1 + 1/lambda + 1/theta)."""
    fit, frame = _fit("nb_offset")
    lam = float(frame.y.mean())
    resid = math.log1p(1 / lam + 1 / fit.nb_theta)
    var = fit.varcorr["variance"].iloc[0]
    shares = frequentist.variance_partition(fit, lam)
    assert shares["site"] == pytest.approx(var / (var + resid), rel=1e-12)
    assert latent_residual_variance("negbinomial", lam, np.array([fit.nb_theta, 1e12])) == pytest.approx(
        [resid, latent_residual_variance("poisson", lam)], rel=1e-9)
    with pytest.raises(ValueError, match="theta"):
        latent_residual_variance("negbinomial", lam)


def test_refusals_say_what_to_do():
    frame = _frame("birds ~ temp + offset(log(hours)) + (1|site)")
    with pytest.raises(OptionsError, match="Laplace"):
        frequentist.fit(frame, "agq", 25)
    with pytest.raises(OptionsError, match="needs its theta"):
        glmer.GlmerProblem(frame)
    for alias in ("negativebinomial", "negative_binomial", "nb"):
        with pytest.raises(OptionsError, match="use --family negbinomial"):
            check_family(alias)
    assert check_family("negbinomial") == "negbinomial"


def test_nb_loglik_reaches_poisson_as_theta_grows():
    """As theta grows the negative binomial's log-likelihood becomes the Poisson's, with no rounding noise
    (the difference is sum(y^2 - 2 y mu + mu^2 - y) / (2 theta) to first order), and the glmer fits agree."""
    rng = np.random.default_rng(1)
    eta = rng.normal(1.0, 0.7, 200)
    y = rng.poisson(np.exp(eta)).astype(float)
    mu = np.exp(eta)
    pois = glmer.neg2loglik("poisson", eta, y, None)
    first = np.sum(y**2 - 2 * y * mu + mu**2 - y)
    for th in (1e6, 1e9, 1e12):
        diff = (pois - glmer.neg2loglik(glmer.NegBinomial(th), eta, y, None)) / 2
        assert diff == pytest.approx(first / (2 * th), rel=1e-3, abs=1e-9)
    assert glmer.log_rising(2e5, np.array([3.0])) == pytest.approx(np.log(2e5 * (2e5 + 1) * (2e5 + 2)), rel=1e-14)
    assert glmer.log_rising(7.5, np.array([4.0])) == pytest.approx(special.gammaln(11.5) - special.gammaln(7.5))
    frame = _frame("birds ~ temp + offset(log(hours)) + (1|site)")
    # exact Laplace fits (lme4's own PIRLS depends on where it starts, and the families' mustart differ)
    nb = glmer.fit_glmer(frame, nb_theta=1e9, lme4_pirls=False)
    poisson = glmer.fit_glmer(glmer_nb.as_poisson(frame), lme4_pirls=False)
    assert nb.loglik == pytest.approx(poisson.loglik, rel=1e-8)
    np.testing.assert_allclose(nb.modes.beta, poisson.modes.beta, rtol=1e-6)
