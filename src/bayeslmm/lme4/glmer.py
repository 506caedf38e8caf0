"""lme4's ``glmer`` machinery: PIRLS, the Laplace and adaptive Gauss-Hermite deviances, two stages.

What lme4 1.1 does (``R/lmer.R``: ``glmer``, ``mkdevfun``; ``R/modular.R``: ``mkGlmerDevfun``,
``optimizeGlmer``, ``updateGlmerDevfun``; ``src/external.cpp``: ``pwrssUpdate``, ``glmerLaplace``,
``glmerAGQ``; ``src/respModule.cpp``, ``src/glmFamily.cpp``), and what this module does the same way:

- **PIRLS.** For ``eta = offset + X beta + Z Lambda_theta u`` the conditional modes minimise the
  penalized deviance ``-2 log p(y | eta) + ||u||^2``. ``A = Lambda' Z' W Z Lambda + I`` with the IRLS
  weights ``W`` (trials x mu (1 - mu) for the binomial, mu for the Poisson). Stage 1 (``nAGQ = 0``)
  solves for ``(u, beta)`` jointly; stage 2 for ``u`` at given ``(theta, beta)``.
  :meth:`GlmerProblem.modes` takes Newton steps (Fisher scoring, for the canonical logit and log
  links) with lme4's step halving until the modes are exact to rounding error (Newton decrement
  below :data:`PIRLS_TOL`, then one more step). :meth:`GlmerProblem.lme4_modes` is lme4's own
  stage-2 PIRLS step for step: IRLS from where stage 1 ended, stopped at a relative change of
  ``tolPwrss = 1e-7``, ``ldL2`` from the weights of the iterate before the last.
- **Laplace** (``nAGQ = 1``, ``glmResp::Laplace``): ``ldL2 + ||u||^2 + aic``, with ``ldL2 =
  log det A`` at the modes and ``aic = -2 log p(y | mu)`` the family's full log-likelihood (the
  binomial's with its binomial coefficients: weights = trials, as ``cbind`` gives); ``logLik =
  -deviance / 2``.
- **AGQ** (``nAGQ > 1``, one scalar random-effect term; ``glmerAGQ``): per level, ``devc0 = u^2 +
  sum of deviance residuals``, and with ``sd = 1 / L_jj`` and lme4's normalized Gauss-Hermite rule
  (``GHrule``: nodes ``z``, weights summing to 1, symmetrized) ``mult = sum_k w_k exp(-(devc(u + z_k
  sd) - devc0) / 2 - log phi(z_k)) / sqrt(2 pi)``; the deviance is ``sum devc0 + ldL2 - 2 sum log
  mult``. Built on deviance residuals, it lacks the saturated model's ``-2 log p(y | mu = y)``
  (:func:`saturated_deviance`): lme4's logLik with ``nAGQ > 1`` is on another scale than the Laplace
  one (zero difference only for 0/1 responses). :attr:`GlmerFit.loglik` adds it back (a log-likelihood
  comparable with the Laplace fit's and with AIC/BIC across models); :attr:`GlmerFit.lme4_deviance`
  keeps lme4's number. With one node AGQ is the Laplace deviance less that constant.
- **Optimisation.** Stage 1 minimises the ``nAGQ = 0`` deviance over theta (lme4: bobyqa; here
  L-BFGS-B under lme4's bounds, diagonal theta >= 0) and keeps its linear predictor (``lp0``).
  Stage 2 minimises the ``nAGQ`` deviance over ``(theta, beta)`` (lme4: Nelder-Mead; here Newton
  steps on ``deriv12``'s gradient and Hessian, first on the exact deviance, then on lme4's own from
  there) until a step is below :data:`NEWTON_XTOL`, far below where lme4's Nelder-Mead stops.
  lme4's ``check.boundary`` (``boundary.tol = 1e-5``) is kept: a diagonal theta that ends within it
  of 0 is set to 0 when that lowers the deviance.
- **Why lme4's own PIRLS.** lme4's deviance function is the Laplace deviance at slightly inexact
  modes: a smooth function near the optimum, but not the exact one. On the reference data
  (``tests/test_glmer.py``) its optimum is up to 1.6e-3 (relative) from the exact Laplace optimum,
  and the Hessian-based SEs of the two differ by up to 1.3%; minimising lme4's own function gives R's
  estimates to 5e-5, its logLik to 1e-9 and its SEs to 5e-6. So :func:`fit_glmer` does that by
  default (``lme4_pirls=True``); the exact fit is one argument away. 25-node AGQ does not care
  (quadrature that exact does not depend on where it is centred).
- **vcov** (``vcov.merMod``, ``use.hessian = TRUE``): lme4's ``deriv12`` (central differences,
  ``delta = 1e-4``) of the stage-2 deviance at the optimum gives ``H``; the fixed effects'
  covariance is the beta block of ``2 H^-1``. lme4 takes it when the Hessian was computed (not for a
  singular fit, nor with ``n >= 1e4`` or 20 or more parameters) and is positive definite; otherwise
  the ``RX``-based ``(X'WX - X'WZ Lambda A^-1 Lambda'Z'WX)^-1`` at the modes, as here.
- **deviance** (R's ``deviance()`` of a glmer fit): the sum of the squared deviance residuals at the
  conditional modes (not ``-2 logLik``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import hermite_e
from scipy import linalg, optimize, sparse, special, stats

from bayeslmm.errors import DataError, OptionsError
from bayeslmm.lme4.lmer import DENSE_MAX_Q, LmerProblem, _BlockDiag, _DenseFactor, _Schur, blas_threads
from bayeslmm.model.formula import ModelFrame
from bayeslmm.model.options import NAGQ_MAX

#: Families of :class:`GlmerProblem` (links: logit, log, log). The negative binomial's is
#: :class:`NegBinomial` at a given theta (:mod:`bayeslmm.lme4.glmer_nb` estimates theta, as ``glmer.nb``).
FAMILIES = ("binomial", "poisson", "negbinomial")
#: PIRLS stops when the Newton decrement (the penalized deviance a step would remove) is below this,
#: after taking that last step (so the modes are exact to rounding error: the deviance is smooth
#: enough for finite-difference Hessians).
PIRLS_TOL = 1e-14
#: lme4's ``tolPwrss`` (``glmerControl``): its PIRLS stops at this relative change of the penalized deviance.
LME4_TOL_PWRSS = 1e-7
#: Most PIRLS iterations (lme4's ``maxit = 100``).
PIRLS_MAXIT = 100
#: Most step halvings in one PIRLS iteration (lme4's ``maxstephalfit``).
MAX_HALVINGS = 20
#: lme4's ``deriv12`` step.
DERIV_DELTA = 1e-4
#: Newton steps stop after a step below this (relative to max(1, |x|)) in every coordinate: with a
#: Hessian exact to ~1e-6, the next step would be ~1e-12.
NEWTON_XTOL = 1e-6
#: lme4's ``boundary.tol`` for glmer.
BOUNDARY_TOL = 1e-5
#: lme4's ``isSingular`` / ``getSingTol()``.
SINGULAR_TOL = 1e-4
#: lme4 computes the Hessian (``calc.derivs``) below these numbers of rows and parameters
#: (``glmerControl``: ``check.conv.nobsmax = 1e4``, ``check.conv.nparmax = 20``).
DERIVS_NOBS_MAX, DERIVS_NPAR_MAX = 10_000, 20
#: A fitted probability this close to 0 or 1 (or a Poisson mean below it) is "numerically 0 or 1".
#: R's ``glm.fit`` warns below ``10 * .Machine$double.eps``, but its IRLS stops (relative change
#: 1e-8) while a separated coefficient is near -20 to -35; PIRLS here goes on to rounding error, where
#: such a mean is ~1e-14 (not below R's threshold): no real model has fitted means this extreme.
EPS_FITTED = 1e-10


# ---------------------------------------------------------------------------------------
# The families: logit binomial with trials, log Poisson, log negative binomial at a given theta
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NegBinomial:
    """The negative binomial with log link at size ``theta``: MASS's ``negative.binomial(theta)``, the
    family of ``glmer.nb``'s fits (``Var(y) = mu + mu^2 / theta``; lme4's C++ ``negativeBinomialDist``).

    Its IRLS weights are the expected information ``mu theta / (mu + theta)`` (lme4's ``sqrtWrkWt``), also
    in the Laplace approximation's ``ldL2``; the observed information differs (a non-canonical link).
    """

    theta: float


def family_of(name: str, nb_theta: float | None = None):
    """The family the functions here take: ``"binomial"``, ``"poisson"``, or :class:`NegBinomial` at ``nb_theta``."""
    if name not in FAMILIES:
        raise OptionsError(f"glmer fits the families {', '.join(FAMILIES)}, not {name!r}")
    if name != "negbinomial":
        return name
    if nb_theta is None or not np.isfinite(nb_theta) or nb_theta <= 0:
        raise OptionsError(f"a negative binomial glmer needs its theta (> 0), not {nb_theta!r}: glmer_nb estimates it")
    return NegBinomial(float(nb_theta))


def mean(family: str, eta: np.ndarray) -> np.ndarray:
    """Inverse link: ``plogis(eta)`` (binomial, a probability) or ``exp(eta)`` (Poisson, negative binomial)."""
    return special.expit(eta) if family == "binomial" else np.exp(eta)


def neg2loglik(family: str, eta: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """``-2 log p(y | eta)`` summed: lme4's ``aic()`` (binomial coefficients and ``log y!`` included).

    Binomial: ``y`` successes out of ``m`` trials; Poisson and negative binomial: ``y`` counts (``m`` unused).
    """
    if family == "binomial":
        ll = y * eta - m * np.logaddexp(0.0, eta) + _log_choose(m, y)
    elif isinstance(family, NegBinomial):  # each term stays small as theta grows (the Poisson limit)
        th = family.theta
        log1p_mu = np.logaddexp(0.0, eta - np.log(th))  # log(1 + mu / theta)
        ll = (y * (eta - np.log(th) - log1p_mu) - th * log1p_mu + log_rising(th, y) - special.gammaln(y + 1))
    else:
        ll = y * eta - np.exp(eta) - special.gammaln(y + 1)
    return -2.0 * float(np.sum(ll))


def log_rising(a: float, y: np.ndarray) -> np.ndarray:
    """``log Gamma(a + y) - log Gamma(a)`` for counts ``y``, without the difference of two huge numbers when
    ``a`` is large (Stirling's series of both: exact to rounding error above 1e5)."""
    if a < 1e5:
        return special.gammaln(y + a) - special.gammaln(a)
    return (a - 0.5) * np.log1p(y / a) + y * np.log(a + y) - y + (1 / (a + y) - 1 / a) / 12


def _log_choose(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    return special.gammaln(m + 1) - special.gammaln(y + 1) - special.gammaln(m - y + 1)


def working(family: str, eta: np.ndarray, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score and weight per row: ``d log p / d eta`` and ``-d^2 log p / d eta^2`` (the IRLS weight)."""
    if isinstance(family, NegBinomial):  # the expected information (lme4's IRLS weight); q = mu / (theta + mu)
        th = family.theta
        q = special.expit(eta - np.log(th))
        return y * (1.0 - q) - th * q, th * q
    mu = mean(family, eta)
    if family == "binomial":
        return y - m * mu, m * mu * (1.0 - mu)
    return y - mu, mu


def _xlogy_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a log(a / b)`` with ``0 log 0 = 0``."""
    return special.xlogy(a, a) - special.xlogy(a, b)


def deviance_residuals(family: str, mu: np.ndarray, y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Squared deviance residuals (``family()$dev.resid``): ``2 [log p(y | mu = y) - log p(y | mu)]``."""
    if family == "binomial":
        return 2.0 * (_xlogy_ratio(y, m * mu) + _xlogy_ratio(m - y, m * (1.0 - mu)))
    if isinstance(family, NegBinomial):
        th = family.theta
        return 2.0 * (_xlogy_ratio(y, mu) - (y + th) * np.log1p((y - mu) / (mu + th)))
    return 2.0 * (_xlogy_ratio(y, mu) - (y - mu))


def saturated_deviance(family: str, y: np.ndarray, m: np.ndarray) -> float:
    """``-2 log p(y | mu = y)``: what lme4's AGQ deviance leaves out (0 for 0/1 responses)."""
    if family == "binomial":
        ll = _log_choose(m, y) + special.xlogy(y, y) + special.xlogy(m - y, m - y) - special.xlogy(m, m)
    elif isinstance(family, NegBinomial):
        th = family.theta
        ll = (special.gammaln(y + th) - special.gammaln(th) - special.gammaln(y + 1) + th * np.log(th)
              + special.xlogy(y, y) - (y + th) * np.log(y + th))
    else:
        ll = special.xlogy(y, y) - y - special.gammaln(y + 1)
    return -2.0 * float(np.sum(ll))


def gh_rule(n: int) -> np.ndarray:
    """lme4's ``GHrule(n)``: columns ``z``, ``w`` (summing to 1) and ``log dnorm(z)``, symmetrized."""
    z, w = hermite_e.hermegauss(n)
    w = w / w.sum()
    z, w = (z - z[::-1]) / 2, (w + w[::-1]) / 2
    return np.column_stack([z, w, stats.norm.logpdf(z)])


def check_nagq(frame: ModelFrame, nagq: int) -> int:
    """``nagq`` as an int if glmer may integrate ``frame``'s random effects with it, else a one-line OptionsError.

    lme4's rules on the data: 1 to :data:`NAGQ_MAX` nodes; more than 1 only for a single random term
    with one column (``(1|g)``, ``(0 + x|g)`` with ``x`` numeric; a factor slope is a column per level).
    :func:`bayeslmm.model.options.check_nagq` checks what a formula shows before the data is read.
    """
    nagq = int(nagq)
    if not 1 <= nagq <= NAGQ_MAX:
        raise OptionsError(f"nAGQ must be between 1 and {NAGQ_MAX} (1 = Laplace), not {nagq}")
    if nagq > 1 and (len(frame.blocks) != 1 or frame.blocks[0].values.shape[1] != 1):
        raise OptionsError("nAGQ > 1 is only available for models with a single, scalar random-effects term "
                           f"(as in lme4); {frame.formula.text!r} has others: use nAGQ = 1 (Laplace)")
    return nagq


# ---------------------------------------------------------------------------------------
# lme4's deriv12
# ---------------------------------------------------------------------------------------


def deriv12(fun, x: np.ndarray, delta: float = DERIV_DELTA, fx: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian by central differences, as lme4's ``deriv12`` (no bounds)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    fx = float(fun(x)) if fx is None else fx
    g, h = np.empty(n), np.empty((n, n))

    def at(*moves: tuple[int, float]) -> float:
        xx = x.copy()
        for i, s in moves:
            xx[i] += s * delta
        return float(fun(xx))

    for j in range(n):
        fadd, fsub = at((j, 1)), at((j, -1))
        h[j, j] = (fadd - 2 * fx + fsub) / delta**2
        g[j] = (fadd - fsub) / (2 * delta)
        for i in range(j):
            h[i, j] = h[j, i] = (at((i, 1), (j, 1)) - at((i, 1), (j, -1)) - at((i, -1), (j, 1))
                                 + at((i, -1), (j, -1))) / (2 * delta) ** 2
    return g, h


# ---------------------------------------------------------------------------------------
# PIRLS and the deviances
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Modes:
    """PIRLS at one ``(theta, beta)``: the conditional modes and what the deviances need.

    Attributes
    ----------
    theta, beta, u : ndarray
    lam : sparse matrix
        ``Lambda_theta``.
    eta, mu, weights : ndarray
        Linear predictor and mean at the modes; the IRLS weights ``W`` of ``factor`` (at the modes for
        :meth:`GlmerProblem.modes`, at the iterate before the last for :meth:`GlmerProblem.lme4_modes`).
    factor : object
        Factor of ``A = Lambda' Z' W Z Lambda + I`` (``logdet``, ``solve``, ``inv_diag_blocks``).
    a_diag : ndarray or None
        ``A``'s diagonal when it is diagonal (one scalar term: lme4's ``L_jj^2``).
    """

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    lam: sparse.csr_matrix
    eta: np.ndarray
    mu: np.ndarray
    weights: np.ndarray
    factor: object
    a_diag: np.ndarray | None

    @property
    def ldl2(self) -> float:
        """``log det A`` (lme4's ``ldL2``)."""
        return self.factor.logdet


class _Diag:
    """A diagonal ``A`` (one scalar random-effect term)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.logdet = float(np.sum(np.log(a)))

    def solve(self, b):
        if sparse.issparse(b):
            return sparse.diags(1.0 / self.a) @ b
        return b / (self.a if b.ndim == 1 else self.a[:, None])

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        return [(1.0 / self.a)[:, None, None]]


class GlmerProblem:
    """lme4's glmer deviance for one model frame: PIRLS, Laplace and AGQ, the two-stage optimum.

    Parameters
    ----------
    frame : ModelFrame
        A binomial, Poisson or negative binomial frame with at least one random term.
    nagq : int
        Number of adaptive Gauss-Hermite nodes: 1 is the Laplace approximation; more needs a
        single scalar random-effect term (lme4's rule).
    nb_theta : float, optional
        The negative binomial's theta (a negative binomial frame only).
    """

    def __init__(self, frame: ModelFrame, nagq: int = 1, nb_theta: float | None = None) -> None:
        family = family_of(frame.family, nb_theta)
        if isinstance(family, NegBinomial) and int(nagq) != 1:
            raise OptionsError("a negative binomial glmer (glmer.nb) is fitted by the Laplace approximation here "
                               "(nAGQ = 1); adaptive quadrature is for binomial and Poisson models")
        if not frame.blocks:
            raise OptionsError(f"{frame.formula.text!r} has no random terms; glmer needs one (use a glm)")
        nagq = check_nagq(frame, nagq)
        self.structure = s = LmerProblem(frame, reml=False, dense=False)  # Z, Lambda's pattern, theta's names
        self.family, self.nagq = family, nagq
        self.frame, self.X, self.y = frame, frame.X, frame.y
        self.m = frame.trials if frame.trials is not None else np.ones_like(frame.y)
        self.offset = frame.offset if frame.offset is not None else np.zeros_like(frame.y)
        self.n, self.p = self.X.shape
        self.q, self.ntheta = s.q, s.diag_theta.size
        self.Z = sparse.csr_matrix(s.Z)
        self.rule = gh_rule(nagq) if nagq > 1 else None
        self.scalar = len(s.blocks) == 1 and s.blocks[0].values.shape[1] == 1
        self._pairs = None  # level pairs of every two scalar terms (a fast path for A)
        if len(s.blocks) > 1 and all(b.values.shape[1] == 1 for b in s.blocks):
            nb = len(s.blocks)
            self._pairs = np.empty((nb, nb), dtype=object)
            for t in range(nb):
                for r in range(t, nb):
                    self._pairs[t, r] = s.blocks[t].index * len(s.blocks[r].levels) + s.blocks[r].index
        self.saturated = saturated_deviance(self.family, self.y, self.m)
        self._u = np.zeros(self.q)
        self._beta = glm_start(self.family, self.X, self.y, self.m, self.offset)

    # -- linear algebra ------------------------------------------------------------------

    def lam(self, theta: np.ndarray) -> sparse.csr_matrix:
        """``Lambda_theta`` (sparse), from :meth:`LmerProblem.lam`."""
        lam = self.structure.lam(theta)
        return lam if sparse.issparse(lam) else sparse.csr_matrix(lam)

    def factor(self, theta: np.ndarray, zl: sparse.csr_matrix, w: np.ndarray):
        """Factor of ``A = Lambda' Z' W Z Lambda + I``, blockwise: the first term (most levels) is
        diagonal (a scalar term) or block diagonal; the other terms enter through their dense Schur
        complement ``A22 - A12' A11^-1 A12`` (at least ``I``: no cancellation). Several terms, not all
        scalar, with at most :data:`~bayeslmm.lme4.lmer.DENSE_MAX_Q` random effects: ``A`` dense."""
        if len(self.structure.blocks) == 1:
            return self._term_factor(theta, w)
        if self._pairs is None and self.q <= DENSE_MAX_Q:  # small: dense products beat sparse ones' overhead
            zd = zl.toarray()
            a = zd.T @ (w[:, None] * zd)
            a[np.diag_indices_from(a)] += 1.0
            return _DenseFactor.of(a)
        first = self._term_factor(theta, w)
        if self._pairs is not None:  # scalar terms only: the blocks of A from weighted counts
            t0 = self.structure.blocks[0]
            nl0 = len(t0.levels)
            w0 = w * t0.values[:, 0]
            a12 = np.hstack([(theta[0] * theta[t] * np.bincount(self._pairs[0, t], w0 * blk.values[:, 0],
                                                                  minlength=nl0 * len(blk.levels))).reshape(nl0, -1)
                             for t, blk in enumerate(self.structure.blocks[1:], 1)])
            c = a12 / first.a[:, None]
            s = self._dense_rest(theta, w) - a12.T @ c
            return _Schur(first, c, _DenseFactor.of(s))
        q1 = self.structure.layout[1][0]
        z1, z2 = zl[:, :q1], zl[:, q1:]
        a12 = sparse.csr_matrix(z1.T @ z2.multiply(w[:, None]))
        c = sparse.csr_matrix(first.solve(a12))
        s = (z2.T @ z2.multiply(w[:, None])).toarray() - (a12.T @ c).toarray()
        s[np.diag_indices_from(s)] += 1.0
        return _Schur(first, c, _DenseFactor.of(s))

    def _dense_rest(self, theta: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``A22``, the block of ``A`` of every scalar term but the first, dense."""
        blocks, layout = self.structure.blocks, self.structure.layout
        q1 = layout[1][0]
        a = np.zeros((self.q - q1, self.q - q1))
        for t in range(1, len(blocks)):
            ot, nt = layout[t][0] - q1, len(blocks[t].levels)
            vt = blocks[t].values[:, 0]
            for r in range(t, len(blocks)):
                orr, nr = layout[r][0] - q1, len(blocks[r].levels)
                cnt = np.bincount(self._pairs[t, r], w * vt * blocks[r].values[:, 0], minlength=nt * nr)
                a[ot : ot + nt, orr : orr + nr] = theta[t] * theta[r] * cnt.reshape(nt, nr)
                a[orr : orr + nr, ot : ot + nt] = a[ot : ot + nt, orr : orr + nr].T
        a[np.diag_indices_from(a)] += 1.0
        return a

    def _term_factor(self, theta: np.ndarray, w: np.ndarray) -> _Diag | _BlockDiag:
        """``Lambda_1' Z_1' W Z_1 Lambda_1 + I`` of the first term: one (k x k) block per level."""
        s = self.structure
        blk = s.blocks[0]
        nl, k = len(blk.levels), blk.values.shape[1]
        if k == 1:
            return _Diag(1.0 + theta[0] ** 2 * np.bincount(blk.index, w * blk.values[:, 0] ** 2, minlength=nl))
        t = np.zeros((k, k))
        for m, (i, j) in enumerate(s.tri(k)):
            t[i, j] = theta[m]
        m11 = np.zeros((nl, k, k))
        np.add.at(m11, blk.index, (w[:, None] * blk.values)[:, :, None] * blk.values[:, None, :])
        return _BlockDiag(np.einsum("ji,ljm,mk->lik", t, m11, t) + np.eye(k))

    # -- PIRLS -----------------------------------------------------------------------------

    def modes(self, theta: np.ndarray, beta: np.ndarray | None = None) -> Modes:
        """PIRLS at ``theta``: the modes ``u`` at given ``beta`` (stage 2) or ``(u, beta)`` jointly
        (``beta=None``, stage 1), from the last modes found (a warm start).

        Raises
        ------
        DataError
            If step halving cannot lower the penalized deviance or PIRLS does not converge (lme4's
            ``pwrssUpdate`` errors).
        """
        theta = np.asarray(theta, dtype=float)
        joint = beta is None
        beta = self._beta.copy() if joint else np.asarray(beta, dtype=float)
        u = self._u.copy()
        lam = self.lam(theta)
        zl = sparse.csr_matrix(self.Z @ lam)
        fam, y, m, X = self.family, self.y, self.m, self.X
        base = self.offset + (0.0 if joint else X @ beta)

        def eta_of(u_, b_):
            return base + zl @ u_ + (X @ b_ if joint else 0.0)

        eta = eta_of(u, beta)
        pdev = neg2loglik(fam, eta, y, m) + u @ u
        if not np.isfinite(pdev):  # the last theta's modes overflow at this one (exp(eta)): start from u = 0
            u = np.zeros_like(u)
            eta = eta_of(u, beta)
            pdev = neg2loglik(fam, eta, y, m) + u @ u
        last, restarted = False, not np.any(u)
        for _ in range(PIRLS_MAXIT):
            r, w = working(fam, eta, y, m)
            try:
                fac = self.factor(theta, zl, w)
            except np.linalg.LinAlgError:
                # weights so large (exp(eta) at the last theta's modes) that the factor loses positive
                # definiteness in rounding: restart from u = 0 once, as from a fresh start
                if restarted:
                    raise DataError(f"PIRLS cannot factor the model at theta = {theta}: the linear predictor "
                                    "overflows; centre or scale the covariates of random slopes (e.g. "
                                    "scale(x))") from None
                restarted, u = True, np.zeros_like(u)
                eta = eta_of(u, beta)
                pdev = neg2loglik(fam, eta, y, m) + u @ u
                continue
            if last:
                break
            gu = zl.T @ r - u
            if joint:
                c, s = schur(X, zl, w, fac)
                gb = X.T @ r
                db = _solve_spd(s, gb - c.T @ gu)
                du = fac.solve(gu) - c @ db
                dec = float(gu @ du + gb @ db)
            else:
                du, db = fac.solve(gu), 0.0
                dec = float(gu @ du)
            for _ in range(MAX_HALVINGS + 1):
                u_new, b_new = u + du, beta + db
                eta_new = eta_of(u_new, b_new)
                pdev_new = neg2loglik(fam, eta_new, y, m) + u_new @ u_new
                if np.isfinite(pdev_new) and pdev_new <= pdev + 1e-10 * abs(pdev):
                    break
                du, db = du / 2, db / 2
            else:
                raise DataError(f"PIRLS step halvings failed to lower the penalized deviance at theta = {theta} "
                                "(lme4's pwrssUpdate error): the model may be too flexible for the data")
            u, beta, eta, pdev = u_new, b_new, eta_new, pdev_new
            last = dec < PIRLS_TOL * max(1.0, abs(pdev))
        else:
            raise DataError(f"PIRLS did not converge in {PIRLS_MAXIT} iterations at theta = {theta} "
                            "(lme4's pwrssUpdate error)")
        self._u = u
        if joint:
            self._beta = beta
        a_diag = fac.a if isinstance(fac, _Diag) else None
        return Modes(theta, beta, u, lam, eta, mean(fam, eta), w, fac, a_diag)

    # -- deviances -------------------------------------------------------------------------

    def laplace(self, md: Modes) -> float:
        """lme4's Laplace deviance ``ldL2 + ||u||^2 + aic`` at the modes."""
        return md.ldl2 + float(md.u @ md.u) + neg2loglik(self.family, md.eta, self.y, self.m)

    def agq(self, md: Modes, rule: np.ndarray | None = None) -> float:
        """lme4's adaptive Gauss-Hermite deviance (``glmerAGQ``) at the modes, on lme4's scale
        (deviance residuals: add :attr:`saturated` for ``-2 log`` likelihood)."""
        rule = self.rule if rule is None else rule
        if not self.scalar:
            raise OptionsError("adaptive Gauss-Hermite quadrature needs a single scalar random-effects term")
        blk = self.structure.blocks[0]
        idx, nl = blk.index, len(blk.levels)
        fam, y, m = self.family, self.y, self.m
        zcol = md.theta[0] * blk.values[:, 0]  # the column of Z Lambda of each row's level
        sd = 1.0 / np.sqrt(md.a_diag)

        def devc(shift: np.ndarray) -> np.ndarray:
            mu = mean(fam, md.eta + zcol * shift[idx])
            return (md.u + shift) ** 2 + np.bincount(idx, deviance_residuals(fam, mu, y, m), minlength=nl)

        devc0 = devc(np.zeros(nl))
        mult = np.zeros(nl)
        for z, w, ldnorm in rule:
            if z == 0:
                mult += w
            else:
                mult += np.exp(-0.5 * (devc(z * sd) - devc0) - ldnorm) * w / np.sqrt(2 * np.pi)
        return float(devc0.sum() + md.ldl2 - 2 * np.sum(np.log(mult)))

    def deviance_at(self, md: Modes) -> float:
        """The stage-2 objective: Laplace (``nagq = 1``) or AGQ on lme4's scale."""
        return self.laplace(md) if self.nagq == 1 else self.agq(md)

    def stage1(self, theta: np.ndarray) -> float:
        """lme4's ``nAGQ = 0`` deviance: Laplace at the joint modes of ``(u, beta)`` given theta."""
        return self.laplace(self.modes(theta))

    def objective(self, par: np.ndarray) -> float:
        """The exact stage-2 deviance of ``par = (theta, beta)`` (modes to rounding error; lme4's own:
        :meth:`lme4_objective`)."""
        par = np.asarray(par, dtype=float)
        return self.deviance_at(self.modes(par[: self.ntheta], par[self.ntheta :]))

    def lme4_modes(self, par: np.ndarray, lp0: np.ndarray) -> Modes:
        """lme4's own stage-2 PIRLS at ``par = (theta, beta)`` (``pwrssUpdate`` with ``uOnly``), step for step.

        From ``eta = offset + lp0`` (``lp0``: the linear predictor without offset where stage 1
        ended) every time, IRLS on the working response (``solveU``) until the penalized deviance
        ``resDev + ||u||^2`` changes by less than ``tolPwrss = 1e-7`` relative, with lme4's step
        halving. The factor of ``A`` (``ldL2``; AGQ's ``sd``) is the one the last step was solved
        with, at the weights of the iterate before the last: lme4's deviance is the Laplace (AGQ)
        deviance at slightly inexact modes, a smooth function of ``par`` near the optimum whose
        curvature differs from the exact one's (:attr:`GlmerFit.vcov_exact`).
        """
        par = np.asarray(par, dtype=float)
        theta, beta = par[: self.ntheta], par[self.ntheta :]
        lam = self.lam(theta)
        zl = sparse.csr_matrix(self.Z @ lam)
        fam, y, m = self.family, self.y, self.m
        offset = self.offset + self.X @ beta
        eta, u = self.offset + lp0, np.zeros(self.q)
        old = np.inf
        for _ in range(PIRLS_MAXIT):
            r, w = working(fam, eta, y, m)
            fac = self.factor(theta, zl, w)
            old_u = u
            u = fac.solve(zl.T @ (w * (eta - offset) + r))
            eta = offset + zl @ u
            pdev = float(np.sum(deviance_residuals(fam, mean(fam, eta), y, m)) + u @ u)
            if abs((old - pdev) / pdev) < LME4_TOL_PWRSS:
                break
            for _ in range(MAX_HALVINGS):
                if np.isfinite(pdev) and pdev <= old:
                    break
                u = (old_u + u) / 2
                eta = offset + zl @ u
                pdev = float(np.sum(deviance_residuals(fam, mean(fam, eta), y, m)) + u @ u)
            if not pdev - old <= LME4_TOL_PWRSS:
                raise DataError(f"lme4's PIRLS step halvings failed to lower the penalized deviance at {par}")
            old = pdev
        a_diag = fac.a if isinstance(fac, _Diag) else None
        return Modes(theta, beta, u, lam, eta, mean(fam, eta), w, fac, a_diag)

    def lme4_objective(self, par: np.ndarray, lp0: np.ndarray) -> float:
        """lme4's stage-2 deviance function (``devfun``) at ``par``, from stage 1's ``lp0`` (:meth:`lme4_modes`)."""
        return self.deviance_at(self.lme4_modes(par, lp0))

    # -- optimisation ----------------------------------------------------------------------

    def optimize(self, lme4_pirls: bool = True) -> Optimum:
        """lme4's two stages: theta with ``(u, beta)`` from PIRLS, then ``(theta, beta)`` jointly.

        Stage 1 minimises :meth:`stage1` (L-BFGS-B under lme4's bounds, :meth:`off_bound` where it
        stopped at 0) and keeps its linear predictor (lme4's ``lp0``). Stage 2 takes Newton steps
        (:meth:`newton`) on the exact deviance :meth:`objective` from stage 1's ``(theta, beta)``
        (L-BFGS-B first if they fail), then, with ``lme4_pirls``, on lme4's own deviance
        :meth:`lme4_objective` from there (its optimum is within 1e-3 of the exact one). Last, lme4's
        ``check.boundary``.
        """
        s = self.structure
        stage1 = {"method": "L-BFGS-B", "jac": "3-point", "options": {"ftol": 1e-12, "gtol": 1e-7, "maxiter": 1000},
                  "bounds": optimize.Bounds(s.lower, np.full(self.ntheta, np.inf))}
        try:
            res = optimize.minimize(self.stage1, s.theta0, **stage1)
        except (DataError, np.linalg.LinAlgError, ValueError):
            # PIRLS overflows (exp(eta)) at thetas L-BFGS-B tries: seen with random slopes of covariates far
            # from 0, where lme4's derivative-free stage 1 (bobyqa) still finds the optimum; say what to do
            slopes = [c for b in self.frame.blocks for c in b.term.coefs if c != "(Intercept)"]
            raise DataError(f"lme4's side cannot fit {self.frame.formula.text!r}: PIRLS overflows at the "
                            "optimizer's trial values" + (f"; centre or scale the covariate of the random slope "
                                                          f"({', '.join(slopes)}), e.g. scale({slopes[0]})"
                                                          if slopes else "")) from None
        x = self.off_bound(self.stage1, np.maximum(res.x, s.lower), s.theta0)
        if x is not None:
            res = optimize.minimize(self.stage1, x, **stage1)
        md = self.modes(np.maximum(res.x, s.lower))
        self.lp0 = md.eta - self.offset
        lower = np.concatenate([s.lower, np.full(self.p, -np.inf)])
        opt = self.newton(self.objective, np.concatenate([md.theta, md.beta]), lower)
        if not opt.converged or self._leaves_bound(self.objective, opt):
            x = self.off_bound(self.objective, opt.x, s.theta0)
            res = optimize.minimize(self.objective, opt.x if x is None else x, method="L-BFGS-B", jac="3-point",
                                    bounds=optimize.Bounds(lower, np.full(lower.size, np.inf)),
                                    options={"ftol": 1e-13, "gtol": 1e-8, "maxiter": 2000})
            opt = self.newton(self.objective, np.maximum(res.x, lower), lower)
        if lme4_pirls:
            opt = self.newton(self.lme4_deviance_function(), opt.x, lower)
        return self._check_boundary(opt, lme4_pirls)

    def off_bound(self, fun, x: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
        """``x`` with each diagonal theta that sits at 0 moved to where ``fun`` is lowest along it in
        ``[0, upper_i]`` (bounded Brent), when that is lower; None if none moved.

        The deviance is even in such a theta (``Lambda`` enters through ``Lambda Lambda'``), so its
        derivative there is 0: L-BFGS-B, whose first step from theta0 can land on the bound, stops at
        0 even where 0 is a maximum along it (lme4's bobyqa, without derivatives, goes on). A minimum
        the search finds lies below the start, where L-BFGS-B's first step went down from.
        """
        f0, out = float(fun(x)), None
        for i in np.flatnonzero(self.structure.diag_theta):
            at = x if out is None else out
            if at[i] > 0:
                continue
            mask = np.arange(at.size) == i
            res = optimize.minimize_scalar(lambda t, at=at, mask=mask: fun(_put(at, mask, np.array([t]))),
                                           bounds=(0.0, float(upper[i])), method="bounded", options={"xatol": 1e-4})
            if res.fun < f0 - 1e-8:
                out, f0 = _put(at, mask, np.array([res.x])), float(res.fun)
        return out

    def lme4_deviance_function(self):
        """lme4's stage-2 ``devfun`` as a function of ``(theta, beta)`` alone (from :attr:`lp0`)."""
        return lambda par: self.lme4_objective(par, self.lp0)

    def free(self, x: np.ndarray) -> np.ndarray:
        """Which coordinates are off lme4's bounds (diagonal theta above :data:`BOUNDARY_TOL`)."""
        out = np.ones(x.size, dtype=bool)
        out[: self.ntheta] = ~self.structure.diag_theta | (x[: self.ntheta] > BOUNDARY_TOL)
        return out

    def newton(self, fun, x: np.ndarray, lower: np.ndarray, maxit: int = 20) -> Optimum:
        """Newton steps with step halving on the free coordinates (:meth:`free`), gradient and Hessian
        by lme4's ``deriv12``, until a step is below :data:`NEWTON_XTOL` (converged) or cannot lower
        ``fun`` (converged if that step was below 1e-8: ``fun``'s rounding)."""
        f = fun(x)
        g = h = None
        for _ in range(maxit):
            free = self.free(x)
            g, h = deriv12(lambda v, x=x, free=free: fun(_put(x, free, v)), x[free], fx=f)
            try:
                step = -linalg.cho_solve(linalg.cho_factor(h), g)
            except (linalg.LinAlgError, ValueError):
                return Optimum(x, f, free, h, False)
            for _ in range(20):
                x_new = np.maximum(_put(x, free, x[free] + step), lower)
                f_new = fun(x_new)
                if f_new <= f:
                    break
                step = step / 2
            else:
                return Optimum(x, f, free, h, bool(np.max(np.abs(step)) < 1e-8))
            x, f = x_new, f_new
            if np.all(np.abs(step) < NEWTON_XTOL * np.maximum(1.0, np.abs(x[free]))):
                return Optimum(x, f, free, h, True)
        return Optimum(x, f, self.free(x), h, False)

    def _leaves_bound(self, fun, opt: Optimum) -> bool:
        """Whether the deviance falls when a diagonal theta held at 0 moves off it by ``DERIV_DELTA``."""
        for i in np.flatnonzero(~opt.free):
            x = opt.x.copy()
            x[i] += DERIV_DELTA
            if fun(x) < opt.fun:
                return True
        return False

    def _check_boundary(self, opt: Optimum, lme4_pirls: bool) -> Optimum:
        """lme4's ``check.boundary``: a diagonal theta within :data:`BOUNDARY_TOL` of 0 goes to 0 if
        that does not raise the deviance."""
        fun = self.lme4_deviance_function() if lme4_pirls else self.objective
        x, f = opt.x, opt.fun
        for i in np.flatnonzero(self.structure.diag_theta):
            if 0 < x[i] < BOUNDARY_TOL:
                t = x.copy()
                t[i] = 0.0
                ft = fun(t)
                if ft < f:
                    x, f = t, ft
        return opt if x is opt.x else Optimum(x, f, self.free(x), None, opt.converged)


@dataclass(frozen=True)
class Optimum:
    """Where :meth:`GlmerProblem.newton` stopped.

    Attributes
    ----------
    x : ndarray
        ``(theta, beta)``.
    fun : float
        The deviance there.
    free : ndarray of bool
        The coordinates moved (the others sit on lme4's bound).
    hessian : ndarray or None
        ``deriv12``'s Hessian in the free coordinates at the last Newton iterate (its step below
        :data:`NEWTON_XTOL` when converged).
    converged : bool
    """

    x: np.ndarray
    fun: float
    free: np.ndarray
    hessian: np.ndarray | None
    converged: bool


def _put(x: np.ndarray, mask: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[mask] = v
    return out


def schur(X: np.ndarray, zl: sparse.csr_matrix, w: np.ndarray, fac) -> tuple[np.ndarray, np.ndarray]:
    """``C = A^-1 Lambda'Z'WX`` and the Schur complement ``S = X'WX - X'WZ Lambda C`` (lme4's ``RX'RX``).

    ``S`` is formed as the sum of squares ``||W^1/2 (X - Z Lambda C)||^2 + ||C||^2`` (the residual of
    ``W^1/2 X`` on the columns of ``[W^1/2 Z Lambda; I]``), never as that difference, which cancels
    to rounding error (an indefinite matrix) when a column of X lies in the span of a term with a
    large theta (an intercept and ``(1|g)``), as an optimizer's first steps try.
    """
    sw = np.sqrt(w)
    c = fac.solve(np.asarray(zl.T @ (w[:, None] * X)))
    resid = sw[:, None] * (X - zl @ c)
    return c, resid.T @ resid + c.T @ c


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return linalg.cho_solve(linalg.cho_factor(a), b)
    except linalg.LinAlgError as e:
        raise DataError("the fixed effects' weighted cross-product is singular during PIRLS: complete separation, "
                        "or a fixed-effect column that is zero wherever the fitted mean is not 0 or 1") from e


def glm_start(family: str, X: np.ndarray, y: np.ndarray, m: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Fixed effects to start PIRLS from: one weighted least-squares step of R's ``glm.fit`` from
    its ``mustart`` (binomial ``(y + 0.5) / (m + 1)``, Poisson ``y + 0.1``, negative binomial ``y + (y == 0) / 6``)."""
    if family == "binomial":
        mu = (y + 0.5) / (m + 1.0)
        eta, w = special.logit(mu), m * mu * (1 - mu)
    elif isinstance(family, NegBinomial):  # MASS's negative.binomial()$initialize
        mu = y + (y == 0) / 6
        eta, w = np.log(mu), mu * family.theta / (mu + family.theta)
    else:
        mu = y + 0.1
        eta, w = np.log(mu), mu
    z = eta - offset + (y - m * mu) / np.where(w > 0, w, 1.0) if family == "binomial" else eta - offset + (y - mu) / mu
    sw = np.sqrt(w)
    beta, *_ = linalg.lstsq(X * sw[:, None], z * sw)
    return beta


# ---------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlmerFit:
    """lme4's glmer answer at the optimum, before it gets R's names (:mod:`bayeslmm.lme4.frequentist`).

    Attributes
    ----------
    problem : GlmerProblem
    modes : Modes
        PIRLS at the optimum: ``theta``, ``beta``, the conditional modes ``u`` (the random effects are
        ``Lambda u``), the factor of ``A`` (conditional variances ``Lambda A^-1 Lambda'``).
    vcov : ndarray
        Covariance of the fixed effects (:func:`vcov`).
    vcov_source : {"hessian", "RX"}
    lme4_deviance : float
        lme4's objective at the optimum (``-2 logLik(fit)`` in R): the Laplace deviance, or the AGQ
        one on lme4's scale (without :attr:`GlmerProblem.saturated`).
    loglik : float
        The log-likelihood: ``-lme4_deviance / 2`` for Laplace; with ``nAGQ > 1``, less half the
        saturated deviance (on the Laplace fit's scale; R's ``logLik`` differs by that constant).
    deviance : float
        R's ``deviance()``: the sum of squared deviance residuals at the modes.
    converged : bool
    singular : bool
    hessian : ndarray or None
        ``deriv12``'s Hessian of the stage-2 deviance in ``(theta, beta)`` (None when lme4 computes none).
    """

    problem: GlmerProblem
    modes: Modes
    vcov: np.ndarray
    vcov_source: str
    lme4_deviance: float
    loglik: float
    deviance: float
    converged: bool
    singular: bool
    hessian: np.ndarray | None


def fit_glmer(frame: ModelFrame, nagq: int = 1, lme4_pirls: bool = True, nb_theta: float | None = None) -> GlmerFit:
    """Fit a binomial or Poisson mixed model as ``lme4::glmer(..., nAGQ = nagq)`` (a negative binomial one
    at a given theta: ``family = MASS::negative.binomial(theta = nb_theta)``).

    Parameters
    ----------
    frame : ModelFrame
    nagq : int
        1: Laplace; more: adaptive Gauss-Hermite quadrature (one scalar random-effect term).
    lme4_pirls : bool
        Minimise lme4's own deviance function (its PIRLS stopped at ``tolPwrss``,
        :meth:`GlmerProblem.lme4_modes`), as R does, so that estimates, logLik and the Hessian-based
        standard errors are R's; ``False`` minimises the exact Laplace (AGQ) deviance (modes to
        rounding error). The two optima differ by up to 1.6e-3 relative and the SEs by up to 1.3% on
        the reference data (the Laplace ones; 25-node AGQ is insensitive to inexact modes).

    nb_theta : float, optional
        The negative binomial's theta (a negative binomial frame only).

    Warns
    -----
    RuntimeWarning
        If the optimum is not reached to :data:`NEWTON_XTOL`, or fitted probabilities are numerically
        0 or 1 (separation: estimates and standard errors run off to infinity).
    """
    prob = GlmerProblem(frame, nagq, nb_theta)
    # exp(eta) overflows at an optimizer's wild trial points (PIRLS halves its steps); small dense
    # factors are fastest on one BLAS thread
    with np.errstate(over="ignore"), blas_threads():
        opt = prob.optimize(lme4_pirls)
    return finish(prob, frame, opt, lme4_pirls)


def finish(prob: GlmerProblem, frame: ModelFrame, opt: Optimum, lme4_pirls: bool = True) -> GlmerFit:
    """The fit at the optimum ``opt`` of ``prob``'s stage-2 deviance (lme4's, from ``prob.lp0``, with
    ``lme4_pirls``): modes, deviance, the Hessian-based covariance, lme4's warnings (:func:`fit_glmer`)."""
    nagq = prob.nagq
    with np.errstate(over="ignore"), blas_threads():
        x = opt.x
        theta, beta = x[: prob.ntheta], x[prob.ntheta :]
        md = prob.lme4_modes(x, prob.lp0) if lme4_pirls else prob.modes(theta, beta)
        dev = prob.deviance_at(md)
        singular = bool(np.any(theta[prob.structure.diag_theta] < SINGULAR_TOL))
        hess = None
        if not singular and prob.n < DERIVS_NOBS_MAX and x.size < DERIVS_NPAR_MAX:
            hess = opt.hessian if opt.hessian is not None and opt.free.all() else None
            if hess is None:
                fun = prob.lme4_deviance_function() if lme4_pirls else prob.objective
                hess = deriv12(fun, x, fx=dev)[1]
        cov, source = vcov(prob, md, hess)
    text = frame.formula.text
    if not _warn_fitted(text, prob.family, md.mu):  # separation says it all; else what else went wrong
        if hess is not None and source == "RX":
            warnings.warn(f"{text}: the fixed effects' covariance from the finite-difference Hessian is not positive "
                          "definite: the SEs are the RX-based ones (as lme4 falls back)", RuntimeWarning, stacklevel=2)
        if not opt.converged:
            warnings.warn(f"{text}: the glmer optimum was not reached to {NEWTON_XTOL:g} (Newton steps on the "
                          "deviance in (theta, beta) did not settle)", RuntimeWarning, stacklevel=2)
    loglik = -dev / 2 if nagq == 1 else -(dev + prob.saturated) / 2
    resid = deviance_residuals(prob.family, md.mu, prob.y, prob.m)
    return GlmerFit(prob, md, cov, source, dev, loglik, float(resid.sum()), opt.converged, singular, hess)


def vcov(prob: GlmerProblem, md: Modes, hess: np.ndarray | None) -> tuple[np.ndarray, str]:
    """lme4's ``vcov`` of a glmer fit and where it came from: the beta block of ``2 H^-1``
    (``"hessian"``) when the Hessian exists and that block is positive definite, else (``"RX"``) the
    inverse of ``X'WX - X'WZ Lambda A^-1 Lambda'Z'WX`` at the modes (lme4's ``RX'RX``)."""
    with warnings.catch_warnings():  # a near-singular matrix (separation) is the caller's to report
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        if hess is not None:
            try:
                v = 2 * linalg.inv(hess)[prob.ntheta :, prob.ntheta :]
                v = (v + v.T) / 2
                if np.all(np.isfinite(v)) and np.min(np.linalg.eigvalsh(v)) > 0:
                    return v, "hessian"
            except linalg.LinAlgError:
                pass
        _, s = schur(prob.X, sparse.csr_matrix(prob.Z @ md.lam), md.weights, md.factor)
        v = linalg.inv(s)
    return (v + v.T) / 2, "RX"


def _warn_fitted(text: str, family: str, mu: np.ndarray) -> bool:
    """R's ``glm.fit`` warning, fitted probabilities numerically 0 or 1 (Poisson: rates numerically 0),
    as one line that says what it means and what to do; whether it warned."""
    bad = (mu < EPS_FITTED) | (mu > 1 - EPS_FITTED) if family == "binomial" else mu < EPS_FITTED
    if np.any(bad):
        what = "probabilities numerically 0 or 1" if family == "binomial" else "rates numerically 0"
        warnings.warn(f"{text}: fitted {what} in {int(bad.sum())} rows (as R's glm warns): (quasi-)complete "
                      "separation, some fixed effect runs off to infinity and its estimate and Wald SE mean nothing; "
                      "drop or merge the level or predictor that separates the data", RuntimeWarning, stacklevel=3)
    return bool(np.any(bad))


# ---------------------------------------------------------------------------------------
# Without random terms: R's glm
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlmFit:
    """R's ``glm`` of a binomial or Poisson frame without random terms (dispersion 1).

    Attributes
    ----------
    beta, vcov : ndarray
        Coefficients and ``summary.glm``'s covariance ``(X'WX)^-1``.
    mu : ndarray
    loglik, deviance : float
        ``logLik`` (the family's full log-likelihood) and the residual deviance.
    """

    beta: np.ndarray
    vcov: np.ndarray
    mu: np.ndarray
    loglik: float
    deviance: float


def fit_glm(frame: ModelFrame, nb_theta: float | None = None) -> GlmFit:
    """Fit ``glm(formula, family)`` by Fisher scoring (Newton steps for the canonical links) to rounding
    error; a negative binomial frame at theta ``nb_theta`` (``family = negative.binomial(nb_theta)``).

    Warns
    -----
    RuntimeWarning
        If fitted probabilities are numerically 0 or 1 (separation), as R's ``glm.fit`` warns.
    """
    fam, X, y = family_of(frame.family, nb_theta), frame.X, frame.y
    m = frame.trials if frame.trials is not None else np.ones_like(y)
    offset = frame.offset if frame.offset is not None else np.zeros_like(y)
    beta = glm_start(fam, X, y, m, offset)
    eta = offset + X @ beta
    dev = neg2loglik(fam, eta, y, m)
    last = False
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(PIRLS_MAXIT):
            r, w = working(fam, eta, y, m)
            info = X.T @ (w[:, None] * X)
            if last:
                break
            g = X.T @ r
            step = _solve_spd(info, g)
            dec = float(g @ step)
            for _ in range(MAX_HALVINGS + 1):
                eta_new = offset + X @ (beta + step)
                dev_new = neg2loglik(fam, eta_new, y, m)
                if np.isfinite(dev_new) and dev_new <= dev + 1e-10 * abs(dev):
                    break
                step = step / 2
            else:
                raise DataError("glm's step halvings failed to lower the deviance")
            beta, eta, dev = beta + step, eta_new, dev_new
            last = dec < PIRLS_TOL * max(1.0, abs(dev))
        else:
            raise DataError(f"glm did not converge in {PIRLS_MAXIT} iterations")
    mu = mean(fam, eta)
    _warn_fitted(frame.formula.text, fam, mu)
    with warnings.catch_warnings():  # near-singular under separation, which _warn_fitted reported
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        cov = linalg.inv(info)
    return GlmFit(beta, (cov + cov.T) / 2, mu, -dev / 2, float(deviance_residuals(fam, mu, y, m).sum()))
