"""The priors a fit was sampled with: each draw's log prior density, and each prior as a scipy distribution.

Both read the engines' own reading of the model (:func:`spec`: ``bcode/bpar`` per internal
coefficient, ``scode/spar`` per standard deviation, the residual sd last for a Gaussian model, an LKJ
shape per correlated block), so what is shown and tested is what was sampled.

The log prior is the density of the **constrained** parameters, the scale on which the user states
the priors and the posterior is reported (brms's ``lprior``, PyMC's ``compute_log_prior``):

- a fixed effect: its location prior at the engine's internal coefficient (the intercept's prior is on
  the centred intercept, as Bambi states it; a Gaussian response's shift moves the prior's mean and
  the coefficient alike, so the density is the same);
- a standard deviation ``s``: its scale prior at ``s``, without the Jacobian of the log transform the
  sampler adds (:func:`marginal_lik.scale_prior` returns the density of ``log s``: ``log s`` is taken off);
- a correlation matrix ``R``: LKJ(eta) on its off-diagonal elements, ``c_k(eta) det(R)^(eta - 1)``
  (:func:`lkj_logpdf`), without the Jacobian of the Cholesky factor or of the unconstrained values
  (PyMC's ``LKJCorr`` is a density on the Cholesky factor instead: the two differ by
  ``sum_i (k - i) log L_ii``, which is not constant even for eta = 1).

Power-scaling (:mod:`bayeslmm.summary.sensitivity`) raises this density to a power: on this scale a
uniform LKJ(1) prior is unaffected by power-scaling, as a uniform prior should be, and a prior on an
sd is perturbed as written, not as the sampler's ``log s`` sees it. The random effects' normal
distribution given the sds is part of neither the prior nor the likelihood there (as in brms).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import xarray as xr
from scipy import special, stats

from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.marginal import ENGINE_GROUP, Unsupported
from bayeslmm.labels import RESIDUAL_VARIABLE, SAMPLE_DIMS, classify


class _HalfStudentT(stats.rv_continuous):
    """|T| for T ~ Student-t(nu): PyMC's and Bambi's ``HalfStudentT(nu, sigma)`` with ``scale=sigma``."""

    def _argcheck(self, nu):
        return nu > 0

    def _pdf(self, x, nu):
        return 2.0 * stats.t.pdf(x, nu)

    def _logpdf(self, x, nu):
        return np.log(2.0) + stats.t.logpdf(x, nu)

    def _cdf(self, x, nu):
        return 2.0 * stats.t.cdf(x, nu) - 1.0

    def _sf(self, x, nu):
        return 2.0 * stats.t.sf(x, nu)

    def _ppf(self, q, nu):
        return stats.t.ppf(0.5 + 0.5 * q, nu)

    def _isf(self, q, nu):
        return stats.t.isf(0.5 * q, nu)

    def _rvs(self, nu, size=None, random_state=None):
        return np.abs(stats.t.rvs(nu, size=size, random_state=random_state))


half_student_t = _HalfStudentT(a=0.0, name="half_student_t", shapes="nu")


def distribution(code: int, par) -> stats.rv_continuous:
    """A prior code and its parameters (:mod:`marginal_lik`'s codes, 3 parameters) as a frozen scipy distribution.

    The one mapping from the engines' codes to distributions: exact quantiles and densities for
    figures and the report, and draws for the prior predictive check.
    """
    code, par = int(code), np.asarray(par, dtype=float)
    if code == ml.NORMAL:
        return stats.norm(par[0], par[1])
    if code == ml.STUDENT_T:
        return stats.t(par[2], par[0], par[1])
    if code == ml.HALF_NORMAL:
        return stats.halfnorm(scale=par[0])
    if code == ml.HALF_STUDENT_T:
        return half_student_t(par[1], scale=par[0])
    if code == ml.HALF_CAUCHY:
        return stats.halfcauchy(scale=par[0])
    if code == ml.EXPONENTIAL:
        return stats.expon(scale=1.0 / par[0])
    if code == ml.GAMMA:
        return stats.gamma(par[0], scale=1.0 / par[1])
    if code == ml.INVERSE_GAMMA:
        return stats.invgamma(par[0], scale=par[1])
    raise ValueError(f"unknown prior code {code}")


def lkj_logpdf(R: np.ndarray, eta: float) -> np.ndarray:
    """Log density of LKJ(eta) at correlation matrices ``R`` (..., k, k), normalising constant included.

    ``log c_k(eta) + (eta - 1) log det R`` on the ``k(k-1)/2`` off-diagonal elements (Lewandowski,
    Kurowicka and Joe 2009); ``-inf`` where ``R`` is not positive definite.
    """
    R = np.asarray(R, dtype=float)
    k = R.shape[-1]
    i = np.arange(1, k)
    log_c = (k - 1) * special.gammaln(eta + 0.5 * (k - 1)) - np.sum(
        0.5 * i * np.log(np.pi) + special.gammaln(eta + 0.5 * (k - 1 - i)))
    sign, logdet = np.linalg.slogdet(R)
    return np.where(sign > 0, log_c + (eta - 1.0) * logdet, -np.inf)


def spec(fit):
    """The engines' reading of a fit's model: ``marginal.spec`` for a Gaussian model, the GLMM engine's
    (``glmm.spec``, no centring) for a binomial or Poisson one, whichever engine sampled it.

    Raises
    ------
    Unsupported
        When the engines cannot read the model's priors (the reason in one line).
    """
    from bayeslmm.engines import bayes, glmm, marginal
    from bayeslmm.model.formula import model_frame

    model = bayes.prior_model_of(fit)
    frame = model_frame(fit.formula, fit.data)
    if fit.formula.is_glmm:
        return glmm.spec(fit.formula, frame, model, user_priors(fit), centring_rule="noncentred")
    return marginal.spec(fit.formula, frame, model, user_priors(fit))


def user_priors(fit):
    """The priors the user set for a fit (none for an object without them)."""
    from bayeslmm.model.priors import Priors

    return getattr(fit, "user_priors", None) or Priors()


def sd_priors(fit) -> dict[tuple[str, str], stats.rv_continuous]:
    """The prior of every standard deviation of a fit, keyed ``(group, term)`` as
    :func:`bayeslmm.summary.tables.sd_draws` (the residual's last, for a Gaussian model)."""
    sp = spec(fit)
    out = {}
    for k, r in enumerate(sp.random):
        _, group, term = classify(r.sigma_name, r.level)
        out[(group, term)] = distribution(sp.scode[k], sp.spar[k])
    if len(sp.scode) > len(sp.random):
        _, group, term = classify(RESIDUAL_VARIABLE)
        out[(group, term)] = distribution(sp.scode[-1], sp.spar[-1])
    return out


def correlation_matrices(sp, post, S: int) -> list[np.ndarray]:
    """Each correlated block's correlation matrices (S, k, k), from the posterior's correlation variables."""
    out = []
    for block in sp.blocks:
        k = len(block.coefs)
        R = np.broadcast_to(np.eye(k), (S, k, k)).copy()
        for var, (a, b) in zip(block.variables, block.pairs, strict=True):
            R[:, a, b] = R[:, b, a] = np.asarray(post[var].transpose(*SAMPLE_DIMS).values, dtype=float).reshape(S)
        out.append(R)
    return out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _location_priors(beta, bcode, bpar):
    """Sum over coefficients of :func:`marginal_lik.location_prior`, per draw (rows of ``beta``)."""
    out = np.zeros(beta.shape[0])
    for s in range(beta.shape[0]):
        for a in range(beta.shape[1]):
            out[s] += ml.location_prior(bcode[a], bpar[a], beta[s, a])[0]
    return out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _scale_priors(log_s, scode, spar):
    """Sum over sds of the density of ``s`` per draw: :func:`marginal_lik.scale_prior` is the density of
    ``log s`` (its Jacobian, ``log s``, included), so the Jacobian is taken off."""
    out = np.zeros(log_s.shape[0])
    for s in range(log_s.shape[0]):
        for k in range(log_s.shape[1]):
            out[s] += ml.scale_prior(scode[k], spar[k], log_s[s, k])[0] - log_s[s, k]
    return out


def log_prior(fit) -> xr.DataArray:
    """Each draw's log prior density of the model's parameters (fixed effects, sds, residual sd, correlations).

    The densities of the constrained parameters (see the module's note), normalising constants
    included, so the sum equals PyMC's ``compute_log_prior`` of the same priors over those parameters.
    Read from the engine's internal coefficients (group ``marginal_engine``) and the posterior's sds
    and correlations.

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw)``, name ``log_prior``.

    Raises
    ------
    Unsupported
        For a posterior without the engines' internal draws (Bambi's engine) or priors the engines cannot read.
    """
    if ENGINE_GROUP not in fit.idata.children:
        raise Unsupported(f"the {fit.engine} engine's posterior has no internal coefficients; the log prior is "
                          "computed for the marginal, reference and GLMM engines")
    sp = spec(fit)
    post = fit.idata["posterior"]
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    S = chains * draws
    beta = np.asarray(fit.idata[ENGINE_GROUP]["beta"].values, dtype=float).reshape(S, -1)
    if beta.shape[1] != len(sp.bcode):
        raise ValueError("the saved posterior does not match the model: refit it")
    total = _location_priors(np.ascontiguousarray(beta), sp.bcode, np.ascontiguousarray(sp.bpar))
    sds = []
    for r in sp.random:
        da = post[r.sigma_name] if r.level_dim is None else post[r.sigma_name].sel({r.level_dim: r.level})
        sds.append(da.transpose(*SAMPLE_DIMS).values.reshape(S))
    if len(sp.scode) > len(sp.random):
        sds.append(post[RESIDUAL_VARIABLE].transpose(*SAMPLE_DIMS).values.reshape(S))
    if sds:
        total += _scale_priors(np.log(np.column_stack(sds).astype(float)), sp.scode, np.ascontiguousarray(sp.spar))
    for block, R in zip(sp.blocks, correlation_matrices(sp, post, S), strict=True):
        total += lkj_logpdf(R, block.eta)
    if getattr(sp, "acode", -1) >= 0:  # the negative binomial's alpha (lme4's theta)
        from bayeslmm.labels import NB_SIZE_VARIABLE

        alpha = post[NB_SIZE_VARIABLE].transpose(*SAMPLE_DIMS).values.reshape(S, 1).astype(float)
        total += _scale_priors(np.log(alpha), np.array([sp.acode]), np.ascontiguousarray(sp.apar.reshape(1, 3)))
    return xr.DataArray(total.reshape(chains, draws), dims=SAMPLE_DIMS, name="log_prior",
                        coords={d: post[d].values for d in SAMPLE_DIMS})
