"""Frequentist fits beside the Bayesian ones: R's ``lm`` and lme4's ``lmer`` (REML or ML); for
binomial and Poisson responses R's ``glm`` and lme4's ``glmer`` (Laplace or AGQ, :mod:`bayeslmm.lme4.glmer`);
for negative binomial ones MASS's ``glm.nb`` and lme4's ``glmer.nb`` (:mod:`bayeslmm.lme4.glmer_nb`).

The mixed model follows Bates, Mächler, Bolker & Walker (2015), "Fitting linear mixed-effects
models using lme4", J. Stat. Softw. 67(1), section 3: with the relative covariance factor
``Lambda_theta``, the penalized least-squares problem is solved through the Cholesky factor of
``Lambda' Z'Z Lambda + I``; that gives the profiled deviance (ML) or REML criterion as a function
of ``theta`` alone, which is minimised under bounds (diagonal elements of each term's factor
>= 0). Fixed-effect tests use lmerTest's Satterthwaite degrees of freedom. The machinery is in
:mod:`bayeslmm.lme4.lmer`; this module assembles results with lme4's names and R's conventions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import linalg, stats

from bayeslmm.errors import DataError, OptionsError
from bayeslmm.labels import COR_PREFIX, NB_SIZE_TERM, RESIDUAL, SD_PREFIX, cor_term, sd_term, sdcor_terms
from bayeslmm.lme4 import glmer, glmer_nb
from bayeslmm.lme4.lmer import LmerProblem, Pls, blas_threads, satterthwaite
from bayeslmm.model.formula import ModelFrame, RandomTerm
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.results import EFFECTS, conform, latent_residual_variance, memo, varcorr_table

#: lme4's ``isSingular`` tolerance on the diagonal elements of theta.
SINGULAR_TOL = 1e-4
#: The methods of binomial and Poisson mixed models: glmer's Laplace approximation (``nAGQ = 1``)
#: and adaptive Gauss-Hermite quadrature (``nAGQ > 1``); ``glm`` without random terms.
GLMM_METHODS = ("laplace", "agq")
#: How each method is named in tables and notes (lme4 users say "Laplace" and "AGQ").
METHOD_LABELS = {"reml": "REML", "ml": "ML", "ols": "OLS", "laplace": "Laplace", "agq": "AGQ", "glm": "GLM"}


def method_label(method: str, nagq: int | None = None) -> str:
    """A fit's method as tables and notes name it: ``REML``, ``Laplace``, ``AGQ, nAGQ = 25`` (:data:`METHOD_LABELS`)."""
    label = METHOD_LABELS.get(method, method)
    return f"{label}, nAGQ = {nagq}" if method == "agq" and nagq is not None else label


@dataclass(frozen=True, eq=False)
class FreqFit:
    """A frequentist fit, with R's names and conventions.

    Attributes
    ----------
    method : {"ols", "reml", "ml", "laplace", "agq", "glm"}
        ``laplace`` and ``agq`` are glmer's (binomial, Poisson; :data:`GLMM_METHODS`), ``glm`` R's
        ``glm`` of such a frame without random terms.
    formula : str
    fixef, se, t, df, p : Series
        Fixed effects (``coef`` for OLS), standard errors, t statistics, degrees of freedom
        (residual for OLS; lmerTest's Satterthwaite for REML and ML mixed fits, NaN where
        lmerTest gives none) and two-sided p-values from the t distribution. Binomial and Poisson
        fits: Wald z statistics in ``t``, ``df`` NaN, p-values from the normal (``summary.glmerMod``).
    vcov : DataFrame
        Covariance matrix of the fixed effects: ``sigma^2 (X'X)^-1`` (OLS) or lme4's
        ``sigma^2 (X'V^-1 X)^-1`` with V the marginal covariance over sigma^2, the variance
        parameters taken as known.
    sigma : float
        Residual standard deviation (1 for binomial and Poisson fits, as R's ``sigma()``).
    loglik, aic, bic : float
        R's ``logLik`` (the REML one for REML fits), ``AIC`` and ``BIC``. An AGQ fit's is the
        log-likelihood on the Laplace fit's scale; R's differs by a constant
        (:mod:`bayeslmm.lme4.glmer`).
    npar : int
        Parameters counted by ``logLik``'s df: p + 1 (OLS) or p + len(theta) + 1; p + len(theta)
        for glmer, p for glm (no scale parameter); one more for the negative binomial's theta.
    nobs : int
    r_squared : float or None
        OLS only.
    deviance, reml_criterion : float or None
        ``-2 logLik`` of ML fits; lme4's ``REMLcrit`` of REML fits. Binomial and Poisson fits: R's
        ``deviance()``, the sum of squared deviance residuals (conditional on the modes for glmer).
    theta : Series or None
        lme4's relative covariance factor, in lme4's order and names (``getME(fit, "theta")``).
    varcorr : DataFrame or None
        Columns group, term, variance, sd. Per random term (in lme4's order of terms), its
        ``sd__<coef>`` and ``cor__<a>.<b>`` rows in lme4's ``as.data.frame(VarCorr(fit), order =
        "lower.tri")`` order, as broom.mixed's tidy lists them (:func:`~bayeslmm.labels.sdcor_terms`);
        a correlation's ``variance`` is the covariance and its ``sd`` the correlation (lme4's
        ``vcov``/``sdcor``); then group ``Residual``, term ``sd__Observation``.
    ranef, ranef_sd : dict of str to DataFrame
        Conditional modes (lme4's ``ranef``) and their conditional sds (``condVar``) per
        grouping factor: index = levels, columns = coefficients.
    ngroups : dict of str to int
    converged, singular : bool
        Optimizer convergence (gradient check) and lme4's ``isSingular``.
    boundary : tuple of (group, term, words)
        The parameters that make the fit singular: an sd at 0 or a correlation at +-1
        (:func:`_at_boundary`), each with what it is in words, naming its random term in lme4's syntax.
    family : {"gaussian", "binomial", "poisson", "negbinomial"}
    nagq : int or None
        glmer's ``nAGQ`` (1 = Laplace); None for other fits.
    nb_theta : float or None
        The negative binomial's theta (``glmer.nb``'s ``getME(fit, "glmer.nb.theta")``, ``glm.nb``'s
        ``theta``); None for other families. Its tidy row: group ``Residual``, term ``theta`` (:func:`tidy`).
    """

    method: str
    formula: str
    fixef: pd.Series
    se: pd.Series
    t: pd.Series
    df: pd.Series
    p: pd.Series
    vcov: pd.DataFrame
    sigma: float
    loglik: float
    aic: float
    bic: float
    npar: int
    nobs: int
    r_squared: float | None = None
    deviance: float | None = None
    reml_criterion: float | None = None
    theta: pd.Series | None = None
    varcorr: pd.DataFrame | None = None
    ranef: dict[str, pd.DataFrame] = field(default_factory=dict)
    ranef_sd: dict[str, pd.DataFrame] = field(default_factory=dict)
    ngroups: dict[str, int] = field(default_factory=dict)
    converged: bool = True
    singular: bool = False
    boundary: tuple[tuple[str, str, str], ...] = ()
    name: str = "model"
    family: str = "gaussian"
    nagq: int | None = None
    nb_theta: float | None = None
    _summaries: dict = field(default_factory=dict, init=False, repr=False)

    def tidy(self, ci: float = 0.95, effects: tuple[str, ...] = EFFECTS) -> pd.DataFrame:
        """broom.mixed's rows of this fit (:func:`tidy`, Wald intervals of mass ``ci``), computed once per ``ci``."""
        t = memo(self._summaries, float(ci), lambda: tidy(self, self.name, conf_level=ci))
        return t if tuple(effects) == EFFECTS else t[t["effect"].isin(effects)].reset_index(drop=True)

    def varcorr_table(self) -> pd.DataFrame:
        """Standard deviations and correlations as lme4's ``print(VarCorr(fit))`` lays them out
        (:func:`~bayeslmm.results.varcorr_table`); the field ``varcorr`` holds ``as.data.frame(VarCorr(fit))``."""
        return varcorr_table(self.tidy(effects=("ran_pars",)))

    @property
    def coef(self) -> pd.Series:
        """Alias of ``fixef`` (R's ``coef`` of an ``lm``)."""
        return self.fixef

    def boundary_terms(self) -> list[tuple[str, str]]:
        """``(group, term)`` of each sd lme4 put at 0 and each correlation at +-1 (what makes a fit singular).

        lme4's ``isSingular`` asks whether a diagonal element of theta is below :data:`SINGULAR_TOL`;
        :func:`_at_boundary` says which sd or correlation that is.
        """
        return [(g, t) for g, t, _ in self.boundary]

    def singular_note(self) -> str | None:
        """lme4's "boundary (singular) fit" in words, with what it means; ``None`` if not singular."""
        if not self.singular:
            return None
        what = ", ".join(words for _, _, words in self.boundary) or "a correlation at +-1"
        cors = any(t.startswith(COR_PREFIX) for _, t, _ in self.boundary)
        why = ("the groups' estimated effects on those coefficients lie on one line (common with few groups)" if cors
               else "the data show no variation there beyond what the rest of the model explains")
        advice = "dropping that term or its correlations (x||g)" if cors else "dropping that term"
        label = METHOD_LABELS.get(self.method, self.method)
        return (f"boundary (singular) fit: lme4's {label} fit puts {what}: {why}; the posterior (never "
                f"exactly at the boundary) says how large it could still be; consider {advice}")


def _boundary_words(term: str, random: RandomTerm, value: float) -> str:
    """One boundary parameter in words: ``the sd of (1|h) at 0``, ``the correlation cor__(Intercept).x of
    (1 + x|g) at -1``."""
    if term.startswith(SD_PREFIX):
        where = random.lme4 if len(random.coefs) == 1 else f"{term.removeprefix(SD_PREFIX)} in {random.lme4}"
        return f"the sd of {where} at 0"
    if np.isfinite(value) and abs(value) > 0.99:
        return f"the correlation {term} of {random.lme4} at {value:+.0f}"
    return f"the correlation matrix of {random.lme4} on its boundary ({term} and others)"


def _check_design(frame: ModelFrame) -> None:
    X = frame.X
    n, p = X.shape
    if p == 0:
        raise DataError(f"{frame.formula.text!r} has no fixed effects; lme4 needs at least one (y ~ 1 + ...)")
    if n <= p:
        raise DataError(f"{n} rows for {p} fixed effects: need more rows than coefficients")
    _, r, piv = linalg.qr(X, mode="economic", pivoting=True)
    d = np.abs(np.diag(r))
    bad = d < d[0] * max(n, p) * np.finfo(float).eps * 1e3
    if bad.any():
        names = ", ".join(frame.x_names[i] for i in piv[bad])
        raise DataError(f"fixed-effect columns are linearly dependent ({names}); drop or merge them")


def _fixed_table(frame: ModelFrame, beta: np.ndarray, cov: np.ndarray, df: np.ndarray | None) -> dict:
    """Estimates, SEs, t (``df=None``: Wald z, p-values from the normal) and the covariance, named."""
    names = list(frame.x_names)
    se = np.sqrt(np.diag(cov))
    t = beta / se
    p = 2 * (stats.norm.sf(np.abs(t)) if df is None else stats.t.sf(np.abs(t), df))
    return {
        "fixef": pd.Series(beta, index=names),
        "se": pd.Series(se, index=names),
        "t": pd.Series(t, index=names),
        "df": pd.Series(np.nan if df is None else df, index=names, dtype=float),
        "p": pd.Series(p, index=names),
        "vcov": pd.DataFrame(cov, index=names, columns=names),
    }


def fit_ols(frame: ModelFrame) -> FreqFit:
    """Ordinary least squares, as R's ``lm`` and its ``summary``, ``logLik``, ``AIC``, ``BIC``.

    Parameters
    ----------
    frame : ModelFrame
        Random blocks, if any, are ignored.

    Returns
    -------
    FreqFit
        ``method = "ols"``; ``loglik`` is the Gaussian ML log-likelihood with ``npar = p + 1``.
    """
    _check_design(frame)
    X, y = frame.X, frame.y
    n, p = X.shape
    q, r = linalg.qr(X, mode="economic")
    beta = linalg.solve_triangular(r, q.T @ y)
    rss = float(np.sum((y - X @ beta) ** 2))
    sigma2 = rss / (n - p)
    rinv = linalg.solve_triangular(r, np.eye(p))
    tss = float(np.sum((y - y.mean()) ** 2)) if frame.formula.intercept else float(y @ y)
    loglik = -0.5 * n * (np.log(2 * np.pi * rss / n) + 1)
    return FreqFit(
        method="ols",
        formula=frame.formula.text,
        **_fixed_table(frame, beta, sigma2 * rinv @ rinv.T, np.full(p, float(n - p))),
        sigma=float(np.sqrt(sigma2)),
        loglik=loglik,
        aic=-2 * loglik + 2 * (p + 1),
        bic=-2 * loglik + np.log(n) * (p + 1),
        npar=p + 1,
        nobs=n,
        r_squared=1 - rss / tss,
        varcorr=pd.DataFrame(
            [("Residual", "sd__Observation", sigma2, np.sqrt(sigma2))],
            columns=["group", "term", "variance", "sd"],
        ),
    )


def fit_lmm(frame: ModelFrame, method: Literal["reml", "ml"] = "reml", dense: bool | None = None) -> FreqFit:
    """Fit a linear mixed model as ``lme4::lmer`` (with lmerTest's Satterthwaite tests).

    Parameters
    ----------
    frame : ModelFrame
        Must have at least one random block.
    method : {"reml", "ml"}
        ``REML = TRUE`` or ``FALSE``.
    dense : bool, optional
        Force dense (``True``) or blockwise sparse (``False``) linear algebra; by default
        dense for several terms with up to :data:`~bayeslmm.lme4.lmer.DENSE_MAX_Q` random effects.

    Returns
    -------
    FreqFit

    Warns
    -----
    RuntimeWarning
        If the optimizer's gradient check fails.
    """
    if method not in ("reml", "ml"):
        raise OptionsError(f"method must be 'reml' or 'ml', not {method!r}")
    if not frame.blocks:
        raise OptionsError(f"{frame.formula.text!r} has no random terms; use fit_ols")
    _check_design(frame)
    n = frame.y.size
    for blk in frame.blocks:
        if not 1 < len(blk.levels) < n:  # lme4's checks on the number of levels
            raise DataError(
                f"grouping factor {blk.term.group!r} has {len(blk.levels)} levels for {n} rows; "
                "a random effect needs more than one level and fewer levels than rows"
            )
    m = LmerProblem(frame, reml=method == "reml", dense=dense)
    with blas_threads():
        theta, converged = m.optimize()
        if not converged:
            msg = f"{frame.formula.text}: the optimizer did not converge (gradient check failed)"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        pls = m.solve(theta)
        crit = m.criterion(pls)
        p = m.p
        sigma = float(np.sqrt(pls.pwrss / (n - p if m.reml else n)))
        cov = sigma**2 * linalg.cho_solve(pls.rx_chol, np.eye(p), check_finite=False)
        sat = satterthwaite(m.devfun_vp, m.covbeta, np.append(theta, sigma))
        npar = p + theta.size + 1
        varcorr, ranef, ranef_sd, boundary = _random_parts(m, pls, sigma)
    return FreqFit(
        method=method,
        formula=frame.formula.text,
        **_fixed_table(frame, pls.beta, cov, sat.df),
        sigma=sigma,
        loglik=-crit / 2,
        aic=crit + 2 * npar,
        bic=crit + np.log(n) * npar,
        npar=npar,
        nobs=n,
        deviance=None if m.reml else crit,
        reml_criterion=crit if m.reml else None,
        theta=pd.Series(theta, index=m.theta_names),
        varcorr=varcorr,
        ranef=ranef,
        ranef_sd=ranef_sd,
        ngroups={b.term.group: len(b.levels) for b in m.blocks},
        converged=converged,
        singular=bool(np.any(theta[m.diag_theta] < SINGULAR_TOL)),
        boundary=boundary,
    )


def _random_parts(m: LmerProblem, pls: Pls, sigma: float) -> tuple[pd.DataFrame, dict, dict, tuple]:
    """VarCorr rows, conditional modes, conditional sds and the boundary parameters, in lme4's order."""
    rows, ranef, ranef_sd, boundary = [], {}, {}, []
    b = pls.lam @ pls.u
    cond = pls.factor.inv_diag_blocks(m.layout)
    t_off = 0
    for blk, (off, nl, k), cblk in zip(m.blocks, m.layout, cond, strict=True):
        coefs, g = blk.term.coefs, blk.term.group
        tri = m.tri(k)
        T = np.zeros((k, k))
        for idx, (i, j) in enumerate(tri):
            T[i, j] = pls.theta[t_off + idx]
        t_off += len(tri)
        cov = sigma**2 * T @ T.T
        sd = np.sqrt(np.diag(cov))
        value = {sd_term(c): (cov[i, i], sd[i]) for i, c in enumerate(coefs)}
        for i in range(k):
            for j in range(i + 1, k):
                cor = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                value[cor_term(coefs[i], coefs[j])] = (cov[i, j], cor)
        rows += [(g, term, *value[term]) for term in sdcor_terms(coefs)]
        boundary += [(g, term, _boundary_words(term, blk.term, value[term][1])) for term in _at_boundary(T, coefs)]
        levels, cols = list(blk.levels), list(coefs)
        modes = pd.DataFrame(b[off : off + nl * k].reshape(nl, k), index=levels, columns=cols)
        csd = np.sqrt(np.einsum("ij,ljk,ik->li", T, cblk, T)) * sigma  # diag of sigma^2 T A^-1_ll T'
        csd = pd.DataFrame(csd, index=levels, columns=cols)
        if g in ranef:  # another term of the same factor, e.g. from (x||g): join columns like lme4
            modes, csd = ranef[g].join(modes), ranef_sd[g].join(csd)
        ranef[g], ranef_sd[g] = modes, csd
    rows.append(("Residual", "sd__Observation", sigma**2, sigma))
    return pd.DataFrame(rows, columns=["group", "term", "variance", "sd"]), ranef, ranef_sd, tuple(boundary)


def _at_boundary(T: np.ndarray, coefs: tuple[str, ...]) -> list[str]:
    """The terms of one random term that put lme4's fit on the boundary (``isSingular``).

    lme4 calls a fit singular when a diagonal element of a term's factor ``T`` (theta) is below
    :data:`SINGULAR_TOL`: coefficient j's effects are then a linear function of those of the
    coefficients before it. If its sd (row j of T) is 0 too, that sd is at the boundary; else its
    correlations with the earlier coefficients are (for two coefficients: the correlation is +-1).
    """
    out = []
    row_norm = np.sqrt((T**2).sum(axis=1))
    for j in range(len(coefs)):
        if T[j, j] >= SINGULAR_TOL:
            continue
        if row_norm[j] < SINGULAR_TOL:
            out.append(sd_term(coefs[j]))
        else:
            out += [cor_term(coefs[i], coefs[j]) for i in range(j) if row_norm[i] >= SINGULAR_TOL]
    return out


def fit(frame: ModelFrame, method: str | None = None, nagq: int | None = None) -> FreqFit:
    """Fit a frame as R would: ``lm`` or ``glm`` (``glm.nb``) without random terms; ``lmer`` (REML or ML) or,
    for binomial and Poisson frames, ``glmer`` (Laplace or AGQ) with them; ``glmer.nb`` (Laplace) for
    negative binomial ones.

    Parameters
    ----------
    frame : ModelFrame
    method : str, optional
        Gaussian: ``"reml"`` (default) or ``"ml"``; binomial and Poisson: ``"laplace"`` (default) or
        ``"agq"`` (:data:`GLMM_METHODS`). Ignored without random terms (``ols``, ``glm``).
    nagq : int, optional
        glmer's ``nAGQ`` for ``method="agq"`` (more than 1; one scalar random term).
    """
    if frame.family != "gaussian":
        if not frame.blocks:
            return fit_glm(frame)
        return fit_glmm(frame, method or "laplace", nagq)
    if nagq is not None:
        raise OptionsError("nAGQ is for binomial and Poisson mixed models (glmer); lmer integrates exactly")
    method = method or "reml"
    if not frame.blocks:
        return fit_ols(frame)
    if method == "ols":
        raise OptionsError(f"{frame.formula.text!r} has random terms; choose method 'reml' or 'ml'")
    return fit_lmm(frame, method)


def fit_glmm(frame: ModelFrame, method: str = "laplace", nagq: int | None = None) -> FreqFit:
    """Fit a binomial or Poisson mixed model as ``lme4::glmer`` (:mod:`bayeslmm.lme4.glmer`), a negative
    binomial one as ``lme4::glmer.nb`` (:mod:`bayeslmm.lme4.glmer_nb`; Laplace only).

    Parameters
    ----------
    frame : ModelFrame
    method : {"laplace", "agq"}
        The Laplace approximation (``nAGQ = 1``), or adaptive Gauss-Hermite quadrature with
        ``nagq`` nodes (one scalar random-effect term).
    nagq : int, optional
        1 for Laplace (the default); more than 1 (e.g. 25) for AGQ.

    Returns
    -------
    FreqFit
        Wald z tests, lme4's Hessian-based SEs, sds of the random effects on the link scale (no
        residual row), conditional modes and their conditional sds.
    """
    if method not in GLMM_METHODS:
        raise OptionsError(f"a {frame.family} mixed model is fitted by method 'laplace' or 'agq' (glmer), "
                           f"not {method!r}")
    if method == "laplace" and nagq not in (None, 1):
        raise OptionsError(f"method 'laplace' is nAGQ = 1; for nAGQ = {nagq} use method 'agq'")
    if method == "agq" and (nagq is None or nagq < 2):
        raise OptionsError("method 'agq' needs nagq > 1 Gauss-Hermite nodes (lme4's nAGQ, e.g. 25)")
    nagq = nagq or 1
    if frame.family == "negbinomial" and nagq != 1:
        raise OptionsError("a negative binomial mixed model is fitted as glmer.nb by the Laplace approximation "
                           "(method 'laplace'); adaptive quadrature is for binomial and Poisson models")
    _check_design(frame)
    n = frame.y.size
    for blk in frame.blocks:  # glmer's checkNlevels and checkZdims, with allow.n = TRUE
        nl, q = len(blk.levels), len(blk.levels) * blk.values.shape[1]
        if not 1 < nl <= n:
            raise DataError(f"grouping factor {blk.term.group!r} has {nl} levels for {n} rows; "
                            "a random effect needs more than one level and no more levels than rows")
        if q > n:
            raise DataError(f"{n} rows for {q} random effects of {blk.term.lme4}: more effects than observations "
                            "(glmer stops); drop coefficients from the term")
    with blas_threads():
        nb = glmer_nb.fit_glmer_nb(frame) if frame.family == "negbinomial" else None
        g = nb.glmer if nb is not None else glmer.fit_glmer(frame, nagq)
        md, m = g.modes, g.problem.structure
        pls = Pls(md.theta, md.lam, md.factor, float("nan"), (), md.beta, md.u, float("nan"))
        varcorr, ranef, ranef_sd, boundary = _random_parts(m, pls, 1.0)
    npar = m.p + md.theta.size + (nb is not None)  # glmer.nb's logLik counts theta
    return FreqFit(
        method=method,
        formula=frame.formula.text,
        **_fixed_table(frame, md.beta, g.vcov, None),
        sigma=1.0,
        loglik=g.loglik,
        aic=-2 * g.loglik + 2 * npar,
        bic=-2 * g.loglik + np.log(n) * npar,
        npar=npar,
        nobs=n,
        deviance=g.deviance,
        theta=pd.Series(md.theta, index=m.theta_names),
        varcorr=varcorr[varcorr["group"] != "Residual"].reset_index(drop=True),
        ranef=ranef,
        ranef_sd=ranef_sd,
        ngroups={b.term.group: len(b.levels) for b in m.blocks},
        converged=g.converged,
        singular=g.singular,
        boundary=boundary,
        family=frame.family,
        nagq=nagq,
        nb_theta=nb.theta if nb is not None else None,
    )


def fit_glm(frame: ModelFrame) -> FreqFit:
    """R's ``glm`` of a binomial or Poisson frame, MASS's ``glm.nb`` of a negative binomial one (random blocks,
    if any, are ignored): Wald z tests."""
    _check_design(frame)
    nb = glmer_nb.fit_glm_nb(frame) if frame.family == "negbinomial" else None
    g = nb.glm if nb is not None else glmer.fit_glm(frame)
    n, p = frame.X.shape
    p_ll = p + (nb is not None)  # glm.nb's logLik counts theta
    return FreqFit(
        method="glm",
        formula=frame.formula.text,
        **_fixed_table(frame, g.beta, g.vcov, None),
        sigma=1.0,
        loglik=g.loglik,
        aic=-2 * g.loglik + 2 * p_ll,
        bic=-2 * g.loglik + np.log(n) * p_ll,
        npar=p_ll,
        nobs=n,
        deviance=g.deviance,
        family=frame.family,
        nb_theta=nb.theta if nb is not None else None,
    )


def tidy(fit: FreqFit, model_name: str, conf_level: float = 0.95) -> pd.DataFrame:
    """One row per parameter in broom.mixed's schema (:data:`bayeslmm.results.TIDY_COLUMNS`).

    Parameters
    ----------
    fit : FreqFit
    model_name : str
    conf_level : float
        Level of the Wald intervals ``estimate ± z * std_error``.

    Returns
    -------
    DataFrame
        ``effect`` is ``fixed`` (with statistic, df, p_value), ``ran_pars`` (sd and correlation
        of each grouping factor, then group ``Residual`` term ``sd__Observation``; OLS fits get
        this row too; std_error and conf NaN) or ``ran_vals`` (conditional modes, std_error =
        conditional sd from ``condVar``). Empty ``group``/``level`` are ``""``, as in the
        Bayesian rows, so both sides join on ``(effect, group, term)``. A negative binomial fit's
        theta is a ``ran_pars`` row of group ``Residual``, term ``theta`` (std_error and conf NaN:
        lme4 gives it none), after the sds: broom.mixed has no row for it (lme4's ``VarCorr`` of a
        glmer.nb fit has no residual), but the side-by-side table needs it beside the posterior's.
    """
    if not 0 < conf_level < 1:
        raise OptionsError(f"conf_level must be between 0 and 1, not {conf_level}")
    z = stats.norm.ppf(0.5 + conf_level / 2)
    nan = float("nan")
    base = {"model": model_name, "method": fit.method}
    rows = []
    for term in fit.fixef.index:
        est, se = fit.fixef[term], fit.se[term]
        rows.append({
            **base, "effect": "fixed", "group": "", "level": "", "term": term, "estimate": est,
            "std_error": se, "conf_low": est - z * se, "conf_high": est + z * se,
            "statistic": fit.t[term], "df": fit.df[term], "p_value": fit.p[term],
        })
    for r in (fit.varcorr if fit.varcorr is not None else pd.DataFrame()).itertuples():
        rows.append({
            **base, "effect": "ran_pars", "group": r.group, "level": "", "term": r.term, "estimate": r.sd,
            "std_error": nan, "conf_low": nan, "conf_high": nan,
        })
    if fit.nb_theta is not None:
        rows.append({
            **base, "effect": "ran_pars", "group": RESIDUAL, "level": "", "term": NB_SIZE_TERM,
            "estimate": fit.nb_theta, "std_error": nan, "conf_low": nan, "conf_high": nan,
        })
    for g, modes in fit.ranef.items():
        for coef in modes.columns:
            for level, est in modes[coef].items():
                se = fit.ranef_sd[g].at[level, coef]
                rows.append({
                    **base, "effect": "ran_vals", "group": g, "level": level, "term": coef, "estimate": est,
                    "std_error": se, "conf_low": est - z * se, "conf_high": est + z * se,
                })
    return conform(pd.DataFrame(rows))


def lrt(reduced: FreqFit, full: FreqFit) -> dict:
    """Likelihood-ratio test of nested ML fits, as R's ``anova(reduced, full)``.

    Both fits must be ML: method ``ml``, or ``ols`` (whose logLik is the ML one, so an ``lm``
    can be the reduced model as in ``anova(lmer_fit, lm_fit)``); binomial and Poisson fits
    (``laplace``, ``agq``, ``glm``) are ML fits of one family.

    Returns
    -------
    dict
        ``chisq``, ``df``, ``p`` and ``AIC``, ``BIC``, ``logLik``, each a dict with keys
        ``reduced`` and ``full``.

    Raises
    ------
    OptionsError
        If a fit is REML (refit with ``method="ml"``, as lme4's ``anova`` does), the fits have
        different families or numbers of rows, or ``reduced`` has no fewer parameters than ``full``.
    """
    for label, f in (("reduced", reduced), ("full", full)):
        if f.method == "reml":
            raise OptionsError(
                f"the {label} model is a REML fit; a likelihood-ratio test needs ML fits (method='ml')"
            )
    if reduced.family != full.family:
        raise OptionsError(f"the models have different response families ({reduced.family} and {full.family}); "
                           "a likelihood-ratio test compares models of one family")
    if reduced.nobs != full.nobs:
        raise OptionsError(f"the models were fitted to different rows ({reduced.nobs} and {full.nobs})")
    if reduced.npar >= full.npar:
        raise OptionsError(
            f"the reduced model has {reduced.npar} parameters, the full one {full.npar}; swap them"
        )
    chisq = max(0.0, 2 * (full.loglik - reduced.loglik))
    df = full.npar - reduced.npar
    return {
        "chisq": chisq,
        "df": df,
        "p": float(stats.chi2.sf(chisq, df)),
        "AIC": {"reduced": reduced.aic, "full": full.aic},
        "BIC": {"reduced": reduced.bic, "full": full.bic},
        "logLik": {"reduced": reduced.loglik, "full": full.loglik},
    }


def variance_partition(fit: FreqFit, mean_count: float | None = None) -> dict[str, float]:
    """Share of each variance in the total: group -> var_g / (sum of variances + residual).

    Only random-intercept variances count (a slope's contribution depends on the covariate; the
    shares are those at covariate value 0). For one grouping factor the share is the ICC.
    The residual's share is under ``"Residual"``. A binomial, Poisson or negative binomial fit has
    no residual variance: its shares are on the latent scale, against
    :func:`~bayeslmm.results.latent_residual_variance` (the Bayesian side's rule; the mean count of
    a count model is the data's, ``mean_count``; the negative binomial's theta is the fit's).
    """
    vc = fit.varcorr
    keep = vc[(vc.term == "sd__(Intercept)") | (vc.group == "Residual")]
    var = keep.groupby("group", sort=False)["variance"].sum()
    if fit.family != "gaussian":
        if fit.family in COUNT_FAMILIES and mean_count is None:
            raise ValueError(f"the latent-scale share of a {fit.family} fit needs the data's mean count")
        var = pd.concat([var[var.index != "Residual"],
                         pd.Series({"Residual": latent_residual_variance(fit.family, mean_count, fit.nb_theta)})])
    return {str(g): float(v / var.sum()) for g, v in var.items()}
