"""Rank-normalised split R-hat and bulk/tail effective sample sizes (Vehtari et al. 2021), vectorised.

The same estimators as arviz-stats' ``rhat(method="rank")`` and ``ess(method="bulk"/"tail")`` (its
``_rhat_rank``, ``_ess_bulk``, ``_ess_tail``; ``tests/test_convergence.py`` holds them to 1e-10),
computed for every parameter of a ``(chain, draw, ...)`` array at once: one sort for the ranks and a
compiled Geyer loop over all columns that sums each autocovariance only up to the lag where the column
stops, instead of a Python call per element (thousands of group levels) and an FFT of every lag, and
without importing arviz-stats (a second of a short ``bayeslmm fit``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: Blom's fractional offset of the normal scores of ranks.
BLOM = 3 / 8


def _columns(draws: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(chain, draw, ...)`` as ``(columns, chain, draw)`` and the trailing shape."""
    draws = np.asarray(draws, dtype=float)
    chains, n = draws.shape[:2]
    shape = draws.shape[2:]
    return np.moveaxis(draws.reshape(chains, n, -1), -1, 0), shape


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain split in two halves (the middle draw of an odd count dropped): (cols, 2 chains, draws/2)."""
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half:]], axis=1)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks over all chains and draws of each column (cols, chains, draws): Blom's
    ``ndtri((r - 3/8) / (m + 1/4))`` of each draw's rank ``r`` among the column's ``m``, ties given their
    mean rank (scipy's ``rankdata``)."""
    from scipy.special import ndtri

    cols, k, n = x.shape
    m = k * n
    # a rank, or a tie's mean rank, is a whole or a half number: its score is looked up, not computed per draw
    halves = np.arange(2, 2 * m + 1) / 2.0
    scores = ndtri((halves - BLOM) / (m - 2 * BLOM + 1))
    flat = np.ascontiguousarray(x.reshape(cols, m))
    order = np.argsort(flat, axis=1)  # NumPy's sort (not numba's, twice as slow); ties get their mean rank anyway
    return _scores_of_ranks(flat, order, scores).reshape(cols, k, n)


@nb.njit(cache=True, nogil=True)
def _scores_of_ranks(x: np.ndarray, orders: np.ndarray, scores: np.ndarray) -> np.ndarray:  # pragma: no cover
    """``scores[2 r - 2]`` for the rank ``r`` (1-based; a run of equal values shares its mean) of each entry
    of each row of ``x`` (cols, m) whose sorting permutation is that row of ``orders``."""
    cols, m = x.shape
    out = np.empty_like(x)
    for c in range(cols):
        order = orders[c]
        start = 0
        while start < m:
            end = start + 1
            while end < m and x[c, order[end]] == x[c, order[start]]:
                end += 1
            score = scores[start + end - 1]  # the mean rank (start + 1 + end) / 2, doubled, less 2
            for i in range(start, end):
                out[c, order[i]] = score
            start = end
    return out


def _rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat of each column of (cols, chains, draws) as given."""
    n = x.shape[2]
    between = n * np.var(x.mean(axis=2), axis=1, ddof=1)
    within = np.mean(np.var(x, axis=2, ddof=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant draws: NaN, as arviz-stats gives
        return np.sqrt((between / within + n - 1) / n)


def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of each parameter of ``draws`` (chain, draw, ...): the larger of the bulk
    (z-scored) and the tail (folded, z-scored) split R-hat. NaN with fewer than 2 chains or 4 draws."""
    x, shape = _columns(draws)
    if x.shape[1] < 2 or x.shape[2] < 4:
        return np.full(shape, np.nan)
    split = _split(x)
    bulk = _rhat(_z_scale(split))
    med = np.median(split.reshape(split.shape[0], -1), axis=1)[:, None, None]
    tail = _rhat(_z_scale(np.abs(split - med)))
    return _valid(np.maximum(bulk, tail), x).reshape(shape)


def _ess(x: np.ndarray) -> np.ndarray:
    """ESS of each column of (cols, chains, draws): Geyer's initial monotone sequence on the chains'
    autocovariances (arviz-stats' ``_ess``)."""
    cols, k, n = x.shape
    out = np.full(cols, float(k * n))
    flat = np.ptp(x.reshape(cols, -1), axis=1) < np.finfo(float).resolution
    live = np.flatnonzero(~flat)
    if live.size:
        out[live] = _geyer(np.ascontiguousarray(x[live]), len(range(1, n - 3, 2)))
    return out


@nb.njit(cache=True, nogil=True)
def _geyer(x: np.ndarray, most: int) -> np.ndarray:  # pragma: no cover  (compiled)
    """ESS of each column of (cols, chains, draws) by Geyer's initial monotone sequence, arviz-stats' loop.

    Sum the autocorrelations in pairs (lags 0-1, 2-3, ...) while a pair's sum stays positive (at most
    ``most`` pairs after the first), make the pairs' sums non-increasing, and add the first element of the
    pair that stopped it when positive (or when that pair was kept at a sum of exactly 0). Each lag's
    autocovariance is summed directly, only up to the lag where the column stops (a few, for the draws of
    a sampler that mixes): arviz-stats takes every lag by FFT, which at 32,000 group levels took 30 times
    as long; the two agreed to 2e-14 on independent, AR(0.95), antithetic and tied draws, and
    ``tests/test_convergence.py`` holds this one to arviz-stats at 1e-10.
    """
    cols, k, n = x.shape
    total = k * n
    floor = 1.0 / np.log10(total)
    out = np.empty(cols)
    means = np.empty(k)
    for c in range(cols):
        for j in range(k):
            means[j] = x[c, j].mean()
        between = 0.0
        if k > 1:
            grand = means.mean()
            for j in range(k):
                between += (means[j] - grand) ** 2
            between /= k - 1

        mean_var = _mean_acov(x[c], means, 0) * n / (n - 1.0)
        var_plus = mean_var * (n - 1.0) / n + between
        even = 1.0
        pair = even + 1.0 - (mean_var - _mean_acov(x[c], means, 1)) / var_plus
        lowest, head, steps = pair, 0.0, 0
        while steps < most and pair > 0:
            head += lowest
            steps += 1
            even = 1.0 - (mean_var - _mean_acov(x[c], means, 2 * steps)) / var_plus
            pair = even + 1.0 - (mean_var - _mean_acov(x[c], means, 2 * steps + 1)) / var_plus
            lowest = min(lowest, pair)
        add = even if (even > 0 or (steps > 0 and pair >= 0)) else 0.0
        tau = max(-1.0 + 2.0 * head + add, floor)
        out[c] = np.nan if np.isnan(pair) else total / tau
    return out


@nb.njit(cache=True, nogil=True)
def _mean_acov(chains: np.ndarray, means: np.ndarray, lag: int) -> float:  # pragma: no cover  (compiled)
    """The chains' autocovariance at ``lag`` (divided by the draws, as the FFT's), averaged over chains."""
    k, n = chains.shape
    total = 0.0
    for j in range(k):
        m = means[j]
        for t in range(n - lag):
            total += (chains[j, t] - m) * (chains[j, t + lag] - m)
    return total / n / k


def _valid(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NaN where a column has a NaN draw (arviz-stats' ``not_valid``)."""
    bad = np.isnan(x.reshape(x.shape[0], -1)).any(axis=1)
    return np.where(bad, np.nan, values)


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS of each parameter of ``draws`` (chain, draw, ...): ESS of the rank-normalised split chains."""
    x, shape = _columns(draws)
    if x.shape[2] < 4:
        return np.full(shape, np.nan)
    return _valid(_ess(_z_scale(_split(x))), x).reshape(shape)


def ess_tail(draws: np.ndarray, prob: float = 0.9) -> np.ndarray:
    """Tail ESS of each parameter: the smaller ESS of the indicators below its ``1 - prob`` and ``prob``
    quantiles (arviz-stats' ``ess(method="tail", prob=prob)``)."""
    x, shape = _columns(draws)
    if x.shape[2] < 4:
        return np.full(shape, np.nan)
    flat = x.reshape(x.shape[0], -1)
    low, high = sorted((prob, 1 - prob))
    out = np.full(x.shape[0], np.inf)
    for p in (low, high):
        q = np.quantile(flat, p, axis=1)[:, None, None]
        out = np.minimum(out, _ess(_split((x <= q).astype(float))))
    return _valid(out, x).reshape(shape)


def diagnostics(draws: np.ndarray, prob: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rhat`, :func:`ess_bulk` and :func:`ess_tail` (``prob``) of every parameter of ``draws`` at once:
    the same numbers, with the rank normalisation of the split chains computed once for the bulk R-hat and
    the bulk ESS (each such sort is most of the time at tens of thousands of group levels)."""
    x, shape = _columns(draws)
    cols, k, n = x.shape
    nan = np.full(cols, np.nan)
    if n < 4:
        return nan.reshape(shape), nan.reshape(shape), nan.reshape(shape)
    split = _split(x)
    z = _z_scale(split)
    bulk_ess = _valid(_ess(z), x)
    if k < 2:
        r = nan
    else:
        med = np.median(split.reshape(cols, -1), axis=1)[:, None, None]
        r = _valid(np.maximum(_rhat(z), _rhat(_z_scale(np.abs(split - med)))), x)
    del z
    return r.reshape(shape), bulk_ess.reshape(shape), ess_tail(draws, prob)
