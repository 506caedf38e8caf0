"""Exact cross-validation by refitting: LOO where PSIS fails, and leave-one-group-out (LOGO).

PSIS-LOO (:func:`bayeslmm.summary.compare.loo`) approximates each observation's leave-one-out
predictive density from the one posterior; where its Pareto k exceeds 0.7 the approximation is
unreliable. Fits are fast here, so :func:`reloo` refits the model without each such observation
(worst k first, at most ``max_refits`` of them) and puts the exact ``elpd_i`` in its place, as
arviz-stats' ``reloo`` does (k set to 0, ``p_loo_i = lpd_i - elpd_i``, totals recomputed). It is
written here rather than called: ``arviz_stats.reloo`` reads the whole pointwise log-likelihood
from the ``log_likelihood`` group (draws x rows in memory; bayeslmm recomputes it a block at a
time) and has no cap and no progress.

:func:`logo` holds out every row of one level of a grouping factor at a time, refits, and scores
the held-out rows jointly. LOO answers "how well does the model predict a new observation in a
group it has seen?"; LOGO "how well does it predict a new group?".

Each refit goes through the public :func:`bayeslmm.engines.bayes.fit` with the fit's sampler
settings and seed and the user's priors, and is cached like any fit (the cache key holds the
data). Each refit keeps the full fit's priors, Bambi's data-scaled defaults included
(:func:`bayeslmm.model.prior_model.pin_priors`; brms's ``kfold`` keeps a fit's priors too), so the
model validated is the model fitted. Formulas that compute a column from
the whole data (``scale()``, ``poly()``) are not refitted (:func:`refit_obstacle` says why).

The held-out rows' log density per posterior draw of a refit (:func:`heldout_log_density`) takes
the effects of the levels the refit saw from its draws (LOO's pointwise log-likelihood is
conditional on them too) and integrates out the effects of levels it did not see, given each
draw's sds and correlations: exactly for a Gaussian model (the rows are jointly multivariate
normal; Woodbury's identity gives the density), and for binomial and Poisson models by importance
sampling (Monte Carlo: ``IS_DRAWS`` Student-t draws, 4 df, around each posterior draw's Laplace
approximation of the new effects). The elpd of the rows is the log of the mean density over the
draws.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from bayeslmm.errors import BayeslmmError
from bayeslmm.labels import RESIDUAL_VARIABLE
from bayeslmm.model.formula import Formula, fixed_design, group_codes, materialize, offset_values, random_values
from bayeslmm.model.options import MAX_REFITS
from bayeslmm.model.priors import Priors
from bayeslmm.model.rterms import data_dependent
from bayeslmm.numbers import format_number
from bayeslmm.summary.compare import PARETO_K_BAD
from bayeslmm.summary.predict import (
    group_effect_draws,
    level_positions,
    n_draws,
    observed,
    param_draws,
    population_cholesky,
    random_terms,
    row_labels,
)
from bayeslmm.summary.tables import column_draws

#: Importance-sampling draws per posterior draw for the new levels of a binomial or Poisson model.
IS_DRAWS = 100
#: Degrees of freedom of the Student-t importance-sampling proposal.
IS_DF = 4.0
#: Families whose held-out density :func:`heldout_log_density` computes.
FAMILIES = ("gaussian", "binomial", "poisson")
#: Largest block of draws x rows (x importance draws) held at once.
BLOCK_BYTES = 2**27

GAUSSIAN_METHOD = ("exact: the held-out rows' multivariate normal density given each draw's fixed effects, "
                   "sds and sigma, the new group's effects integrated out")
GLMM_METHOD = (f"Monte Carlo: importance sampling over the new group's effects ({IS_DRAWS} Student-t draws around "
               "each posterior draw's Laplace approximation)")


def _quiet(message: str) -> None:
    """Progress goes nowhere (the API's default)."""


def log_mean_exp(values: np.ndarray) -> float:
    """log(mean(exp(values))), computed stably: the elpd of rows from their log density per draw."""
    values = np.asarray(values, dtype=float).ravel()
    return float(special.logsumexp(values) - np.log(values.size))


def refit_obstacle(formula: Formula) -> str | None:
    """Why a model cannot be cross-validated by refitting it, or ``None`` when it can."""
    if formula.family not in FAMILIES:
        return f"refits score {', '.join(FAMILIES)} models, not {formula.family} ones"
    computed = [e for e in formula.derived if data_dependent(e)]
    if computed:
        return (f"{computed[0]} is computed from all the rows, so a refit without some of them would change it; "
                "standardise the column before fitting (a study's [prepare] scale table) to refit")
    return None


# ---------------------------------------------------------------------------------------
# The held-out rows' predictive density
# ---------------------------------------------------------------------------------------


def heldout_log_density(fit, rows: pd.DataFrame, y: np.ndarray, trials: np.ndarray | None = None, *,
                        seed: int = 0, n_is: int = IS_DRAWS) -> np.ndarray:
    """Log density of held-out rows under each posterior draw of a fit that did not see them.

    Parameters
    ----------
    fit : BayesFit
        The refit (without ``rows``).
    rows : DataFrame
        The held-out rows, with the columns of the fit's data (its grouping factors' labels).
    y, trials : ndarray
        Their response as the likelihood sees it (:func:`bayeslmm.summary.predict.observed`), and a
        binomial model's trials.
    seed : int
        Seeds the importance sampling (binomial and Poisson models with new levels).
    n_is : int
        Importance-sampling draws per posterior draw.

    Returns
    -------
    ndarray, shape (draws,)
        ``log p(y_rows | draw)``, the rows jointly: the effects of levels the fit saw are the draw's,
        those of new levels integrated over the population the draw describes (see the module).

    Raises
    ------
    ValueError
        For a family :func:`heldout_log_density` does not score.
    """
    formula = fit.formula
    if formula.family not in FAMILIES:
        raise ValueError(f"no held-out density for family {formula.family!r}")
    rows = rows.reset_index(drop=True)
    m, S = len(rows), n_draws(fit)
    y = np.asarray(y, dtype=float)
    post = fit.idata["posterior"]
    design = fixed_design(formula, fit.data)
    x = design.evaluate(rows)
    beta = np.column_stack([column_draws(post, c) for c in design.columns]) if design.columns else np.zeros((S, 0))
    offset = offset_values(formula, rows)
    frame = materialize(formula, rows)
    seen, new_z, new_chol = [], [], []
    for term in random_terms(fit):
        values = random_values(term, frame)
        labels = row_labels(rows, term.group)
        known = np.zeros(m, dtype=bool)
        for j, coef in enumerate(term.coefs):
            levels, u = group_effect_draws(fit, term.group, coef)
            known = np.isin(labels, levels)
            if known.any():
                seen.append((u, np.flatnonzero(known), level_positions(levels, labels[known], term.group),
                             values[known, j]))
        new = list(dict.fromkeys(labels[~known]))
        if new:
            chol = population_cholesky(fit, term)
            for level in new:
                new_z.append(values * (labels == level)[:, None])
                new_chol.append(chol)
    z = np.concatenate(new_z, axis=1) if new_z else np.zeros((m, 0))
    q = z.shape[1]
    lower = np.zeros((S, q, q))  # block diagonal: the Cholesky factor of each new level's covariance
    at = 0
    for chol in new_chol:
        k = chol.shape[1]
        lower[:, at:at + k, at:at + k] = chol
        at += k

    def eta(sl: slice) -> np.ndarray:
        out = beta[sl] @ x.T + offset[None, :]
        for u, where, pos, vals in seen:
            out[:, where] += u[sl][:, pos] * vals[None, :]
        return out

    per = m * max(q, 1) * (n_is if formula.is_glmm and q else 1)
    step = max(1, BLOCK_BYTES // (8 * per))
    out = np.empty(S)
    rng = np.random.default_rng(seed)
    sigma = param_draws(fit, RESIDUAL_VARIABLE) if not formula.is_glmm else None
    for start in range(0, S, step):
        sl = slice(start, min(start + step, S))
        if not formula.is_glmm:
            out[sl] = _gaussian_density(y, eta(sl), sigma[sl], z, lower[sl])
        elif q == 0:
            out[sl] = family_loglik(formula.family, y, trials, eta(sl)).sum(axis=1)
        else:
            out[sl] = _integrated_density(formula.family, y, trials, eta(sl), np.einsum("mq,bqr->bmr", z, lower[sl]),
                                          rng, n_is)
    return out


def _gaussian_density(y: np.ndarray, eta: np.ndarray, sigma: np.ndarray, z: np.ndarray,
                      lower: np.ndarray) -> np.ndarray:
    """log N(y; eta, sigma^2 I + Z L L' Z') per draw, through the q x q matrix I + L'Z'ZL / sigma^2."""
    m, q = z.shape
    r = y[None, :] - eta
    s2 = sigma**2
    quad = np.einsum("bm,bm->b", r, r) / s2
    logdet = m * np.log(s2)
    if q:
        zl_zl = np.einsum("bqk,qp,bpl->bkl", lower, z.T @ z, lower)  # L'Z'ZL
        M = np.eye(q)[None] + zl_zl / s2[:, None, None]
        c = np.einsum("bqk,bq->bk", lower, r @ z)  # L'Z'r
        chol = np.linalg.cholesky(M)
        logdet = logdet + 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        w = np.linalg.solve(M, c[..., None])[..., 0]
        quad = quad - np.einsum("bk,bk->b", c, w) / s2**2
    return -0.5 * (m * np.log(2 * np.pi) + logdet + quad)


def family_loglik(family: str, y: np.ndarray, trials: np.ndarray | None, eta: np.ndarray) -> np.ndarray:
    """Log-likelihood of each row given its linear predictor: binomial (logit link, ``trials``) or Poisson (log link).

    The full log probability mass, binomial coefficient and ``log y!`` included (as the engines' pointwise
    log-likelihood has them), broadcasting ``y`` and ``trials`` against ``eta``.
    """
    return family_constant(family, y, trials) + _kernel(family, y, trials, eta)


def family_constant(family: str, y: np.ndarray, trials: np.ndarray | None) -> np.ndarray:
    """The part of each row's log-likelihood free of the linear predictor: log C(n, y) or -log y!."""
    if family == "binomial":
        n = np.asarray(trials, dtype=float)
        return special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    if family == "poisson":
        return -special.gammaln(y + 1)
    raise ValueError(f"no log-likelihood for family {family!r}")


def _kernel(family: str, y: np.ndarray, trials: np.ndarray | None, eta: np.ndarray) -> np.ndarray:
    """The rest: y eta - n log(1 + e^eta) (binomial, logit link) or y eta - e^eta (Poisson, log link)."""
    if family == "binomial":
        return y * eta - trials * np.logaddexp(0.0, eta)
    return y * eta - np.exp(eta)


def _mean_weight(family: str, y: np.ndarray, trials: np.ndarray | None, eta: np.ndarray):
    """The score residual ``y - E y`` and the weight ``Var y`` of each row (canonical links)."""
    if family == "binomial":
        p = special.expit(eta)
        return y - trials * p, trials * p * (1 - p)
    mu = np.exp(eta)
    return y - mu, mu


def _integrated_density(family: str, y: np.ndarray, trials: np.ndarray | None, eta: np.ndarray, zl: np.ndarray,
                        rng: np.random.Generator, n_is: int) -> np.ndarray:
    """log of the integral over b ~ N(0, I) of p(y | eta + ZL b) per draw, by importance sampling.

    Newton's method finds each draw's mode of the integrand (a concave log-density: canonical link
    and a normal prior), the negative Hessian H there gives the proposal, a Student-t (``IS_DF``
    degrees of freedom) with scale H^-1; the estimate is the log of the mean importance weight.
    """
    B, _, q = zl.shape
    eye = np.eye(q)[None]
    zlt = np.swapaxes(zl, 1, 2)
    b = np.zeros((B, q))
    for _ in range(100):
        resid, w = _mean_weight(family, y, trials, eta + np.matmul(zl, b[..., None])[..., 0])
        grad = np.matmul(zlt, resid[..., None])[..., 0] - b
        hess = np.matmul(zlt, zl * w[..., None]) + eye
        move = np.linalg.solve(hess, grad[..., None])[..., 0]
        move = np.clip(move, -1.0, 1.0)  # a damped step: counts far from the mean can overshoot
        b += move
        if np.max(np.abs(move)) < 1e-10:
            break
    _, w = _mean_weight(family, y, trials, eta + np.matmul(zl, b[..., None])[..., 0])
    chol = np.linalg.cholesky(np.matmul(zlt, zl * w[..., None]) + eye)  # H = R R'
    eps = rng.standard_normal((B, n_is, q))
    scale = np.sqrt(IS_DF / rng.chisquare(IS_DF, size=(B, n_is)))
    # b_s = mode + R'^-1 eps * scale: a t draw with scale matrix H^-1
    steps = np.linalg.solve(np.swapaxes(chol, 1, 2)[:, None], (eps * scale[..., None])[..., None])[..., 0]
    draws = b[:, None, :] + steps
    delta = np.einsum("bnq,bnq->bn", eps, eps) * scale**2  # (b - mode)' H (b - mode)
    log_q = (special.gammaln((IS_DF + q) / 2) - special.gammaln(IS_DF / 2) - q / 2 * np.log(IS_DF * np.pi)
             + np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)[:, None]
             - (IS_DF + q) / 2 * np.log1p(delta / IS_DF))
    lin = eta[:, None, :] + np.matmul(draws, zlt)
    log_target = (_kernel(family, y, trials, lin).sum(axis=2) + family_constant(family, y, trials).sum()
                  - 0.5 * np.einsum("bnq,bnq->bn", draws, draws) - q / 2 * np.log(2 * np.pi))
    return special.logsumexp(log_target - log_q, axis=1) - np.log(n_is)


# ---------------------------------------------------------------------------------------
# Refits
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refitter:
    """How to refit a model on some of its rows: its own sampler settings and seed, the user's priors, the
    run's cache.

    Attributes
    ----------
    formula : Formula, optional
        The formula as written (the fit's own by default).
    priors : Priors, optional
        The priors the user set for the model.
    cache_dir, save_dir : Path, optional
        As for :func:`bayeslmm.engines.bayes.sample_prepared`.
    refit : bool
        Ignore cached posteriors (``--refit``).
    """

    formula: Formula | None = None
    priors: Priors | None = None
    cache_dir: Path | None = None
    save_dir: Path | None = None
    refit: bool = False

    def __call__(self, fit, keep: np.ndarray, name: str):
        """The model of ``fit`` fitted to the rows of its data where ``keep`` is true."""
        from bayeslmm.engines import bayes
        from bayeslmm.model.options import RunOptions
        from bayeslmm.notices import collected

        data = fit.data.loc[np.asarray(keep, dtype=bool)].reset_index(drop=True)
        with collected():  # the data's warnings are the full fit's, already shown
            return bayes.fit(self.formula or fit.formula, data, fit.options, name=name,
                             run=RunOptions(refit=self.refit, progress=False), cache_dir=self.cache_dir,
                             save_dir=self.save_dir, priors=self.priors, pin=bayes.prior_model_of(fit))


@dataclass(frozen=True)
class Reloo:
    """What :func:`reloo` did to one fit's PSIS-LOO.

    Attributes
    ----------
    bad : tuple of int
        Rows (0-based, of the fit's data) with Pareto k above the threshold, worst first.
    refitted : tuple of int
        Those whose elpd is now exact (refitted without them).
    notes : tuple of str
        Why some were not refitted, and the refits' sampler warnings.
    seconds : float
        Wall time of the refits.
    """

    bad: tuple[int, ...] = ()
    refitted: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def left(self) -> tuple[int, ...]:
        """Rows with a large Pareto k still at PSIS's estimate."""
        done = set(self.refitted)
        return tuple(i for i in self.bad if i not in done)


def _refit_and_score(fit, refitter: Callable, keep: np.ndarray, name: str, y: np.ndarray,
                     trials: np.ndarray | None) -> tuple[object, float]:
    """Refit without the rows where ``keep`` is false, and the exact elpd of those rows (jointly)."""
    refit = refitter(fit, keep, name)
    idx = np.flatnonzero(~keep)
    ll = heldout_log_density(refit, fit.data.iloc[idx], y[idx], None if trials is None else trials[idx],
                             seed=fit.options.seed)
    return refit, log_mean_exp(ll)


def _sampler_note(fit, refits: list, what: str) -> list[str]:
    """One note when some refits had sampler warnings (divergences, r_hat, ESS)."""
    troubled = [r for r in refits if r.sampler_notes]
    if not troubled:
        return []
    return [f"{fit.name}: {len(troubled)} of the {len(refits)} {what} refits had sampler warnings "
            f"(e.g. {troubled[0].sampler_notes[0]})"]


def reloo(fit, psis, refitter: Callable, *, max_refits: int = MAX_REFITS, threshold: float = PARETO_K_BAD,
          echo: Callable[[str], None] = _quiet):
    """PSIS-LOO with the exact elpd of each observation whose Pareto k exceeds ``threshold``.

    Parameters
    ----------
    fit : BayesFit
    psis : ELPDDataLOO
        The fit's PSIS-LOO, pointwise (:func:`bayeslmm.summary.compare.loo`).
    refitter : callable
        ``refitter(fit, keep, name)`` fits the model to the rows where ``keep`` is true (:class:`Refitter`).
    max_refits : int
        At most this many refits (the worst k first); the rest keep PSIS's estimate.
    threshold : float
    echo : callable
        Where the progress lines go.

    Returns
    -------
    loo : ELPDDataLOO
        ``psis`` with the refitted observations' ``elpd_i`` exact, their ``pareto_k`` 0 and
        ``p_loo_i = lpd_i - elpd_i`` (arviz-stats' ``reloo``), the totals recomputed.
    info : Reloo
    """
    from bayeslmm.engines.bayes import log_likelihood

    k = np.asarray(psis.pareto_k, dtype=float).ravel()
    bad = tuple(int(i) for i in np.argsort(-k, kind="stable") if k[i] > threshold)
    obstacle = refit_obstacle(fit.formula)
    if not bad or max_refits < 1:
        return psis, Reloo(bad)
    if getattr(psis, "subsample_size", None):  # a refit's exact elpd replaces a row's PSIS, not a subsample's total
        return psis, Reloo(bad, notes=(f"{fit.name}: {len(bad)} observation(s) of the LOO subsample with Pareto k > "
                                       f"{threshold} not refitted: the elpd is estimated from a subsample of rows",))
    if obstacle is not None:
        return psis, Reloo(bad, notes=(f"{fit.name}: observations with Pareto k > {threshold} not refitted: "
                                       f"{obstacle}",))
    start = time.perf_counter()
    y, trials = observed(fit)
    out = copy.deepcopy(psis)
    elpd_i, pareto_k, p_loo_i = (np.array(getattr(out, a).values, dtype=float).reshape(-1)
                                 for a in ("elpd_i", "pareto_k", "p_loo_i"))
    todo = bad[:max_refits]
    done, refits, notes = [], [], []
    for n, i in enumerate(todo, 1):
        echo(f"{fit.name}: refitting {n}/{len(todo)} without row {i + 1} (Pareto k {format_number(k[i], 3)})")
        keep = np.ones(len(fit.data), dtype=bool)
        keep[i] = False
        try:
            refit, exact = _refit_and_score(fit, refitter, keep, f"{fit.name} without row {i + 1}", y, trials)
        except (BayeslmmError, ValueError) as exc:  # e.g. the row holds the only level of a fixed factor
            notes.append(f"{fit.name}: could not refit without row {i + 1}: {exc}")
            continue
        lpd = log_mean_exp(log_likelihood(fit, slice(i, i + 1)).values)
        elpd_i[i], pareto_k[i], p_loo_i[i] = exact, 0.0, lpd - exact
        done.append(i)
        refits.append(refit)
    for name, values in (("elpd_i", elpd_i), ("pareto_k", pareto_k), ("p_loo_i", p_loo_i)):
        setattr(out, name, getattr(out, name).copy(data=values.reshape(getattr(out, name).shape)))
    n = elpd_i.size
    out.elpd = float(elpd_i.sum())
    out.se = float(np.sqrt(n * np.var(elpd_i, ddof=1)))
    out.p = float(p_loo_i.sum())
    out.warning = bool(np.any(pareto_k > out.good_k))
    notes += _sampler_note(fit, refits, "LOO")
    return out, Reloo(bad, tuple(done), tuple(notes), time.perf_counter() - start)


@dataclass(frozen=True)
class Logo:
    """Leave-one-group-out cross-validation of one fit.

    Attributes
    ----------
    group : str
        The grouping factor.
    levels : tuple of str
    elpd_i : ndarray
        Each level's exact elpd: the log predictive density of its rows, jointly, from the refit without
        them (NaN where a refit failed).
    rows : ndarray
        Rows per level.
    method : str
        How the new level's effects were integrated out.
    notes : tuple of str
    seconds : float
    """

    group: str
    levels: tuple[str, ...]
    elpd_i: np.ndarray
    rows: np.ndarray
    method: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def elpd(self) -> float:
        """Sum of the levels' elpd (NaN if any refit failed)."""
        return float(np.sum(self.elpd_i))

    @property
    def se(self) -> float:
        """Its standard error from the spread over the levels (as LOO's from the spread over rows)."""
        K = self.elpd_i.size
        return float(np.sqrt(K * np.var(self.elpd_i, ddof=1))) if K > 1 else float("nan")


def logo(fit, group: str, refitter: Callable, *, echo: Callable[[str], None] = _quiet) -> Logo:
    """Leave-one-group-out: refit without each level of ``group`` in turn, score its rows.

    Parameters
    ----------
    fit : BayesFit
    group : str
        A grouping factor of the fit's formula (``mountainRange``).
    refitter : callable
        As for :func:`reloo`.
    echo : callable
        Where the progress lines go (``refitting 3/8 without mountainRange = Bavarian``).

    Raises
    ------
    ValueError
        If the formula has no such grouping factor, or cannot be refitted (:func:`refit_obstacle`).
    """
    if group not in fit.formula.grouping_factors:
        have = ", ".join(fit.formula.grouping_factors) or "none"
        raise ValueError(f"{fit.name} has no grouping factor {group!r}; its grouping factors: {have}")
    obstacle = refit_obstacle(fit.formula)
    if obstacle is not None:
        raise ValueError(f"{fit.name}: no leave-one-{group}-out: {obstacle}")
    start = time.perf_counter()
    y, trials = observed(fit)
    labels = row_labels(fit.data, group)
    levels = tuple(lv for lv in group_codes(fit.data, group)[0] if np.any(labels == lv))
    elpd, sizes, refits, notes = np.full(len(levels), np.nan), np.zeros(len(levels), dtype=int), [], []
    for n, level in enumerate(levels, 1):
        echo(f"{fit.name}: refitting {n}/{len(levels)} without {group} = {level}")
        out = labels == level
        sizes[n - 1] = int(out.sum())
        try:
            refit, elpd[n - 1] = _refit_and_score(fit, refitter, ~out, f"{fit.name} without {group} = {level}", y,
                                                  trials)
        except (BayeslmmError, ValueError) as exc:
            notes.append(f"{fit.name}: could not refit without {group} = {level}: {exc}")
            continue
        refits.append(refit)
    notes += _sampler_note(fit, refits, f"leave-one-{group}-out")
    method = GLMM_METHOD if fit.formula.is_glmm else GAUSSIAN_METHOD
    return Logo(group, levels, elpd, sizes, method, tuple(notes), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------
# A run's cross-validation
# ---------------------------------------------------------------------------------------


@dataclass
class CrossValidation:
    """The cross-validation of a run's comparisons: PSIS-LOO, exact where PSIS fails, and LOGO where asked.

    Each posterior (by content hash) is cross-validated once, however many comparisons show it.

    Attributes
    ----------
    max_refits : int
        Cap on the LOO refits per model (``--max-refits``; 0: PSIS alone).
    logo_group : str, optional
        Leave-one-group-out by this grouping factor in every comparison (``--logo``); a comparison's
        own ``logo`` otherwise.
    formulas, priors : dict
        The study's formula and the user's priors of each model, by name.
    cache_dir, save_dir : Path, optional
        Where refits are looked up and saved (the report's ``fits/``).
    refit : bool
        Ignore cached refits.
    echo : callable
        Where progress lines go.
    """

    max_refits: int = MAX_REFITS
    logo_group: str | None = None
    formulas: dict[str, Formula] = field(default_factory=dict)
    priors: dict[str, Priors] = field(default_factory=dict)
    cache_dir: Path | None = None
    save_dir: Path | None = None
    refit: bool = False
    echo: Callable[[str], None] = _quiet
    notes: list[str] = field(default_factory=list, init=False)
    _loo: dict = field(default_factory=dict, init=False, repr=False)
    _logo: dict = field(default_factory=dict, init=False, repr=False)

    def refitter(self, fit) -> Refitter:
        """The :class:`Refitter` of one of the run's fits."""
        return Refitter(self.formulas.get(fit.name), self.priors.get(fit.name), self.cache_dir, self.save_dir,
                        self.refit)

    def group_of(self, comparison) -> str:
        """The grouping factor a comparison is cross-validated by (``""``: none)."""
        return self.logo_group or getattr(comparison, "logo", "") or ""

    def loo(self, fit):
        """PSIS-LOO of a fit with exact refits where Pareto k > 0.7: ``(ELPDDataLOO, Reloo)``."""
        from bayeslmm.summary.compare import loo

        if fit.key not in self._loo:
            psis = fit.store.get("loo", (fit.key,), lambda: loo(fit))  # kept beside a cached posterior
            result, info = reloo(fit, psis, self.refitter(fit), max_refits=self.max_refits, echo=self.echo)
            if info.refitted:
                left = (f"; {len(info.left)} left at PSIS's estimate (--max-refits {self.max_refits})"
                        if info.left else "")
                self.echo(f"{fit.name}: LOO: refitted without each of {len(info.refitted)} observation(s) with "
                          f"Pareto k > {PARETO_K_BAD} in {info.seconds:.1f} s (exact elpd){left}")
            self.notes.extend(info.notes)
            self._loo[fit.key] = (result, info)
        return self._loo[fit.key]

    def logo(self, fit, group: str) -> Logo | None:
        """Leave-one-``group``-out of a fit; ``None`` (and a note) when it cannot be done."""
        if (fit.key, group) not in self._logo:
            result = None
            if group not in fit.formula.grouping_factors:
                self.notes.append(f"{fit.name}: its formula has no {group} term, so no leave-one-{group}-out")
            else:
                try:
                    result = logo(fit, group, self.refitter(fit), echo=self.echo)
                except ValueError as exc:
                    self.notes.append(str(exc))
            if result is not None:
                self.echo(f"{fit.name}: leave-one-{group}-out: elpd {format_number(result.elpd)} "
                          f"(SE {format_number(result.se)}), {len(result.levels)} refits in {result.seconds:.1f} s")
                self.notes.extend(result.notes)
            self._logo[(fit.key, group)] = result
        return self._logo[(fit.key, group)]
