"""Model checks of binomial and Poisson fits: simulated-quantile residuals and discrete predictive checks.

The residual figures are DHARMa's (:mod:`bayeslmm.summary.residuals`): a QQ plot of the scaled
residuals against the uniform, with the tests' p-values, and the residuals against the rank of
the predicted value with their 25/50/75% quantiles. The posterior predictive checks are drawn
for discrete data: for counts, the observed frequency of each value against the replicates'
intervals; per group, the observed proportion (binomial) or mean count (Poisson) against the
replicates' intervals. Every function takes one fit or several (one panel each), or their
:class:`~bayeslmm.summary.residuals.ScaledResiduals`, and returns a Figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import sparse

from bayeslmm.graphics.plots import BAYES, FREQ, NEUTRAL, panel_grid
from bayeslmm.graphics.plots_checks import as_fits
from bayeslmm.intervals import eti, percent
from bayeslmm.model.formula import group_codes
from bayeslmm.summary import residuals
from bayeslmm.summary.residuals import QUANTILES, ScaledResiduals

#: Most distinct values the count check draws one bar each for (larger values share the last bar).
MAX_VALUES = 30
#: Most group levels labelled on the per-group check's axis.
MAX_LABELS = 40


def _panel(n: int) -> tuple[float, float]:
    return (4.2, 3.6) if n > 1 else (8.5, 6.0)


def as_residuals(items) -> list[ScaledResiduals]:
    """Scaled residuals of one fit, several fits, or residuals already computed (:func:`simulate_residuals
    <bayeslmm.summary.residuals.simulate_residuals>`)."""
    if isinstance(items, ScaledResiduals):
        return [items]
    if isinstance(items, list | tuple) and all(isinstance(i, ScaledResiduals) for i in items):
        return list(items)
    return [residuals.simulate_residuals(f) for f in as_fits(items)]


def _test_lines(res: ScaledResiduals) -> list[tuple[str, bool]]:
    """The tests of one fit as text lines, each with whether it flags a misfit."""
    out = []
    for t in residuals.residual_tests(res):
        if t.name == "quantiles":
            continue
        if not t.computed:
            out.append((f"{t.name}: not computed", False))
            continue
        # the simulation p-values' resolution: 1 / the number of replicates they count
        n = {"dispersion": res.pearson.shape[0], "uniformity": res.null.shape[0]}.get(t.name, res.n_sim)
        p = residuals.format_p(t.p_value, n)
        what = f"KS D = {t.statistic:.3f}" if t.name == "uniformity" else f"ratio {t.statistic:.2f}"
        out.append((f"{t.name}: {what}, {p}", t.flagged))
    return out


def qq_uniform(items, ncol: int = 3, ci: float = 0.95) -> Figure:
    """QQ plot of each fit's scaled residuals against the uniform (DHARMa's ``plotQQunif``).

    Points on the diagonal: the data look like the model's replicates. The grey band holds ``ci``
    of each order statistic of the replicates' own scaled residuals (:attr:`ScaledResiduals.null_sorted`),
    the spread a right model gives with rows as correlated as the data's (rows of a group share its
    effect, so the band is wider than that of independent uniforms); the box gives the
    Kolmogorov-Smirnov, dispersion and zero-inflation tests (red when p < 0.05).
    """
    items = as_residuals(items)
    fig, axes = panel_grid(len(items), ncol, _panel(len(items)), extra_height=1.4)
    for ax, res in zip(axes, items, strict=True):
        r = np.sort(res.residuals)
        n = r.size
        expected = (np.arange(1, n + 1) - 0.5) / n
        lo, hi = eti(res.null_sorted, ci)
        ax.fill_between(expected, lo, hi, color=NEUTRAL, alpha=0.25, lw=0)
        ax.plot([0, 1], [0, 1], color="black", lw=1.5)
        ax.scatter(expected, r, s=8 if n > 500 else 12, alpha=0.6, color=BAYES, edgecolor="none")
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
        y = 0.97
        for text, flagged in _test_lines(res):
            ax.text(0.03, y, text, transform=ax.transAxes, va="top", fontsize=8.5,
                    color=FREQ if flagged else "black",
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.5})
            y -= 0.075
        ax.set_title(f"{res.name} ({res.family})", fontsize=11)
        ax.set_xlabel("expected (uniform quantile)")
    for ax in axes[:: min(ncol, len(items))]:
        ax.set_ylabel("scaled residual")
    fig.legend([Line2D([], [], ls="", marker="o", color=BAYES), Line2D([], [], color="black", lw=1.5),
                Line2D([], [], color=NEUTRAL, lw=6, alpha=0.3)],
               ["scaled residuals, sorted", "uniform", f"{percent(ci)} of the replicates' own, point by point"],
               loc="outside lower center", ncols=3, fontsize=10)
    fig.suptitle("QQ plots of the simulated-quantile residuals against the uniform (DHARMa)")
    return fig


def binned_quantiles(res: ScaledResiduals, quantiles: tuple[float, ...] = QUANTILES) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of the predicted value's rank (:func:`~bayeslmm.summary.residuals.quantile_bins`): the bin's
    mean rank (shape ``(bins,)``) and the residuals' quantiles in it (shape ``(bins, quantiles)``)."""
    bins = residuals.quantile_bins(res.predicted)
    rank = residuals.rank_transform(res.predicted)
    k = int(bins.max()) + 1
    x = np.array([rank[bins == b].mean() for b in range(k)])
    q = np.array([np.quantile(res.residuals[bins == b], quantiles) for b in range(k)])
    return x, q


def residuals_predicted(items, ncol: int = 3) -> Figure:
    """Scaled residuals against the rank of the predicted value (DHARMa's ``plotResiduals``).

    The x-axis is the rank of the prediction for a typical group, scaled to (0, 1], so the points
    spread evenly whatever the scale. Dashed lines: 25%, 50% and 75%, where the residuals'
    quantiles lie if the model is right; solid lines: the residuals' quantiles in bins of the
    predicted value (red when their test finds them not flat, Benjamini-Hochberg p < 0.05).
    """
    items = as_residuals(items)
    fig, axes = panel_grid(len(items), ncol, _panel(len(items)), sharey=True, extra_height=1.4)
    for ax, res in zip(axes, items, strict=True):
        rank = residuals.rank_transform(res.predicted)
        n = rank.size
        ax.scatter(rank, res.residuals, s=8 if n > 500 else 12, alpha=0.25 if n > 2000 else 0.5, color=BAYES,
                   edgecolor="none")
        p = residuals.quantile_test_p(res)
        x, q = binned_quantiles(res)
        for j, level in enumerate(QUANTILES):
            ax.axhline(level, color=NEUTRAL, ls="--", lw=1)
            bad = bool(np.isfinite(p[j]) and p[j] < residuals.ALPHA)
            ax.plot(x, q[:, j], color=FREQ if bad else "black", lw=2.2 if bad else 1.8, marker="o", ms=3.5)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 1.02)
        combined = residuals.quantile_test(res)
        note = f"quantile test p = {combined.p_value:.2g}" if combined.computed else "quantile test not computed"
        ax.set_title(f"{res.name}: {note}", fontsize=11, color=FREQ if combined.flagged else "black")
        what = "probability" if res.family == "binomial" else "count"
        ax.set_xlabel(f"predicted {what}, typical group (rank, 0 to 1)")
    for ax in axes[:: min(ncol, len(items))]:
        ax.set_ylabel("scaled residual")
    fig.legend([Line2D([], [], color=NEUTRAL, ls="--"), Line2D([], [], color="black", lw=1.8, marker="o", ms=3.5),
                Line2D([], [], color=FREQ, lw=2.2, marker="o", ms=3.5)],
               ["25/50/75%: a right model's quantiles", "the residuals' quantiles, binned", "... not flat (p < 0.05)"],
               loc="outside lower center", ncols=3, fontsize=10)
    fig.suptitle("Scaled residuals against the predicted value (DHARMa)")
    return fig


def value_frequencies(observed: np.ndarray, replicated: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """How many rows take each value 0, 1, ..., ``top`` (the last also counts every larger value):
    in the data (shape ``(top + 1,)``) and in each replicate (shape ``(replicates, top + 1)``)."""
    obs = np.bincount(np.minimum(np.asarray(observed, dtype=np.int64), top), minlength=top + 1)
    reps = np.minimum(np.asarray(replicated, dtype=np.int64), top)
    offsets = np.arange(reps.shape[0])[:, None] * (top + 1)
    counts = np.bincount((reps + offsets).ravel(), minlength=reps.shape[0] * (top + 1))
    return obs, counts.reshape(reps.shape[0], top + 1)


def ppc_counts(items, ci: float = 0.95, ncol: int = 3) -> Figure:
    """Posterior predictive check of counts: how many rows have 0, 1, 2, ... (bars) against the replicates.

    For each value, the bar is the number of rows of the data with it; the point and line the
    replicates' mean and ``ci`` interval (replicates given the fitted group effects, an
    observation-level effect drawn anew). Values above the 99.5% point of the data and replicates
    (at most :data:`MAX_VALUES` bars) share the last bar, labelled ``k+``. For Poisson counts and
    binomial successes; a 0/1 response is checked per group instead (:func:`ppc_groups`).
    """
    items = as_residuals(items)
    fig, axes = panel_grid(len(items), ncol, _panel(len(items)), extra_height=1.4)
    for ax, res in zip(axes, items, strict=True):
        top = int(min(MAX_VALUES, max(np.quantile(res.replicated, 0.995), np.quantile(res.observed, 0.995), 1)))
        obs, reps = value_frequencies(res.observed, res.replicated, top)
        lo, hi = eti(reps, ci)
        x = np.arange(top + 1)
        outside = (obs < lo) | (obs > hi)
        ax.bar(x, obs, width=0.8, color=np.where(outside, FREQ, NEUTRAL), alpha=0.4)
        ax.vlines(x, lo, hi, color=BAYES, lw=2)
        ax.plot(x, reps.mean(axis=0), "o", color=BAYES, ms=4)
        tail = np.max(res.observed) > top or np.max(res.replicated) > top
        step = int(np.ceil((top + 1) / 15))
        ticks = [t for t in x[::step] if t == top or top - t >= step] + ([top] if top % step else [])
        ax.set_xticks(ticks, [f"{t}+" if t == top and tail else str(t) for t in ticks])
        what = "successes" if res.family == "binomial" else "count"
        ax.set(xlabel=f"{what} per row", title=res.name)
        ax.set_ylim(bottom=0)
    for ax in axes[:: min(ncol, len(items))]:
        ax.set_ylabel("number of rows")
    fig.legend([Line2D([], [], color=NEUTRAL, lw=8, alpha=0.4), Line2D([], [], color=BAYES, lw=2, marker="o", ms=4),
                Line2D([], [], color=FREQ, lw=8, alpha=0.4)],
               ["data: rows with each value", f"replicates: mean and {percent(ci)} interval", "data outside it"],
               loc="outside lower center", ncols=3, fontsize=10)
    fig.suptitle("Posterior predictive check: how often each count occurs")
    return fig


def group_labels(res_fit, group: str, data: pd.DataFrame | None) -> pd.DataFrame:
    """The columns of ``group`` (``a`` or ``a:b``) for a fit's rows: from its data, else from ``data`` (same rows)."""
    cols = group.split(":")
    if all(c in res_fit.data.columns for c in cols):
        return res_fit.data[cols]
    if data is None or not all(c in data.columns for c in cols) or len(data) != len(res_fit.data):
        raise ValueError(f"{group!r} is not a column of {res_fit.name!r}'s data; pass the full data (same rows) "
                         "as data=")
    return data[cols].reset_index(drop=True)


def group_statistics(res: ScaledResiduals, codes: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per level: the data's proportion of successes (binomial) or mean count per row (Poisson), shape
    ``(levels,)``, and each replicate's, shape ``(replicates, levels)``."""
    onehot = sparse.csr_matrix((np.ones(codes.size), (np.arange(codes.size), codes)), shape=(codes.size, n_levels))
    weight = res.trials if res.trials is not None else np.ones(codes.size)
    denom = onehot.T @ weight
    obs = (onehot.T @ res.observed) / denom
    reps = np.asarray(onehot.T @ res.replicated.T.astype(float)).T / denom[None, :]
    return obs, reps


def ppc_groups(fits, group: str, data: pd.DataFrame | None = None, ci: float = 0.95, ncol: int = 2,
               res: list[ScaledResiduals] | None = None) -> Figure:
    """Posterior predictive check per group: each level's observed proportion (or mean count) against the replicates.

    One panel per fit; levels of ``group`` sorted by the replicates' mean. Each level's interval
    holds ``ci`` of its replicated proportion of successes (binomial: summed over its rows and
    trials) or mean count per row (Poisson), replicates given the fitted group effects; the dot is
    the data, red when outside. A pooled model (no random effects) shows how its one prediction
    misses the groups; a mixed model should cover about ``ci`` of them. ``group`` is a column of
    each fit's data or of ``data`` (the full data, same rows). ``res``: the fits' residuals, if
    already computed (same order).
    """
    fits = as_fits(fits)
    res_all = res if res is not None else [residuals.simulate_residuals(f) for f in fits]
    fig, axes = panel_grid(len(fits), ncol, (6.0, 3.8) if len(fits) > 1 else (9.5, 5.2), extra_height=1.4)
    for ax, fit, res in zip(axes, fits, res_all, strict=True):
        cols = group_labels(fit, group, data)
        levels, codes = group_codes(cols, group)
        obs, reps = group_statistics(res, codes, len(levels))
        lo, hi = eti(reps, ci)
        order = np.argsort(reps.mean(axis=0), kind="stable")
        x = np.arange(len(levels))
        outside = (obs < lo) | (obs > hi)
        ax.vlines(x, lo[order], hi[order], color=BAYES, lw=2.5 if len(levels) <= 60 else 1.2, alpha=0.6)
        ax.plot(x, reps.mean(axis=0)[order], "_", color=BAYES, ms=8 if len(levels) <= 60 else 4, mew=2)
        ok = ~outside[order]
        ms = 5 if len(levels) <= 60 else 3
        ax.plot(x[ok], obs[order][ok], "o", color="black", ms=ms)
        ax.plot(x[~ok], obs[order][~ok], "o", color=FREQ, ms=ms + 1)
        if len(levels) <= MAX_LABELS:
            ax.set_xticks(x, np.asarray(levels)[order], rotation=90, fontsize=8 if len(levels) > 15 else 9)
        else:
            ax.set_xticks([])
        ax.set_xlabel(f"{group} ({len(levels)} levels, sorted by prediction)")
        f = fit.formula
        ax.set_ylabel(f"proportion {f.cbind[0] if f.cbind else f.response}" if res.family == "binomial"
                      else f"mean {f.response} per row")
        ax.set_title(f"{fit.name}: {int(outside.sum())} of {len(levels)} outside", fontsize=11)
        ax.grid(axis="x", visible=False)
    fig.legend([Line2D([], [], color=BAYES, lw=2.5, alpha=0.6), Line2D([], [], ls="", marker="o", color="black"),
                Line2D([], [], ls="", marker="o", color=FREQ)],
               [f"replicates: {percent(ci)} interval (tick: mean)", "data", "data outside the interval"],
               loc="outside lower center", ncols=3, fontsize=10)
    fig.suptitle(f"Posterior predictive check per {group}: observed against replicated")
    return fig
