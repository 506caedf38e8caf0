"""lme4's ``glmer.nb`` and MASS's ``glm.nb``: negative binomial models with theta estimated.

What ``glmer.nb`` does (lme4 1.1, ``R/glmernb.R``: ``glmer.nb``, ``est_theta``, ``optTheta``,
``refitNB``; ``R/lmer.R``: ``refit.merMod``), and what :func:`fit_glmer_nb` does the same way:

1. A Poisson ``glmer`` of the same formula; MASS's ``theta.ml`` on its fitted values (``limit = 20``,
   ``eps = 2 tol``) gives the starting theta ``th0`` (:func:`theta_ml`).
2. ``glmer`` with ``family = negative.binomial(th0)`` (both of glmer's stages: :func:`glmer.fit_glmer`).
3. R's ``optimize`` (Brent's ``fmin``, :func:`brent_fmin`) of ``-2 logLik`` over ``t = log(theta)`` in
   ``log(th0) +- 3`` with ``tol = 5e-5``; at each ``t`` the last fit is refitted with the new theta
   (``refit``: lme4's PIRLS for the modes at the last fit's ``(theta, beta)``, which gives the new
   linear predictor ``lp0`` its deviance function restarts from, then glmer's stage 2 from the last
   fit's ``(theta, beta)``: here Newton steps on that same deviance function, as
   :meth:`glmer.GlmerProblem.optimize` takes them); ``optimize`` evaluates the objective once more at
   the minimum it returns, and that refit is the answer.

So theta is the minimiser of the Laplace deviance profiled over the other parameters, found to
``optimize``'s tolerance on ``log(theta)`` (``tol / 3`` plus ``sqrt(eps) |t|``, ~2e-5 here): the
reported theta is within about that of the exact profile optimum, in lme4 as here; the other
estimates barely move over such a change of theta. The covariance of the fixed effects is the final
glmer fit's (theta taken as known, as lme4's ``vcov``), and ``logLik`` counts theta as a parameter
(its ``df`` is one more than a glmer fit's).

Without random terms, ``glm.nb`` (MASS 7.3, :func:`fit_glm_nb`): alternate a ``glm`` at theta and
``theta.ml`` at its fitted values until both settle, the joint maximum likelihood (to rounding error
here, to ``glm.control``'s ``epsilon = 1e-8`` in R).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, special

from bayeslmm.errors import DataError
from bayeslmm.lme4 import glmer
from bayeslmm.lme4.lmer import blas_threads
from bayeslmm.model.formula import ModelFrame

#: ``glmer.nb``'s ``tol``: ``optimize``'s tolerance on ``log(theta)``.
NB_TOL = 5e-5
#: ``glmer.nb``'s search interval: ``log(th0) +- NB_INTERVAL``.
NB_INTERVAL = 3.0
#: ``glmer.nb``'s ``initCtrl$limit``: iterations of ``theta.ml`` for the starting value.
THETA_ML_LIMIT = 20
#: ``glm.nb``: alternations of glm and ``theta.ml`` at most, and their relative tolerance on theta.
GLM_NB_MAXIT, GLM_NB_TOL = 100, 1e-11


def theta_ml(y: np.ndarray, mu: np.ndarray, limit: int = THETA_ML_LIMIT, eps: float = 2 * NB_TOL) -> float:
    """MASS's ``theta.ml(y, mu, limit, eps)``: Newton steps on the negative binomial's theta at fixed means,
    from the moment estimate ``n / sum((y / mu - 1)^2)``, until a step is below ``eps`` (unit weights).

    Raises
    ------
    DataError
        If theta runs off (no overdispersion: the maximum is at infinity, the Poisson model).
    """
    y, mu = np.asarray(y, dtype=float), np.asarray(mu, dtype=float)
    t0 = y.size / np.sum((y / mu - 1) ** 2)
    it, delta = 0, 1.0
    while (it := it + 1) < limit and abs(delta) > eps:
        t0 = abs(t0)
        score = np.sum(special.digamma(t0 + y) - special.digamma(t0) + np.log(t0) + 1 - np.log(t0 + mu)
                       - (y + t0) / (mu + t0))
        info = np.sum(-special.polygamma(1, t0 + y) + special.polygamma(1, t0) - 1 / t0 + 2 / (mu + t0)
                      - (y + t0) / (mu + t0) ** 2)
        delta = score / info
        t0 = t0 + delta
    if not np.isfinite(t0) or t0 <= 0:
        raise DataError("the negative binomial's theta has no finite estimate (the counts are not more variable "
                        "than Poisson's): fit them with --family poisson")
    return float(t0)


def brent_fmin(fun, lower: float, upper: float, tol: float) -> float:
    """R's ``optimize(fun, c(lower, upper), tol = tol)$minimum``: Brent's ``fmin`` (R's ``Brent_fmin``,
    golden sections and parabolic steps) step for step, so that the same function gives the same points."""
    c = (3.0 - math.sqrt(5.0)) * 0.5
    eps = math.sqrt(np.finfo(float).eps)
    a, b = lower, upper
    v = w = x = a + c * (b - a)
    d = e = 0.0
    fx = fv = fw = fun(x)
    tol3 = tol / 3.0
    while True:
        xm = (a + b) * 0.5
        tol1 = eps * abs(x) + tol3
        t2 = tol1 * 2.0
        if abs(x - xm) <= t2 - (b - a) * 0.5:
            return x
        p = q = r = 0.0
        if abs(e) > tol1:  # fit a parabola
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = (q - r) * 2.0
            if q > 0.0:
                p = -p
            else:
                q = -q
            r = e
            e = d
        if abs(p) >= abs(q * 0.5 * r) or p <= q * (a - x) or p >= q * (b - x):  # a golden-section step
            e = (b - x) if x < xm else (a - x)
            d = c * e
        else:  # a parabolic step, not too close to the ends
            d = p / q
            u = x + d
            if u - a < t2 or b - u < t2:
                d = tol1 if x < xm else -tol1
        u = x + d if abs(d) >= tol1 else (x + tol1 if d > 0.0 else x - tol1)
        fu = fun(u)
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, w, x = w, x, u
            fv, fw, fx = fw, fx, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu


@dataclass(frozen=True)
class GlmerNbFit:
    """``glmer.nb``'s answer.

    Attributes
    ----------
    glmer : GlmerFit
        The glmer fit at theta (its ``loglik`` is ``logLik(fit)``).
    theta : float
        The negative binomial's theta (lme4's ``getME(fit, "glmer.nb.theta")``; Bambi's ``alpha``).
    theta_start : float
        ``theta.ml`` on the Poisson glmer's fitted values.
    path : tuple of (float, float)
        Each evaluation of ``optimize``: theta and ``-2 logLik`` of the refit there (glmer.nb's
        ``verbose`` output), the last the answer.
    """

    glmer: glmer.GlmerFit
    theta: float
    theta_start: float
    path: tuple[tuple[float, float], ...]


def as_poisson(frame: ModelFrame) -> ModelFrame:
    """The same frame as a Poisson one (glmer.nb's and glm.nb's first fit)."""
    return replace(frame, formula=replace(frame.formula, family="poisson"))


def _with_theta(base: glmer.GlmerProblem, theta: float) -> glmer.GlmerProblem:
    """``base``'s problem with the negative binomial's theta set (lme4's ``setNBdisp``); Z, X and the
    random terms' structure are shared."""
    prob = copy.copy(base)
    prob.family = glmer.NegBinomial(float(theta))
    prob.saturated = glmer.saturated_deviance(prob.family, prob.y, prob.m)
    return prob


def _refit(last: glmer.GlmerProblem, x: np.ndarray, theta: float) -> tuple[glmer.GlmerProblem, glmer.Optimum]:
    """lme4's ``refitNB``: the glmer fit at ``theta`` from the last fit's ``x = (theta, beta)``.

    ``refit`` makes a new response module (``mkRespMod``: its linear predictor from the family's
    ``mustart``, ``y + (y == 0) / 6``), then runs lme4's PIRLS for the modes from there
    (``glmerPwrssUpdate``, ``u`` only for ``nAGQ = 1``; :meth:`glmer.GlmerProblem.lme4_modes`, step for
    step) at the last fit's theta and the fixed effects its predictor module holds: zeros, as glmer's
    stage 2 keeps them in the offset. That linear predictor (the random effects' part alone) is the
    ``lp0`` the deviance function restarts every PIRLS from. Then stage 2 from ``x``: Newton steps on
    that deviance function (L-BFGS-B first if they fail, as :meth:`glmer.GlmerProblem.optimize`), and
    lme4's ``check.boundary``.
    """
    prob = _with_theta(last, theta)
    mustart = prob.y + (prob.y == 0) / 6
    at = np.concatenate([x[: prob.ntheta], np.zeros(prob.p)])
    prob.lp0 = prob.lme4_modes(at, np.log(mustart)).eta - prob.offset
    lower = np.concatenate([prob.structure.lower, np.full(prob.p, -np.inf)])
    fun = prob.lme4_deviance_function()
    opt = prob.newton(fun, x.copy(), lower)
    if not opt.converged or prob._leaves_bound(fun, opt):
        res = optimize.minimize(fun, opt.x, method="L-BFGS-B", jac="3-point",
                                bounds=optimize.Bounds(lower, np.full(lower.size, np.inf)),
                                options={"ftol": 1e-13, "gtol": 1e-8, "maxiter": 2000})
        opt = prob.newton(fun, np.maximum(res.x, lower), lower)
    return prob, prob._check_boundary(opt, True)


def fit_glmer_nb(frame: ModelFrame, tol: float = NB_TOL) -> GlmerNbFit:
    """Fit a negative binomial mixed model (log link) as ``lme4::glmer.nb`` (Laplace): see the module's notes.

    Parameters
    ----------
    frame : ModelFrame
        A negative binomial frame (``family = "negbinomial"``) with at least one random term.
    tol : float
        ``optimize``'s tolerance on ``log(theta)`` (glmer.nb's ``tol``).

    Warns
    -----
    RuntimeWarning
        As :func:`glmer.fit_glmer`; and if theta ends at an end of the search interval.
    """
    poisson = glmer.fit_glmer(as_poisson(frame))
    th0 = theta_ml(frame.y, poisson.modes.mu, limit=THETA_ML_LIMIT, eps=2 * tol)
    first = glmer.fit_glmer(frame, nb_theta=th0)
    state = {"prob": first.problem, "x": np.concatenate([first.modes.theta, first.modes.beta]), "opt": None}
    path: list[tuple[float, float]] = []

    def deviance(t: float) -> float:
        with np.errstate(over="ignore"), blas_threads():
            prob, opt = _refit(state["prob"], state["x"], math.exp(t))
        state.update(prob=prob, x=opt.x, opt=opt)
        path.append((math.exp(t), float(opt.fun)))
        return float(opt.fun)

    lo, hi = math.log(th0) - NB_INTERVAL, math.log(th0) + NB_INTERVAL
    t = brent_fmin(deviance, lo, hi, tol)
    deviance(t)  # R's optimize() evaluates the objective at the minimum once more: that refit is the answer
    if min(t - lo, hi - t) < 10 * tol:
        warnings.warn(f"{frame.formula.text}: glmer.nb's theta {math.exp(t):.4g} is at an end of its search "
                      f"interval ({math.exp(lo):.4g}, {math.exp(hi):.4g}): the estimate may lie beyond it",
                      RuntimeWarning, stacklevel=2)
    fit = glmer.finish(state["prob"], frame, state["opt"], lme4_pirls=True)
    return GlmerNbFit(fit, math.exp(t), th0, tuple(path))


@dataclass(frozen=True)
class GlmNbFit:
    """``glm.nb``'s answer: :class:`glmer.GlmFit` at theta, and theta."""

    glm: glmer.GlmFit
    theta: float


def fit_glm_nb(frame: ModelFrame) -> GlmNbFit:
    """Fit a negative binomial model without random terms as MASS's ``glm.nb``: a Poisson glm, then a glm at
    ``theta.ml`` of its fitted values and ``theta.ml`` again, alternately, until theta settles (the joint
    maximum likelihood; the coefficients' covariance is the glm's at that theta, as ``summary.negbin``)."""
    fit = glmer.fit_glm(as_poisson(frame))
    theta = theta_ml(frame.y, fit.mu, limit=25, eps=1e-12)
    for _ in range(GLM_NB_MAXIT):
        fit = glmer.fit_glm(frame, nb_theta=theta)
        new = theta_ml(frame.y, fit.mu, limit=25, eps=1e-12)
        done = abs(new - theta) < GLM_NB_TOL * theta
        theta = new
        if done:
            break
    else:
        raise DataError(f"{frame.formula.text}: glm.nb's alternation of glm and theta did not settle")
    return GlmNbFit(glmer.fit_glm(frame, nb_theta=theta), theta)
