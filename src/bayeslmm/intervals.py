"""The posterior interval every table and figure shows: the equal-tailed interval, and its label.

One function computes it (:func:`eti`, ArviZ's ``eti``: the ``(1 - ci) / 2`` and
``(1 + ci) / 2`` quantiles, NumPy's linear interpolation) and one writes its mass
(:func:`percent`), so that ``--ci`` changes tables, figures and captions alike.
"""

from __future__ import annotations

import numpy as np


def eti(draws, ci: float, axis: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of the equal-tailed ``ci`` interval of ``draws`` along ``axis``.

    Parameters
    ----------
    draws : array-like
        Posterior draws.
    ci : float
        Mass of the interval, in (0, 1).
    axis : int or None
        Axis of the draws (``None``: all of them).

    Returns
    -------
    (ndarray, ndarray)
        ``draws`` reduced along ``axis`` (0-d arrays for a vector of draws).
    """
    if not 0 < ci < 1:
        raise ValueError(f"interval mass must be between 0 and 1, not {ci!r}")
    # arviz-stats' eti: numpy's linear quantiles at (1 - ci)/2 and (1 + ci)/2 (tests/test_intervals.py)
    lo, hi = np.quantile(np.asarray(draws, dtype=float), [(1 - ci) / 2, (1 + ci) / 2], axis=axis)
    return lo, hi


def percent(ci: float) -> str:
    """The mass of an interval as a percentage: ``95%``, ``90%``, ``97.5%``."""
    return f"{100 * ci:.6g}%"
