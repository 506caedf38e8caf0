"""Rank-normalised split R-hat and bulk/tail effective sample sizes (Vehtari et al. 2021), vectorised.

The same estimators as arviz-stats' ``rhat(method="rank")`` and ``ess(method="bulk"/"tail")`` (its
``_rhat_rank``, ``_ess_bulk``, ``_ess_tail``; ``tests/test_convergence.py`` holds them to 1e-10),
computed for every parameter of a ``(chain, draw, ...)`` array at once: one sort, one FFT and a short
Geyer loop over all columns, instead of a Python call per element (thousands of group levels), and
without importing arviz-stats (a second of a short ``bayeslmm fit``).
"""

from __future__ import annotations

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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties averaged) of each row of ``x`` (cols, m), as scipy's ``rankdata``."""
    order = np.argsort(x, axis=1)  # not stable, 4x faster than mergesort: ties get their mean rank either way
    s = np.take_along_axis(x, order, axis=1)
    m = x.shape[1]
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, np.arange(1.0, m + 1), axis=1)  # no ties: the positions in sorted order
    for c in np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)):  # ties: a run of equal values shares its mean rank
        new = np.concatenate([[True], s[c, 1:] != s[c, :-1]])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], m)
        mean_rank = (starts + ends + 1) / 2.0
        ranks[c, order[c]] = np.repeat(mean_rank, ends - starts)
    return ranks


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks over all chains and draws of each column (cols, chains, draws)."""
    from scipy.special import ndtri

    cols, k, n = x.shape
    r = _average_ranks(x.reshape(cols, k * n))
    return ndtri((r - BLOM) / (k * n - 2 * BLOM + 1)).reshape(cols, k, n)


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
    FFT autocovariances (arviz-stats' ``_ess``)."""
    cols, k, n = x.shape
    out = np.full(cols, float(k * n))
    flat = np.ptp(x.reshape(cols, -1), axis=1) < np.finfo(float).resolution
    m = 1 << int(np.ceil(np.log2(2 * n)))
    centred = x - x.mean(axis=2, keepdims=True)
    f = np.fft.rfft(centred, n=m, axis=2)
    acov = np.fft.irfft(f * np.conjugate(f), n=m, axis=2)[:, :, :n] / n
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if k > 1:
        var_plus = var_plus + np.var(x.mean(axis=2), axis=1, ddof=1)
    macov = acov.mean(axis=1)  # (cols, lags)
    live = np.flatnonzero(~flat)
    if live.size:
        out[live] = _geyer(mean_var[live], var_plus[live], macov[live], k * n)
    return out


def _geyer(mean_var: np.ndarray, var_plus: np.ndarray, macov: np.ndarray, total: int) -> np.ndarray:
    """ESS from each column's autocovariances by Geyer's initial monotone sequence, all columns at once.

    arviz-stats' loop, column by column: sum the autocorrelations in pairs (lags 0-1, 2-3, ...)
    while a pair's sum stays positive (up to lag ``n - 3``), make the pairs' sums non-increasing,
    and add the first element of the pair that stopped it when positive (or when that pair was kept
    at a sum of exactly 0). Here as array operations: the pairs' running minimum and a mask.
    """
    n = macov.shape[1]
    rho = 1.0 - (mean_var[:, None] - macov) / var_plus[:, None]
    rho[:, 0] = 1.0
    most = len(range(1, n - 3, 2))  # pairs after the first that the loop may look at
    pairs = rho[:, 0:2 * most + 1:2] + rho[:, 1:2 * most + 2:2]  # (cols, most + 1): sums of lags 2j and 2j + 1
    positive = np.column_stack([pairs[:, :most] > 0, np.zeros(len(pairs), dtype=bool)])
    steps = np.argmin(positive, axis=1)  # pairs summed after the first: up to the first sum <= 0, at most `most`
    kept = np.arange(most + 1)[None, :] < steps[:, None]
    head = np.where(kept, np.minimum.accumulate(pairs, axis=1), 0.0).sum(axis=1)
    rows = np.arange(rho.shape[0])
    even = rho[rows, 2 * steps]
    stopped_at_zero = (steps > 0) & (pairs[rows, steps] >= 0)
    tau = -1.0 + 2.0 * head + np.where((even > 0) | stopped_at_zero, even, 0.0)
    tau = np.maximum(tau, 1 / np.log10(total))
    return np.where(np.isnan(rho).any(axis=1), np.nan, total / tau)


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
