"""Figures of the priors themselves: the prior predictive check.

(The priors of the sds and correlations against their posteriors are in
:mod:`bayeslmm.graphics.plots_pooling`.)
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.graphics.plots import NEUTRAL, PALETTE, panel_grid
from bayeslmm.graphics.plots_checks import as_fits
from bayeslmm.intervals import percent
from bayeslmm.numbers import format_number
from bayeslmm.summary.prior_predictive import PriorPredictive, prior_predictive

#: The prior predictive intervals drawn besides the ``ci`` one (nested bars, widest thinnest).
MASSES = (0.99, 0.5)
#: A Poisson panel switches to a symmetric-log axis when the prior predictive's 99.5% quantile is this
#: many times the largest observed count.
LOG_AXIS = 100.0
_REPLICATED = PALETTE[5]


def _bins(lo: float, hi: float, log: bool, integers: bool) -> np.ndarray:
    if log:
        return np.unique(np.r_[-0.5, 0.5, np.geomspace(1.5, hi + 1.0, 50)])
    if integers and hi - lo <= 60:
        return np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0)
    return np.linspace(lo, hi, 61)


def masses(ci: float) -> tuple[float, ...]:
    """The intervals drawn, widest first: 99%, ``ci`` and 50%."""
    return tuple(sorted({*MASSES, float(ci)}, reverse=True))


def _panel(ax, pp: PriorPredictive, ci: float) -> None:
    reps = pp.draws.ravel()
    obs = pp.observed
    q = {m: np.quantile(reps, [(1 - m) / 2, (1 + m) / 2]) for m in masses(ci)}
    widest = q[max(q)]
    lo, hi = min(widest[0], obs.min()), max(widest[1], obs.max())
    pad = 0.03 * (hi - lo or 1.0)
    log = pp.family == "poisson" and widest[1] > LOG_AXIS * max(obs.max(), 1.0)
    integers = pp.family == "poisson"
    bins = _bins(lo - (0 if log else pad), hi + (0 if log else pad), log, integers)
    inside = reps[(reps >= bins[0]) & (reps <= bins[-1])]
    # on a log axis each bin's share of the values (a density per unit count would hide the tail)
    h_rep, _ = np.histogram(inside, bins, density=not log)
    h_obs, _ = np.histogram(obs, bins, density=not log)
    ax.stairs(h_rep / (h_rep.max() or 1.0), bins, fill=True, color=_REPLICATED, alpha=0.45, lw=0)
    ax.stairs(h_obs / (h_obs.max() or 1.0), bins, color="black", lw=1.8)
    for i, m in enumerate(q):  # nested bars: 99% thin, 50% thick
        ax.plot(q[m], [-0.12, -0.12], color=NEUTRAL, lw=1.5 + 3 * i, solid_capstyle="butt")
    ax.plot([np.median(reps)], [-0.12], "o", color="white", mec=NEUTRAL, ms=5)
    ax.plot([obs.min(), obs.max()], [-0.26, -0.26], color="black", lw=4.5, solid_capstyle="butt")
    ax.plot([np.median(obs)], [-0.26], "o", color="white", mec="black", ms=5)
    if log:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(-0.5, bins[-1])
        decades = int(np.ceil(np.log10(bins[-1])))
        step = max(1, int(np.ceil(decades / 5)))
        ax.set_xticks([0, *(10.0**k for k in range(0, decades + 1, step))])
        ax.minorticks_off()
    else:
        ax.set_xlim(bins[0], bins[-1])
    ax.set_ylim(-0.36, 1.45)
    ax.set_yticks([])
    ax.axhline(0, color=NEUTRAL, lw=0.8)
    span = obs.max() - obs.min()
    lo_ci, hi_ci = q[float(ci)]
    ratio = f" ({format_number((hi_ci - lo_ci) / span, 3)}x its width)" if span > 0 else ""
    ax.text(0.98, 0.97, f"observed: {format_number(obs.min())} to {format_number(obs.max())}\n"
            f"prior predictive {percent(ci)}: {format_number(lo_ci)} to {format_number(hi_ci)}{ratio}",
            transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    ax.set_title(pp.name, fontsize=11)
    ax.set_xlabel(pp.scale + (" (symmetric log axis)" if log else ""))


def prior_predictive_check(fits, ci: float = 0.95, seed: int = 0, ncol: int = 3, draws: dict | None = None) -> Figure:
    """Prior predictive check of every fit, one panel each: data replicated from the priors alone
    (:func:`bayeslmm.summary.prior_predictive.prior_predictive`) against the observed response.

    Each panel: the distribution of the replicated values (shaded) and of the observed response (black
    line), each scaled to its own peak, on an axis wide enough for the prior predictive's 99% interval;
    below, its 99%, ``ci`` and 50% intervals (nested bars, median dot) over the observed range (black). The
    box gives the observed range and the prior predictive ``ci`` interval, and how many times wider it is.
    ``draws`` (name -> :class:`PriorPredictive`) gives replicates already made.
    """
    fits = as_fits(fits)
    fig, axes = panel_grid(len(fits), ncol, (4.4, 3.6) if len(fits) > 1 else (7.5, 4.6), extra_height=1.6)
    made = {}
    for ax, fit in zip(axes, fits, strict=True):
        pp = (draws or {}).get(fit.name) or prior_predictive(fit, seed=seed)
        made[fit.name] = pp
        _panel(ax, pp, ci)
    n = {pp.draws.shape[0] for pp in made.values()}
    reps = f"{n.pop()} data sets" if len(n) == 1 else "data sets"
    fig.legend([Patch(color=_REPLICATED, alpha=0.45), Line2D([], [], color="black", lw=1.8),
                Line2D([], [], color=NEUTRAL, lw=4.5), Line2D([], [], color="black", lw=4.5)],
               [f"values of {reps} replicated from the priors", "observed response",
                f"prior predictive {', '.join(percent(m) for m in masses(ci))} intervals", "observed range"],
               loc="outside lower center", ncols=2, fontsize=9.5)
    fig.suptitle("Prior predictive check: data replicated from the priors against the observed response")
    return fig
