"""Profile-likelihood confidence intervals, as lme4's ``confint(fit, method = "profile")``.

What lme4 1.1-31 does (``R/profile.R``): ``profile.merMod`` builds ``devfun2(fit)``, the
deviance as a function of ``(.sig01, ..., .sigma)`` -- each random-effect term's standard
deviations and correlations (lme4's "sdcor" scale: ``Cv_to_Sv``, in the order of theta, a
diagonal position holding an sd and an off-diagonal one a correlation) and the residual sd --
with the fixed effects profiled out by penalized least squares. ``devfun2`` starts with
``fm <- refitML(fm)`` and ``basedev <- -2 * c(logLik(fm))``, and the function it returns is
``ldL2 + (wrss + ||u||^2) / sigma^2 + n log(2 pi sigma^2)`` -- the *ML* deviance, with no
``log|R_X|^2`` term and ``n`` (not ``n - p``) in the last term. So a REML fit is profiled on the
ML deviance about its ML refit, not on the REML criterion; the fixed-effect profiles
(``fe.zeta``: the column moved to the offset, theta re-optimised with ``mkdevfun`` of an ML
response) are ML too. ``confint(method = "profile")`` on a REML fit therefore gives intervals
about the ML estimates. R's numbers confirm it (``tests/test_profile.py``): for the tutorial's
``mixed.lmer2`` the ML-deviance profile matches R's five intervals to 2.2e-5 relative, while
profiling the REML criterion (``devfun_vp`` with the ``log|R_X|^2`` term and ``n - p``) misses the
variance parameters' ends by up to 13% (the upper end for the mountain-range sd).

For each parameter ``zeta(x) = sign(x - x_hat) sqrt(min_{others} D(x, others) - D_min)``; the
interval ends solve ``zeta(x) = qnorm((1 -/+ level) / 2)``. lme4 evaluates zeta on a grid, fits
an interpolation spline (``interpSpline``/``backSpline``) and reads the ends off it
(``confint.thpr``); here a 1-D root finder (Brent) solves for them directly, so the two agree up
to lme4's spline error. Where the profile never reaches the threshold before a parameter's
bound (an sd whose deviance rises by less than ``qnorm(...)^2`` on the way to 0, a correlation
reaching +-1), ``confint.thpr`` returns the bound (its ``lower``/``upper`` attributes: 0 for an
sd, -1 and 1 for a correlation) rather than NA; so does :func:`profile_ci`.

The nuisance parameters are re-optimised with L-BFGS-B on the sdcor scale under lme4's bounds
(sd >= 0, -1 <= correlation <= 1), each in units of its Wald standard error, starting from the
nearest point already profiled (lme4 uses BOBYQA, whose trust region keeps its steps as local).
The correlations of a term of three or more coefficients are bounded jointly (they must make a
positive semi-definite matrix), not only each by +-1: a point outside is scored as the nearest
valid matrix plus a steep penalty (:meth:`_Profiler.deviance_v`), so the nuisance optimiser stays
inside; every interval end is checked against an independent Nelder-Mead optimiser restricted to
valid matrices in ``tests/test_profile.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

from bayeslmm.errors import OptionsError
from bayeslmm.labels import cor_term, sd_term
from bayeslmm.lme4.lmer import LmerProblem, blas_threads, hessian
from bayeslmm.model.formula import ModelFrame

#: Columns of :func:`profile_ci`.
PROFILE_COLUMNS = ("effect", "group", "term", "conf_low", "conf_high", "lme4_name")
#: Relative tolerance on an interval end (Brent's ``rtol``, with an absolute floor per scale).
_XTOL = 1e-9
#: Largest number of steps taken to bracket an interval end.
_MAX_BRACKET = 40
#: Deviance added per unit by which a term's correlations fall short of a valid correlation matrix.
_INVALID_PENALTY = 1e4
#: Absolute tolerance on the deviance of each profiled point (the nuisance optimiser's ``ftol`` times
#: the deviance): a zeta near 1.96 then moves by 3e-9, its root by less than 1e-8 of the interval's width.
#: A relative ``ftol`` of 1e-15 asked for less than the deviance's rounding noise at 7,000 rows (the
#: optimiser ended on failed line searches): InstEval-shaped test, 3,248 evaluations -> 2,064, the
#: same ends to 1e-9 relative.
_DEV_TOL = 1e-8
#: Largest dense Schur complement of crossed terms (:attr:`~bayeslmm.lme4.lmer.LmerProblem.crossed_q`)
#: profiled by default. A profile takes about 2,500 evaluations of the criterion; on InstEval's design
#: (1,142) one costs 0.045 s and the profile 174 s, at half its size (578) 0.012 s, a tenth (127) 0.002 s
#: (2 cores, load 4). Beyond it lme4's users take ``confint(method = "Wald")``: so does :func:`profile_ci`.
PROFILE_MAX_CROSSED = 600


class _Profiler:
    """Profiles of the deviance of one model: variance parameters on lme4's sdcor scale, fixed effects.

    Parameters
    ----------
    frame : ModelFrame
    theta_start : ndarray
        Where the optimisation of the base fit starts (lme4's ``refitML`` starts from the fit).
    reml : bool
        Profile the REML criterion instead of the ML deviance (variance parameters only). lme4
        does not (it refits by ML); kept so the test suite can show that R's numbers are not these.
    problem : LmerProblem, optional
        The frame's problem with criterion ``reml``, if already built.
    """

    def __init__(self, frame: ModelFrame, theta_start: np.ndarray, reml: bool = False,
                 problem: LmerProblem | None = None) -> None:
        self.m = m = problem if problem is not None else LmerProblem(frame, reml=reml)
        self.reml = reml
        self.blocks = []  # (theta offset, k, tri) per term
        off = 0
        for blk in m.blocks:
            k = blk.values.shape[1]
            self.blocks.append((off, k, m.tri(k)))
            off += len(m.tri(k))
        self.nth = off
        m.theta0 = np.maximum(np.asarray(theta_start, dtype=float), m.lower)  # refitML's start
        theta, converged = m.optimize()
        if not converged:
            warnings.warn("the base fit for profiling did not converge", RuntimeWarning, stacklevel=3)
        pls = m.solve(theta)
        self.theta_hat = theta
        self.base = m.criterion(pls)
        dof = m.n - m.p if reml else m.n
        self.sigma_hat = float(np.sqrt(pls.pwrss / dof))
        self.beta_hat = pls.beta
        self.v_hat = self.to_sdcor(theta, self.sigma_hat)
        # lme4's bounds on the sdcor scale (``lower``/``upper`` of the profile)
        is_sd = np.ones(self.nth + 1, dtype=bool)
        for off, _, tri in self.blocks:
            for idx, (i, j) in enumerate(tri):
                is_sd[off + idx] = i == j
        self.is_sd = is_sd
        self.lower = np.where(is_sd, 0.0, -1.0)
        self.upper = np.where(is_sd, np.inf, 1.0)
        # scale of each parameter, for the tolerances
        self.vscale = np.where(is_sd, self.sigma_hat, 1.0)
        # and for the optimiser, the Wald se: L-BFGS-B's first step from a start has length 1,
        # which on the scale of vscale would take sigma to its bound (every theta = sd/sigma huge)
        self.se = self._wald_se()
        se = np.where(np.isfinite(self.se) & (self.se > 0), self.se, self.vscale)
        self.nscale = np.clip(se, 1e-6 * self.vscale, self.vscale)
        # theta = sd / sigma: each position on the scale of its row's sd
        self.tscale = np.empty(self.nth)
        for off, _, tri in self.blocks:
            for idx, (i, _j) in enumerate(tri):
                self.tscale[off + idx] = self.nscale[off + tri.index((i, i))] / self.sigma_hat

    # -- the sdcor scale ------------------------------------------------------------------

    def to_sdcor(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        """lme4's ``Cv_to_Sv``: theta and sigma to (sd or correlation per theta position, sigma)."""
        v = np.empty(self.nth + 1)
        for off, k, tri in self.blocks:
            t = np.zeros((k, k))
            for idx, (i, j) in enumerate(tri):
                t[i, j] = theta[off + idx]
            cov = t @ t.T
            sd = np.sqrt(np.diag(cov))
            for idx, (i, j) in enumerate(tri):
                if i == j:
                    v[off + idx] = sigma * sd[i]
                else:
                    v[off + idx] = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0
        v[-1] = sigma
        return v

    def from_sdcor(self, v: np.ndarray) -> tuple[np.ndarray, float, float]:
        """lme4's ``Sv_to_Cv``: back to theta (the Cholesky factor over sigma) and sigma.

        Also returns how far the terms' correlations are from a valid (positive semi-definite)
        correlation matrix, 0 when they are one: only possible with three or more coefficients,
        whose correlations are bounded jointly; such a point is mapped to the nearest valid matrix.
        """
        sigma = v[-1]
        theta = np.empty(self.nth)
        shortfall = 0.0
        for off, k, tri in self.blocks:
            if k == 1:
                theta[off] = v[off] / sigma
                continue
            if k == 2:  # positions (0,0) sd1, (1,0) correlation, (1,1) sd2
                s1, rho, s2 = v[off] / sigma, v[off + 1], v[off + 2] / sigma
                theta[off : off + 3] = (s1, s2 * rho, s2 * np.sqrt(max(0.0, 1 - rho * rho)))
                continue
            sd, cor = np.empty(k), np.eye(k)
            for idx, (i, j) in enumerate(tri):
                if i == j:
                    sd[i] = v[off + idx] / sigma
                else:
                    cor[i, j] = cor[j, i] = v[off + idx]
            low, short = _correlation_factor(cor)
            shortfall += short
            t = sd[:, None] * low
            theta[off : off + len(tri)] = [t[i, j] for i, j in tri]
        return theta, sigma, shortfall

    def deviance_v(self, v: np.ndarray) -> float:
        """``devfun2``: the deviance at (sdcor, sigma), fixed effects profiled out.

        Correlations that make no valid correlation matrix (three or more coefficients) get the
        deviance at the nearest valid one plus :data:`_INVALID_PENALTY` per unit of the shortfall,
        so the optimiser of the nuisance parameters is led back (lme4's ``Sv_to_Cv`` fails there).
        """
        theta, sigma, shortfall = self.from_sdcor(v)
        return self.m.devfun_vp(np.append(theta, sigma)) + _INVALID_PENALTY * shortfall

    def deviance_beta(self, theta: np.ndarray, j: int, b: float) -> float:
        """The deviance at theta with fixed effect ``j`` held at ``b``, sigma and the others profiled.

        For fixed theta the penalized residual sum of squares is ``r2 + (beta - beta_hat)' R_X'R_X
        (beta - beta_hat)``; over the other fixed effects it is ``r2 + (b - beta_hat_j)^2 / C_jj``
        with ``C = (R_X'R_X)^-1`` (what lme4's ``fe.zeta`` gets by moving column j to the offset).
        """
        if self.reml:
            raise NotImplementedError("fixed-effect profiles are of the ML deviance only (as lme4's)")
        m = self.m
        pls = m.solve(theta)
        cjj = linalg.cho_solve(pls.rx_chol, np.eye(m.p)[:, j], check_finite=False)[j]
        r2 = pls.pwrss + (b - pls.beta[j]) ** 2 / cjj
        return pls.ldl2 + m.n * (1 + np.log(2 * np.pi * r2 / m.n))

    # -- profiles -------------------------------------------------------------------------

    def _zeta_function(self, which: int) -> tuple[Callable[[float], float], float]:
        """zeta of parameter ``which`` (0..nth: sdcor then sigma; nth+1+j: fixed effect j) and its estimate."""
        if which <= self.nth:
            free = np.arange(self.nth + 1) != which
            scale = self.nscale[free]
            lower = self.lower.copy()
            lower[-1] = 1e-8 * self.sigma_hat  # sigma > 0
            bounds = optimize.Bounds(lower[free] / scale, self.upper[free] / scale)
            x_hat = float(self.v_hat[which])
            nuisance_hat = self.v_hat[free] / scale

            def objective(x: float) -> Callable[[np.ndarray], float]:
                def f(z: np.ndarray) -> float:
                    v = np.empty(self.nth + 1)
                    v[free] = z * scale
                    v[which] = x
                    return self.deviance_v(v)

                return f

        else:
            j = which - self.nth - 1
            bounds = optimize.Bounds(self.m.lower / self.tscale, np.full(self.nth, np.inf))
            x_hat = float(self.beta_hat[j])
            nuisance_hat = self.theta_hat / self.tscale

            def objective(x: float) -> Callable[[np.ndarray], float]:
                return lambda z: self.deviance_beta(z * self.tscale, j, x)

        visited: list[tuple[float, np.ndarray]] = [(x_hat, nuisance_hat)]
        ftol = _DEV_TOL / max(abs(self.base), 1.0)  # L-BFGS-B's ftol is relative to the deviance

        def zeta(x: float) -> float:
            start = min(visited, key=lambda item: abs(item[0] - x))[1]
            f = objective(x)
            res = optimize.minimize(
                f, start, method="L-BFGS-B", jac="2-point", bounds=bounds,
                options={"ftol": ftol, "gtol": 1e-9, "maxiter": 1000},
            )
            best, fval = res.x, float(res.fun)
            if not np.isfinite(fval) or (f0 := f(start)) < fval:
                best, fval = start, f0
            if fval < self.base - 1e-6:
                warnings.warn(
                    f"profiling found a deviance {self.base - fval:.3g} below the optimum's: the fit had "
                    "not converged (lme4 stops with 'profiling detected new, lower deviance')",
                    RuntimeWarning, stacklevel=5,
                )
            visited.append((x, best))
            return float(np.sign(x - x_hat) * np.sqrt(max(0.0, fval - self.base)))

        return zeta, x_hat

    def interval(self, which: int, z: float, step: float) -> tuple[float, float]:
        """Both ends of the interval of one parameter (``step``: a first guess of their distance)."""
        zeta, x_hat = self._zeta_function(which)
        if which <= self.nth:
            lo_bound, hi_bound = float(self.lower[which]), float(self.upper[which])
            scale = float(self.vscale[which])
        else:
            lo_bound, hi_bound = -np.inf, np.inf
            scale = max(abs(x_hat), step)
        ends = []
        for direction, bound in ((-1.0, lo_bound), (1.0, hi_bound)):
            ends.append(self._end(zeta, x_hat, direction, bound, z, step, scale))
        return ends[0], ends[1]

    @staticmethod
    def _end(zeta: Callable[[float], float], x_hat: float, direction: float, bound: float, z: float,
             step: float, scale: float) -> float:
        """Where ``|zeta|`` reaches ``z`` on one side of the estimate (``bound`` if it never does)."""
        target = direction * z
        inside, h = x_hat, step
        if x_hat == bound:
            return bound
        for _ in range(_MAX_BRACKET):
            x = x_hat + direction * h
            if direction * (x - bound) >= 0:  # would pass the bound: try the bound itself
                x = bound
            zx = zeta(x)
            if abs(zx) >= z:
                return optimize.brentq(
                    lambda t: zeta(t) - target, min(inside, x), max(inside, x),
                    xtol=_XTOL * scale, rtol=_XTOL,
                )
            if x == bound:
                return bound  # lme4's confint.thpr: the bound when the profile stays below the cutoff
            inside = x
            # extrapolate zeta linearly from the estimate, overshooting a little to bracket the root
            grow = 1.1 * z / abs(zx) if abs(zx) > 0 else 4.0
            h *= min(4.0, max(1.2, grow))
        warnings.warn("a profile interval end was not bracketed; returning NaN", RuntimeWarning, stacklevel=4)
        return float("nan")

    def _wald_se(self) -> np.ndarray:
        """Wald standard errors of (sdcor, sigma) from the Hessian of the deviance (NaN where none)."""
        try:
            with np.errstate(all="ignore"):
                return np.sqrt(np.diag(2 * np.linalg.inv(hessian(self.deviance_v, self.v_hat))))
        except (np.linalg.LinAlgError, ValueError):
            return np.full(self.nth + 1, np.nan)

    def wald_steps(self, z: float) -> np.ndarray:
        """First guesses of the half-widths: z times the Wald se of every parameter (sdcor, sigma, beta)."""
        steps, se = np.empty(self.nth + 1 + self.m.p), self.se
        fallback = np.where(self.is_sd, np.maximum(0.25 * self.v_hat, 0.1 * self.sigma_hat), 0.2)
        good = np.isfinite(se) & (se > 0)
        steps[: self.nth + 1] = np.where(good, z * np.where(good, se, 1.0), fallback)
        pls = self.m.solve(self.theta_hat)
        cov = self.sigma_hat**2 * linalg.cho_solve(pls.rx_chol, np.eye(self.m.p), check_finite=False)
        steps[self.nth + 1 :] = z * np.sqrt(np.diag(cov))
        return steps


def _correlation_factor(cor: np.ndarray) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of a correlation matrix, and its shortfall from positive semi-definiteness.

    A matrix with a negative eigenvalue is replaced by the nearest valid one (eigenvalues clipped
    at 0, the diagonal rescaled to 1); the shortfall is minus its smallest eigenvalue (0 if none is negative).
    """
    w, q = np.linalg.eigh(cor)
    shortfall = max(0.0, -float(w[0]))
    if shortfall > 0:
        cor = (q * np.maximum(w, 0.0)) @ q.T
        d = np.sqrt(np.diag(cor))
        cor = cor / np.outer(d, d)
    k = cor.shape[0]
    low = np.zeros((k, k))
    for j in range(k):  # Cholesky that allows a zero pivot (a matrix on the boundary)
        d2 = cor[j, j] - low[j, :j] @ low[j, :j]
        low[j, j] = np.sqrt(max(d2, 0.0))
        for i in range(j + 1, k):
            low[i, j] = (cor[i, j] - low[i, :j] @ low[j, :j]) / low[j, j] if low[j, j] > 1e-12 else 0.0
    return low, shortfall


def profile_ci(frame: ModelFrame, fit, level: float = 0.95,
               max_crossed: int | None = PROFILE_MAX_CROSSED) -> pd.DataFrame:
    """Profile-likelihood intervals of every parameter, as lme4's ``confint(fit, method = "profile")``.

    Parameters
    ----------
    frame : ModelFrame
        The frame the fit was made from (must have random terms).
    fit : FreqFit
        A REML or ML fit of ``frame`` (:func:`bayeslmm.lme4.frequentist.fit_lmm`). Either way the profile
        is of the ML deviance about the ML estimates, as lme4 does (see the module docstring).
    level : float
        Confidence level.
    max_crossed : int or None
        Profile only designs whose crossed terms leave at most this many random effects in a dense
        block (:data:`PROFILE_MAX_CROSSED`; ``None``: always). Beyond it the profile would take
        minutes: no rows are returned, with a warning, and the tables keep lme4's Wald intervals of
        the fixed effects and none for the sds, as R's ``confint(method = "Wald")``, labelled so.

    Returns
    -------
    DataFrame
        Columns :data:`PROFILE_COLUMNS` (no rows beyond ``max_crossed``), rows in lme4's order: each
        random term's sds (and its correlation), group ``Residual`` term ``sd__Observation``, then the
        fixed effects.
        ``effect`` is ``ran_pars`` or ``fixed``; ``term`` is ``sd__<coef>``, ``cor__<a>.<b>``,
        ``sd__Observation`` or the fixed effect's name; ``lme4_name`` is lme4's ``.sig01``, ...,
        ``.sigma`` or the fixed effect's name. An sd whose profile stays below the cutoff on the
        way to 0 gets ``conf_low = 0`` (a correlation reaching +-1 gets that bound), like lme4.

    Raises
    ------
    OptionsError
        For a level outside (0, 1), an OLS fit, a binomial or Poisson model (Wald intervals only), or a
        fit that does not belong to ``frame``.
    """
    if not 0 < level < 1:
        raise OptionsError(f"level must be between 0 and 1, not {level}")
    if frame.family != "gaussian" or getattr(fit, "family", "gaussian") != "gaussian":
        raise OptionsError(f"no profile intervals for a {frame.family} model (glmer): its intervals are Wald, as R's "
                           "confint(method = 'Wald'), with none for the standard deviations")
    if getattr(fit, "method", None) not in ("reml", "ml") or fit.theta is None:
        raise OptionsError("profile intervals need a mixed-model fit (fit_lmm, method 'reml' or 'ml')")
    nth = sum(b.values.shape[1] * (b.values.shape[1] + 1) // 2 for b in frame.blocks)
    if list(fit.fixef.index) != list(frame.x_names) or len(fit.theta) != nth:
        raise OptionsError(f"the fit ({fit.formula}) was not made from this frame ({frame.formula.text})")
    m = LmerProblem(frame, reml=False)
    if max_crossed is not None and m.crossed_q > max_crossed:
        warnings.warn(
            f"no profile intervals: the crossed terms leave {m.crossed_q:,} random effects in a dense block "
            f"(more than {max_crossed:,}), where profiling takes minutes; lme4's intervals are Wald for the fixed "
            "effects and none for the sds, as R's confint(method = 'Wald')",
            RuntimeWarning, stacklevel=2,
        )
        return pd.DataFrame(columns=list(PROFILE_COLUMNS))
    with blas_threads():
        return _profile_ci(frame, fit, level, m)


def _profile_ci(frame: ModelFrame, fit, level: float, m: LmerProblem) -> pd.DataFrame:
    prof = _Profiler(frame, fit.theta.to_numpy(), problem=m)
    z = float(stats.norm.ppf((1 + level) / 2))
    steps = prof.wald_steps(z)
    rows = []
    for blk, (off, _, tri) in zip(prof.m.blocks, prof.blocks, strict=True):
        coefs = blk.term.coefs
        for idx, (i, j) in enumerate(tri):
            term = sd_term(coefs[i]) if i == j else cor_term(coefs[j], coefs[i])
            rows.append(("ran_pars", blk.term.group, term, off + idx, f".sig{off + idx + 1:02d}"))
    rows.append(("ran_pars", "Residual", "sd__Observation", prof.nth, ".sigma"))
    for j, name in enumerate(frame.x_names):
        rows.append(("fixed", None, name, prof.nth + 1 + j, name))
    out = []
    for effect, group, term, which, lme4_name in rows:
        low, high = prof.interval(which, z, float(steps[which]))
        out.append((effect, group, term, low, high, lme4_name))
    return pd.DataFrame(out, columns=list(PROFILE_COLUMNS))
