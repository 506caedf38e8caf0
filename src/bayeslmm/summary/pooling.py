"""No pooling and complete pooling of a binomial or Poisson model, on the link scale, for the shrinkage figures.

The Gaussian shrinkage figures (:mod:`bayeslmm.graphics.plots_pooling`) compare each level's own
least-squares coefficients (no pooling), one regression for all (complete pooling) and the mixed
model (partial pooling). For a binomial or Poisson model the same comparison lives on the link
scale (log-odds, log rate), and the own coefficients are maximum-likelihood ones:

- **No pooling** (:func:`glm_no_pooling`): one GLM with ``own`` columns per level (an intercept, and
  for the 2-D figure the slopes that vary by level) and ``common`` columns shared by all rows: the
  GLM analogue of ``y ~ common + group + group:x``. Solved by Newton's method (Fisher scoring: the
  canonical logit and log links) on the whole likelihood at once, the level blocks of the Hessian
  eliminated through their Schur complement (no rows x levels matrix).
- **Separation.** A level's own maximum-likelihood estimate may not exist: all its trials succeed
  or all fail, all its counts are 0, or (with a slope) its successes and failures are split by
  the covariate. Its likelihood then keeps rising as its coefficients run off to infinity in some
  direction. :func:`separation` finds such a direction exactly, by the linear programme of Albert and
  Anderson (1984) / Konis (2007) that the separation warning uses
  (:func:`bayeslmm.model.checks.separating_direction`): a ``d`` with ``x'd >= 0`` where a row has only
  successes, ``<= 0`` where it has only failures, ``= 0`` where it has both (Poisson: ``= 0`` where a
  count is positive, ``<= 0`` where it is 0), not 0 on every row. Such a level's coefficients are
  reported as +-inf along ``d`` (NaN where ``d`` is 0 or the level's data say nothing about a
  coefficient: all failures leave a slope undetermined), and its rows are left out of the shared fit
  (in the limit they fit perfectly whatever the shared coefficients are; under quasi-complete
  separation the rows on the boundary would still say something: leaving them out is a convention).
- **Complete pooling** (:func:`complete_pooling`): R's ``glm`` without group effects
  (:func:`bayeslmm.lme4.glmer.fit_glm`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse

from bayeslmm.errors import DataError
from bayeslmm.lme4 import glmer
from bayeslmm.model.checks import separating_direction

#: Why a level's own estimate is infinite, by family and what its data show.
ALL_SUCCESSES, ALL_FAILURES, ALL_ZERO = "all successes", "all failures", "all zero counts"
SPLIT_BINOMIAL = "separated by its covariates"
SPLIT_POISSON = "zeros at one end of its covariates"
#: Families this module fits: their canonical links, no dispersion parameter (a negative binomial's no pooling
#: would need its theta per level or shared: not done here, and its figures say so).
FAMILIES = ("binomial", "poisson")


@dataclass(frozen=True)
class NoPooling:
    """Each level's own coefficients (:func:`glm_no_pooling`).

    Attributes
    ----------
    coefs : ndarray, shape (levels, own columns)
        Maximum-likelihood estimates; +-inf where the level's estimate runs off to infinity
        (:attr:`direction`), NaN where its rows do not determine a coefficient (no rows, a covariate
        that does not vary within the level, or a coefficient left undetermined by separation).
    direction : ndarray, shape (levels, own columns)
        Unit vector along which a separated level's estimate runs off; 0 for the other levels.
    reason : tuple of str
        Per level: why its estimate is infinite (:data:`ALL_SUCCESSES`, ...); ``""`` if it is not.
    common : ndarray
        The shared coefficients (of the ``common`` columns); 0 for a column the levels' own columns
        absorb (:func:`_estimable`), as least squares' minimum-norm solution gives it.
    """

    coefs: np.ndarray
    direction: np.ndarray
    reason: tuple[str, ...]
    common: np.ndarray


def separation(family: str, x: np.ndarray, y: np.ndarray, trials: np.ndarray | None = None) -> np.ndarray | None:
    """A direction in which the log-likelihood of ``y`` on the columns ``x`` rises for ever, or None if its
    maximum is attained (``x`` of full column rank).

    Parameters
    ----------
    family : {"binomial", "poisson"}
    x : ndarray, shape (rows, k)
    y : ndarray
        Successes (binomial, out of ``trials``) or counts (Poisson).
    trials : ndarray, optional
        Binomial trials per row (ones by default).

    Returns
    -------
    ndarray of shape (k,) with unit length, or None
        ``d`` with ``x'd >= 0`` on rows with only successes, ``<= 0`` on rows with only failures and
        ``= 0`` on rows with both (binomial), or ``x'd <= 0`` on zero counts and ``= 0`` on positive ones
        (Poisson: as a row with only failures and one with both), ``x'd`` not 0 on every row: the
        linear programme of :func:`bayeslmm.model.checks.separating_direction`.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    if family == "binomial":
        m = np.ones_like(y) if trials is None else np.asarray(trials, dtype=float)
        sign = np.where(y >= m, 1.0, np.where(y <= 0, -1.0, 0.0))
    elif family == "poisson":
        sign = np.where(y > 0, 0.0, -1.0)
    else:
        raise ValueError(f"separation is defined here for the families {', '.join(FAMILIES)}, not {family!r}")
    if x.shape[1] == 2 and np.all(x[:, 0] == 1.0) and np.ptp(x[:, 1]) > 0:
        d = _line_separation(x[:, 1], sign)
    else:
        d = separating_direction(x, sign)
    return None if d is None else d / np.linalg.norm(d)


def _line_separation(x: np.ndarray, sign: np.ndarray) -> np.ndarray | None:
    """:func:`~bayeslmm.model.checks.separating_direction` for an intercept and one covariate ``x``, in closed form
    (the linear programme costs milliseconds a level; a thousand levels' 2-D figure would wait seconds).

    ``d = (a, b)`` with ``a + b x >= 0`` where ``sign`` is +1, ``<= 0`` where -1, ``= 0`` where 0, and not 0
    everywhere: with ``b = 0``, ``a`` alone when every row has one sign; else a threshold ``t = -a / b`` with the
    rows that need ``>= 0`` on one side of it and those that need ``<= 0`` on the other (rows of sign 0 on
    it). Returns the direction through the middle of the gap, or None.
    """
    if np.all(sign > 0) or np.all(sign < 0):
        return np.array([float(sign[0]), 0.0])
    up = x[sign >= 0]  # rows that allow a + b x >= 0 (sign 0: = 0, both)
    down = x[sign <= 0]
    for b in (1.0, -1.0):  # b > 0: every "up" row right of every "down" row; b < 0: the mirror image
        lo, hi = (down.max(), up.min()) if b > 0 else (up.max(), down.min())
        if lo <= hi:  # rows of sign 0 are in both sets: then lo = hi = their one x value
            t = (lo + hi) / 2
            return np.array([-b * t, b])
    return None


def _independent(x: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Which columns of ``x`` to keep, in order, each one not in the span of those kept before it
    (relative to ``scale``, the columns' norms by default)."""
    keep = np.zeros(x.shape[1], dtype=bool)
    scale = np.linalg.norm(x, axis=0) if scale is None else scale
    for j in range(x.shape[1]):
        if scale[j] == 0:
            continue
        trial = keep.copy()
        trial[j] = True
        cols = x[:, trial] / scale[trial]
        if np.linalg.matrix_rank(cols, tol=1e-9) == trial.sum():
            keep = trial
    return keep


def _estimable(common: np.ndarray, own: np.ndarray, pos: np.ndarray, n_levels: int) -> np.ndarray:
    """Which shared columns the data determine beside every level's own columns (``own`` zero where a level
    does not estimate a column): those not in the span of the others and the levels' own columns.

    A column constant within every level (a level-wide covariate, such as a school's ``urban``) is
    absorbed by the levels' own intercepts, as least squares absorbs it in the Gaussian version.
    """
    p = common.shape[1]
    if p == 0:
        return np.zeros(0, dtype=bool)
    resid = common.copy()
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(n_levels + 1))
    for lv in range(n_levels):
        rows = order[bounds[lv]:bounds[lv + 1]]
        if rows.size:
            c, *_ = np.linalg.lstsq(own[rows], common[rows], rcond=None)
            resid[rows] -= own[rows] @ c
    return _independent(resid, np.linalg.norm(common, axis=0))


def _level_status(family: str, x: np.ndarray, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, str, np.ndarray]:
    """A level's independent own columns (a mask), and if its estimate is infinite why and in which direction."""
    k = x.shape[1]
    keep = _independent(x)
    none = np.zeros(k)
    if not keep.any():
        return keep, "", none
    total, ones = y.sum(), np.all(x[:, 0] == 1.0)
    reason = ""
    if family == "binomial" and total == 0:
        reason = ALL_FAILURES
    elif family == "binomial" and total == m.sum():
        reason = ALL_SUCCESSES
    elif family == "poisson" and total == 0:
        reason = ALL_ZERO
    if reason and ones:  # the own intercept runs off; the data say nothing about the slopes
        d = none.copy()
        d[0] = 1.0 if reason == ALL_SUCCESSES else -1.0
        return keep, reason, d
    if ones and keep.sum() == 1 and keep[0]:  # an intercept alone runs off only as above
        return keep, "", none
    d_keep = separation(family, x[:, keep], y, m)
    if d_keep is None:
        return keep, "", none
    d = none.copy()
    d[keep] = d_keep
    return keep, reason or (SPLIT_BINOMIAL if family == "binomial" else SPLIT_POISSON), d


def glm_no_pooling(family: str, y: np.ndarray, trials: np.ndarray | None, offset: np.ndarray | None,
                   common: np.ndarray, own: np.ndarray, pos: np.ndarray, n_levels: int) -> NoPooling:
    """Each level's own coefficients on the ``own`` columns, the ``common`` ones shared: one GLM by maximum likelihood.

    Parameters
    ----------
    family : {"binomial", "poisson"}
        Logit and log links.
    y : ndarray
        Successes (binomial) or counts (Poisson) per row.
    trials : ndarray, optional
        Binomial trials per row (ones: a yes/no response).
    offset : ndarray, optional
        On the link scale (``log(exposure)``).
    common : ndarray, shape (rows, p)
        Columns with one coefficient for all rows (may have no columns).
    own : ndarray, shape (rows, k)
        Columns with a coefficient per level (first an intercept column of ones, for the figures).
    pos : ndarray of int
        Each row's level, 0 to ``n_levels - 1``.
    n_levels : int

    Returns
    -------
    NoPooling

    Raises
    ------
    DataError
        If the shared fit does not converge (separation by a common column: no finite estimate).
    """
    if family not in FAMILIES:
        raise ValueError(f"no GLM no-pooling fit for family {family!r}; it is for {', '.join(FAMILIES)}")
    y = np.asarray(y, dtype=float)
    n = y.size
    m = np.ones(n) if trials is None else np.asarray(trials, dtype=float)
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    own = np.asarray(own, dtype=float).reshape(n, -1)
    common = np.asarray(common, dtype=float).reshape(n, -1)
    pos = np.asarray(pos, dtype=np.int64)
    k = own.shape[1]
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(n_levels + 1))
    mask = np.zeros((n_levels, k), dtype=bool)  # the own columns each level's fit estimates
    direction = np.zeros((n_levels, k))
    reason = [""] * n_levels
    for lv in range(n_levels):
        rows = order[bounds[lv]:bounds[lv + 1]]
        mask[lv], reason[lv], direction[lv] = _level_status(family, own[rows], y[rows], m[rows])
    separated = np.array([bool(r) for r in reason])
    mask[separated] = False
    use = ~separated[pos]
    own_used = own[use] * mask[pos[use]]
    shared = _estimable(common[use], own_used, pos[use], n_levels)
    a, b_shared = _shared_fit(family, y[use], m[use], off[use], common[use][:, shared], own_used, pos[use], n_levels,
                              mask)
    b = np.zeros(common.shape[1])
    b[shared] = b_shared
    full = mask.all(axis=1)
    coefs = np.where(full[:, None], a, np.nan)
    with np.errstate(invalid="ignore"):
        inf = np.where(direction > 0, np.inf, np.where(direction < 0, -np.inf, np.nan))
    coefs[separated] = inf[separated]
    return NoPooling(coefs, direction, tuple(reason), b)


def _start(family: str, y: np.ndarray, m: np.ndarray, off: np.ndarray, own: np.ndarray, pos: np.ndarray,
           n_levels: int, mask: np.ndarray) -> np.ndarray:
    """Own coefficients to start from: each level's link of its pooled mean on an intercept column, else 0."""
    a = np.zeros(mask.shape)
    if own.shape[0] and np.all(own[:, 0][mask[pos, 0]] == 1.0):
        sy, sm = np.bincount(pos, y, n_levels), np.bincount(pos, m, n_levels)
        if family == "binomial":
            a[:, 0] = np.log((sy + 0.5) / (sm - sy + 0.5))
        else:
            a[:, 0] = np.log((sy + 0.1) / np.maximum(np.bincount(pos, np.exp(off), n_levels), 1e-300))
        a[~mask] = 0.0
    return a


def _shared_fit(family: str, y: np.ndarray, m: np.ndarray, off: np.ndarray, common: np.ndarray, own: np.ndarray,
                pos: np.ndarray, n_levels: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newton's method on the whole no-pooling likelihood (own columns already zero where ``mask`` is False).

    Each step solves the Hessian system by eliminating the level blocks (k x k each): the shared step
    from the Schur complement ``C - sum_l B_l' A_l^-1 B_l``, then each level's. A masked coefficient has a
    zero column, so a unit diagonal keeps its block invertible and its step 0. Steps are halved until
    the deviance does not rise; iterations stop one step after the Newton decrement is below
    :data:`bayeslmm.lme4.glmer.PIRLS_TOL` (relative), as :func:`~bayeslmm.lme4.glmer.fit_glm` does.
    """
    n, k = own.shape
    p = common.shape[1]
    a = _start(family, y, m, off, own, pos, n_levels, mask)
    b = np.zeros(p)
    if n == 0:
        return a, b
    per = sparse.csr_matrix((np.ones(n), (pos, np.arange(n))), shape=(n_levels, n))
    pad = (~mask).astype(float)[:, :, None] * np.eye(k)[None]

    def eta_of(a_: np.ndarray, b_: np.ndarray) -> np.ndarray:
        return off + np.einsum("ij,ij->i", own, a_[pos]) + common @ b_

    eta = eta_of(a, b)
    dev = glmer.neg2loglik(family, eta, y, m)
    last = False
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(glmer.PIRLS_MAXIT):
            r, w = glmer.working(family, eta, y, m)
            if last:
                return a, b
            ga = np.asarray(per @ (own * r[:, None]))
            gb = common.T @ r
            wo = own * w[:, None]
            big_a = np.asarray(per @ (wo[:, :, None] * own[:, None, :]).reshape(n, k * k)).reshape(n_levels, k, k) + pad
            big_b = np.asarray(per @ (wo[:, :, None] * common[:, None, :]).reshape(n, k * p)).reshape(n_levels, k, p)
            a_inv = np.linalg.inv(big_a)
            a_inv_g = np.einsum("lij,lj->li", a_inv, ga)
            a_inv_b = a_inv @ big_b
            schur = common.T @ (common * w[:, None]) - np.einsum("lki,lkj->ij", big_b, a_inv_b)
            rhs = gb - np.einsum("lki,lk->i", big_b, a_inv_g)
            db = linalg.solve(schur, rhs, assume_a="pos") if p else np.zeros(0)
            da = a_inv_g - np.einsum("lkj,j->lk", a_inv_b, db)
            dec = float(np.sum(ga * da) + gb @ db)
            for _ in range(glmer.MAX_HALVINGS + 1):
                eta_new = eta_of(a + da, b + db)
                dev_new = glmer.neg2loglik(family, eta_new, y, m)
                if np.isfinite(dev_new) and dev_new <= dev + 1e-10 * abs(dev):
                    break
                da, db = da / 2, db / 2
            else:
                raise DataError("the no-pooling GLM's step halvings failed to lower the deviance")
            a, b, eta, dev = a + da, b + db, eta_new, dev_new
            last = dec < glmer.PIRLS_TOL * max(1.0, abs(dev))
    raise DataError(f"the no-pooling GLM did not converge in {glmer.PIRLS_MAXIT} iterations: a shared covariate "
                    "separates the data (its estimate runs off to infinity)")


def complete_pooling(frame, extra: np.ndarray | None = None) -> np.ndarray:
    """R's ``glm`` of a binomial or Poisson frame without its group effects: the coefficients of ``frame.X``
    (and of the column ``extra`` after them, when given: a random slope the fixed part lacks)."""
    from dataclasses import replace

    if extra is not None:
        frame = replace(frame, X=np.column_stack([frame.X, extra]), x_names=(*frame.x_names, "extra"))
    with warnings.catch_warnings():  # separation of the pooled fit is not this figure's business
        warnings.simplefilter("ignore", RuntimeWarning)
        return glmer.fit_glm(frame).beta
