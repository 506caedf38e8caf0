"""Each draw's log prior and each prior as a scipy distribution, against PyMC and scipy.

* :func:`prior_density.log_prior` of short seeded fits equals, at a few draws, the log prior PyMC
  computes for the same parameters (transforms removed, as ``pm.compute_log_prior`` does): of the
  PyMC model Bambi builds (Gaussian and binomial models, so the centred intercept and the response's
  shift are checked against Bambi's own statement of the priors), and of bayeslmm's reference PyMC
  model for correlated blocks, where PyMC's ``LKJCorr`` is a density on the Cholesky factor ``L``:
  ours is the density of ``R = L L'``, so the two differ by log |dR/dL|, which the test takes from
  PyTensor's exact Jacobian of the map (not from a formula);
* :func:`prior_density.distribution` is the same density as the engines' kernels for every code;
* :func:`prior_density.lkj_logpdf` for k = 2 is the Beta(eta, eta) density on (-1, 1).

Tolerance 1e-8 (absolute, on log densities of order 10-100): the two sides are the same closed
forms evaluated in different orders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeslmm.engines import bayes, marginal, prior_density, reference
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.bayes import SamplerOptions
from bayeslmm.labels import RESIDUAL_VARIABLE, SAMPLE_DIMS
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions
from bayeslmm.model.priors import Priors, lkj_marginal
from conftest import beyond

TINY = SamplerOptions(draws=30, tune=150, chains=1, seed=5)
POINTS = [0, 7, 29]  # the draws compared


def _fit(formula: str, df: pd.DataFrame, family: str = "gaussian", priors: Priors | None = None, engine="auto"):
    from dataclasses import replace

    return bayes.fit(parse(formula, family), df, replace(TINY, engine=engine), run=RunOptions(progress=False),
                     priors=priors)


def _untransformed(model):
    from pymc.model.transform.conditioning import remove_value_transforms

    return remove_value_transforms(model)


def _pymc_log_prior(model, names: list[str]):
    """PyMC's log density of the named free variables as a function of a point (values on their own scale;
    the other free variables at their initial values), as ``pm.compute_log_prior`` evaluates it."""
    umodel = _untransformed(model)
    initial = umodel.initial_point()  # keyed by the variables' names, which a value variable may not share
    fn = umodel.compile_logp(vars=[umodel[n] for n in names], jacobian=False, sum=True)

    def at(point: dict) -> float:
        return float(fn({umodel.rvs_to_values[rv].name: np.asarray(point.get(rv.name, initial[rv.name]), dtype=float)
                         for rv in umodel.free_RVs}))

    return at


def _flat(fit, name: str, i: int, **sel):
    da = fit.idata["posterior"][name]
    if sel:
        da = da.sel(sel)
    return np.asarray(da.transpose(*SAMPLE_DIMS, ...).values).reshape(-1, *da.shape[2:])[i]


@pytest.fixture(scope="module")
def dragons_fit(builtin):
    return _fit("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)", builtin)


def test_gaussian_log_prior_is_the_bambi_models(dragons_fit):
    """Intercept (centred by Bambi, shifted by the engine), slope, two sds and sigma, against Bambi's PyMC model."""
    fit = dragons_fit
    sp = prior_density.spec(fit)
    assert sp.shift != 0  # the response's shift is exercised
    ours = prior_density.log_prior(fit).values.reshape(-1)
    model = bayes.build_model(fit.formula, fit.data).backend.model  # Bambi's own defaults, not ours
    beta = fit.idata[marginal.ENGINE_GROUP]["beta"].values.reshape(-1, sp.X.shape[1])
    sds = [r.sigma_name for r in sp.random]
    theirs = _pymc_log_prior(model, ["Intercept", "bodyLength2", RESIDUAL_VARIABLE, *sds])
    for i in POINTS:
        point = {"Intercept": beta[i, 0] + sp.shift, "bodyLength2": beta[i, 1],
                 RESIDUAL_VARIABLE: _flat(fit, RESIDUAL_VARIABLE, i), **{s: _flat(fit, s, i) for s in sds}}
        assert ours[i] == pytest.approx(theirs(point), abs=1e-8)


def test_binomial_log_prior_is_the_bambi_models():
    _, df = beyond("binomial_trials")
    fit = _fit("cbind(sick, size - sick) ~ season + (1|farm)", df, "binomial")
    assert fit.engine == "glmm"
    sp = prior_density.spec(fit)
    ours = prior_density.log_prior(fit).values.reshape(-1)
    model = bayes.build_model(fit.formula, fit.data).backend.model  # Bambi's own defaults, not ours
    beta = fit.idata[marginal.ENGINE_GROUP]["beta"].values.reshape(-1, sp.X.shape[1])
    theirs = _pymc_log_prior(model, [sp.intercept, *(f.name for f in sp.fixed), *(r.sigma_name for r in sp.random)])
    for i in POINTS:
        point = {sp.intercept: beta[i, 0], **{f.name: beta[i, f.index] for f in sp.fixed},
                 **{r.sigma_name: _flat(fit, r.sigma_name, i) for r in sp.random}}
        assert ours[i] == pytest.approx(theirs(point), abs=1e-8)


def _log_jacobian_r_of_l(k: int):
    """log |det dR/dL| for R = L L', L (k, k) lower triangular with unit rows, as maps between their strictly
    lower triangles (L's diagonal follows from the rows' unit norm): PyTensor's exact Jacobian, as a function of L."""
    import pytensor
    import pytensor.tensor as pt

    rows, cols = np.tril_indices(k, -1)
    free = pt.dvector("free")
    Lt = pt.zeros((k, k))
    Lt = pt.set_subtensor(Lt[rows, cols], free)
    diag = pt.sqrt(1.0 - pt.sum(Lt**2, axis=1))
    Lt = Lt + pt.diag(diag)
    R = Lt @ Lt.T
    jacobian = pytensor.function([free], pytensor.gradient.jacobian(R[rows, cols], free))

    def at(L: np.ndarray) -> float:
        sign, logdet = np.linalg.slogdet(jacobian(L[rows, cols]))
        assert sign != 0
        return float(logdet)

    return at


@pytest.mark.parametrize(("formula", "data", "eta"), [
    ("reaction ~ day + (day|subject)", "slopes", 2.5),
    ("y ~ x + z + (1 + x + z|g)", "three_slopes", 1.0),
])  # fmt: skip
def test_correlated_log_prior_is_the_reference_models(formula, data, eta, request):
    """Fixed effects, sds, sigma and LKJ(eta) on the correlation matrix (k = 2 and k = 3) against the reference
    engine's PyMC model of the same Spec, PyMC's Cholesky-factor density turned into the matrix's."""
    df = beyond("slopes_correlated")[1] if data == "slopes" else request.getfixturevalue(data)
    fit = _fit(formula, df, priors=Priors.from_texts([f"cor ~ LKJ({eta})"]))
    sp = prior_density.spec(fit)
    assert [b.eta for b in sp.blocks] == [eta]
    ours = prior_density.log_prior(fit).values.reshape(-1)
    model = reference.pymc_model(sp)
    beta = fit.idata[marginal.ENGINE_GROUP]["beta"].values.reshape(-1, sp.X.shape[1])
    S = beta.shape[0]
    R = prior_density.correlation_matrices(sp, fit.idata["posterior"], S)[0]
    names = [reference.SIGMA, reference.chol_name(0), *(reference.fixed_name(int(c)) for c in np.unique(sp.bcode)),
             *(reference.sd_name(k) for k in range(len(sp.random)))]
    theirs, log_jacobian = _pymc_log_prior(model, names), _log_jacobian_r_of_l(R.shape[-1])
    for i in POINTS:
        L = np.linalg.cholesky(R[i])
        point = {reference.SIGMA: _flat(fit, RESIDUAL_VARIABLE, i), reference.chol_name(0): L}
        for code in np.unique(sp.bcode):
            point[reference.fixed_name(int(code))] = beta[i, sp.bcode == code]
        for k, r in enumerate(sp.random):
            point[reference.sd_name(k)] = _flat(fit, r.sigma_name, i)
        assert ours[i] == pytest.approx(theirs(point) - log_jacobian(L), abs=1e-8)


def test_lkj_density_of_a_2x2_matrix_is_the_beta_density():
    r = np.array([-0.9, -0.3, 0.0, 0.45, 0.99])
    R = np.stack([np.array([[1.0, v], [v, 1.0]]) for v in r])
    for eta in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(prior_density.lkj_logpdf(R, eta), lkj_marginal(eta, 2).logpdf(r), rtol=0,
                                   atol=1e-12)
    assert prior_density.lkj_logpdf(np.array([[1.0, 1.2], [1.2, 1.0]]), 2.0) == -np.inf


_CODES = [(ml.NORMAL, (1.5, 2.0, 0.0)), (ml.STUDENT_T, (-1.0, 0.7, 3.0)), (ml.HALF_NORMAL, (2.5, 0.0, 0.0)),
          (ml.HALF_STUDENT_T, (3.0, 4.0, 0.0)), (ml.HALF_CAUCHY, (2.0, 0.0, 0.0)), (ml.EXPONENTIAL, (0.7, 0.0, 0.0)),
          (ml.GAMMA, (2.0, 1.5, 0.0)), (ml.INVERSE_GAMMA, (3.0, 2.0, 0.0))]  # fmt: skip


@pytest.mark.parametrize(("code", "par"), _CODES)
def test_scipy_distribution_is_the_engines_density(code, par):
    """The scipy distribution of a code has the kernels' density (location: at x; scale: at s, the kernel's
    density of log s less its Jacobian), and the half-Student-t's quantiles invert its cdf."""
    dist = prior_density.distribution(code, np.array(par))
    par = np.array(par)
    for x in (0.05, 0.8, 2.0, 7.5):
        if code < ml.HALF_NORMAL:
            kernel = ml.location_prior(code, par, x)[0]
        else:
            kernel = ml.scale_prior(code, par, np.log(x))[0] - np.log(x)
        assert dist.logpdf(x) == pytest.approx(kernel, abs=1e-10)
    q = np.array([0.025, 0.5, 0.975])
    np.testing.assert_allclose(dist.cdf(dist.ppf(q)), q, rtol=1e-10)


def test_half_student_t_is_pymcs():
    import pymc as pm

    dist = prior_density.distribution(ml.HALF_STUDENT_T, np.array([21.7, 4.0, 0.0]))
    x = np.array([0.5, 10.0, 80.0])
    pymc_logp = pm.logp(pm.HalfStudentT.dist(nu=4.0, sigma=21.7), x).eval()
    # PyMC's constant is 1.3e-9 off the closed form (nu = 4: log 0.75 - log sigma - 5/2 log1p(x^2 / 4 sigma^2)),
    # which scipy's matches to the last bit
    np.testing.assert_allclose(dist.logpdf(x), pymc_logp, rtol=0, atol=1e-8)
    exact = np.log(0.75) - np.log(21.7) - 2.5 * np.log1p((x / 21.7) ** 2 / 4)
    np.testing.assert_allclose(dist.logpdf(x), exact, rtol=1e-15)
    draws = dist.rvs(size=20000, random_state=np.random.default_rng(2))
    assert stats.kstest(draws, dist.cdf).pvalue > 1e-3  # seeded: a wrong sampler fails at any seed


def test_sd_priors_are_keyed_as_the_sd_draws(dragons_fit):
    from bayeslmm.summary.tables import sd_draws

    priors = prior_density.sd_priors(dragons_fit)
    assert list(priors) == list(sd_draws(dragons_fit))
    texts = dragons_fit.priors
    assert priors[("mountainRange", "sd__(Intercept)")].std() == pytest.approx(
        float(texts["1|mountainRange"].split("sigma=")[-1].removesuffix("))")) * np.sqrt(1 - 2 / np.pi), rel=1e-3)


def test_bambi_engine_has_no_log_prior(builtin):
    fit = _fit("testScore ~ bodyLength2 + (1|mountainRange)", builtin, engine="bambi")
    with pytest.raises(marginal.Unsupported, match="bambi engine"):
        prior_density.log_prior(fit)
    assert set(prior_density.sd_priors(fit)) == {("mountainRange", "sd__(Intercept)"), ("Residual", "sd__Observation")}
