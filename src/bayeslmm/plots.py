"""Figures. Each function returns a matplotlib Figure and never calls ``show()``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Okabe-Ito: distinguishable with every common form of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
BAYES, FREQ, NEUTRAL = PALETTE[0], PALETTE[3], "#555555"

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "font.size": 11,
        "axes.titlesize": 13,
        "axes.titleweight": "bold",
        "axes.labelsize": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "legend.frameon": False,
    }
)


def colour(i: int) -> str:
    """The i-th palette colour (cycles)."""
    return PALETTE[i % len(PALETTE)]


def response_histogram(df: pd.DataFrame, response: str, bins: int = 30) -> plt.Figure:
    """Histogram of the response (the tutorial's first look at the data)."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    y = pd.to_numeric(df[response], errors="coerce").dropna()
    ax.hist(y, bins=bins, color=BAYES, alpha=0.85, edgecolor="white")
    ax.axvline(y.mean(), color=FREQ, lw=2, ls="--", label=f"mean {y.mean():.1f}")
    ax.set(title=f"Distribution of {response} (n = {len(y)})", xlabel=response, ylabel="Number of observations")
    ax.legend()
    return fig


def pooled_regression(df: pd.DataFrame, x: str, response: str, draws: dict[str, np.ndarray] | None = None,
                      ci: float = 0.95) -> plt.Figure:
    """Response against one predictor with the pooled (complete-pooling) regression line.

    Parameters
    ----------
    df : DataFrame
    x, response : str
        Columns.
    draws : dict, optional
        Posterior draws ``{"(Intercept)": ..., x: ...}`` of the pooled model; the line is the
        posterior mean and the band the ``ci`` credible band of the regression line.
    """
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    ax.scatter(df[x], df[response], s=14, alpha=0.45, color=NEUTRAL, edgecolor="none", label="observations")
    grid = np.linspace(float(df[x].min()), float(df[x].max()), 100)
    if draws is not None:
        lines = draws["(Intercept)"][:, None] + draws[x][:, None] * grid[None, :]
        lo, hi = np.quantile(lines, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
        ax.fill_between(grid, lo, hi, color=BAYES, alpha=0.25, label=f"{ci:.0%} credible band")
        ax.plot(grid, lines.mean(axis=0), color=BAYES, lw=2.5,
                label=f"pooled fit: slope {draws[x].mean():.2f}")
    ax.set(title=f"{response} against {x}, all groups pooled", xlabel=x, ylabel=response)
    ax.legend(loc="upper left")
    return fig


def group_boxplot(df: pd.DataFrame, response: str, group: str) -> plt.Figure:
    """Boxplot of the response per level of a grouping factor."""
    levels = sorted(df[group].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(levels) + 3), 5.5), layout="constrained")
    data = [df.loc[df[group].astype(str) == lv, response].to_numpy() for lv in levels]
    bp = ax.boxplot(data, patch_artist=True, widths=0.6)
    ax.set_xticks(range(1, len(levels) + 1), levels)
    for i, box in enumerate(bp["boxes"]):
        box.set(facecolor=colour(i), alpha=0.6)
    for med in bp["medians"]:
        med.set(color="black", lw=1.5)
    ax.set(title=f"{response} by {group}", xlabel=group, ylabel=response)
    if len(levels) > 8:
        ax.tick_params(axis="x", labelrotation=45)
    return fig


def group_facets(df: pd.DataFrame, x: str, response: str, group: str) -> plt.Figure:
    """One panel per group level, each with its own least-squares line (no pooling)."""
    levels = sorted(df[group].astype(str).unique())
    ncol = min(4, len(levels))
    nrow = math.ceil(len(levels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol + 1, 2.8 * nrow + 1), sharex=True, sharey=True,
                             layout="constrained", squeeze=False)
    for i, (ax, lv) in enumerate(zip(axes.flat, levels, strict=False)):
        sub = df[df[group].astype(str) == lv]
        ax.scatter(sub[x], sub[response], s=10, alpha=0.6, color=colour(i), edgecolor="none")
        if len(sub) > 2 and np.ptp(sub[x].to_numpy(dtype=float)) > 0:
            b1, b0 = np.polyfit(sub[x].to_numpy(dtype=float), sub[response].to_numpy(dtype=float), 1)
            g = np.linspace(sub[x].min(), sub[x].max(), 20)
            ax.plot(g, b0 + b1 * g, color="black", lw=1.8)
            ax.text(0.03, 0.95, f"slope {b1:.2f}", transform=ax.transAxes, va="top", fontsize=9)
        ax.set_title(lv, fontsize=11)
    for ax in list(axes.flat)[len(levels):]:
        ax.set_visible(False)
    fig.supxlabel(x)
    fig.supylabel(response)
    fig.suptitle(f"{response} against {x}, a separate regression per {group} (no pooling)", fontweight="bold")
    return fig


def forest(tidy: pd.DataFrame, term: str, effect: str = "fixed", group: str | None = None,
           models: Sequence[str] | None = None, reference: float | None = 0.0) -> plt.Figure:
    """Dot-and-whisker plot of one term across models, every method side by side.

    Parameters
    ----------
    tidy : DataFrame
        Tidy rows of several models (broom.mixed schema), any mix of methods.
    term : str
        The term to show (``bodyLength2``, ``sd__(Intercept)``).
    effect, group : str
        Row filter; ``group`` for ``ran_pars``.
    models : sequence of str, optional
        Order of the models (top to bottom).
    reference : float, optional
        Draw a dashed vertical line here (0 for fixed effects).
    """
    rows = tidy[(tidy["term"] == term) & (tidy["effect"] == effect)]
    if group is not None:
        rows = rows[rows["group"] == group]
    order = list(models) if models is not None else list(dict.fromkeys(rows["model"]))
    order = [m for m in order if m in set(rows["model"])]
    methods = list(dict.fromkeys(rows["method"]))
    fig, ax = plt.subplots(figsize=(8.5, 0.6 * max(len(order), 2) * max(1, len(methods) / 1.5) + 1.8),
                           layout="constrained")
    step = 0.6 / max(len(methods), 1)
    labels = {"bayes": "Bayesian posterior mean, 95% interval", "reml": "lme4 REML, 95% Wald CI",
              "ml": "lme4 ML, 95% Wald CI", "ols": "lm (OLS), 95% CI"}
    for j, method in enumerate(methods):
        sub = rows[rows["method"] == method].set_index("model")
        ys = [len(order) - 1 - i + (j - (len(methods) - 1) / 2) * step for i, m in enumerate(order) if m in sub.index]
        ms = [m for m in order if m in sub.index]
        col = BAYES if method == "bayes" else colour(j + 2)
        est = sub.loc[ms, "estimate"].to_numpy(dtype=float)
        lo = sub.loc[ms, "conf_low"].to_numpy(dtype=float)
        hi = sub.loc[ms, "conf_high"].to_numpy(dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(np.array(ys)[ok], lo[ok], hi[ok], color=col, lw=2.2)
        ax.plot(est, ys, "o", color=col, ms=7, label=labels.get(method, method))
    ax.set_yticks(range(len(order)), order[::-1])
    if reference is not None:
        ax.axvline(reference, color=NEUTRAL, ls="--", lw=1)
    what = f"{term} ({group})" if group else term
    ax.set(title=f"{what} across models", xlabel=f"estimate of {what}", ylabel="model")
    ax.legend(loc="best", fontsize=9)
    return fig
