"""Model checks and fitted lines of Bayesian fits.

Residuals against fitted values and the normal QQ plot of residuals are the tutorial's
``plot(model)`` and ``qqnorm(resid(model))``, with the posterior-mean fitted value in place of
lme4's conditional mode. The posterior predictive check compares the observed distribution of
the response with replicated data sets drawn from the posterior. Every function accepts one fit
or a sequence of fits (one panel each) and returns a Figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from bayeslmm.graphics.plots import (
    BAYES,
    NEUTRAL,
    PALETTE,
    colour,
    jitter_binary,
    label_outer,
    level_colours,
    levels_of,
    new_figure,
    panel_grid,
    point_rows,
    spaced_rows,
)
from bayeslmm.intervals import eti, percent
from bayeslmm.summary import predict
from bayeslmm.summary.tables import fixed_draws

_HALO = [patheffects.Stroke(linewidth=4, foreground="white"), patheffects.Normal()]


def _panel(fits: list) -> tuple[float, float]:
    """Panel size in inches: small multiples for several fits, a full-width figure for one."""
    return (4.0, 3.4) if len(fits) > 1 else (7.5, 5.0)


def as_fits(fits) -> list:
    """One fit or a sequence of fits, as a list."""
    return [fits] if hasattr(fits, "idata") else list(fits)


def kde(x: np.ndarray, grid: np.ndarray, lower: float | None = None, upper: float | None = None) -> np.ndarray:
    """Gaussian kernel density of ``x`` on an evenly spaced ``grid`` (Scott's bandwidth).

    Binned and convolved (fast for thousands of draws); the data are reflected at ``lower`` and
    ``upper``, the bounds of their support, so the density does not leak past them.
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    grid = np.asarray(grid, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or grid.size < 2:
        return np.zeros_like(grid)
    bw = x.std(ddof=1) * x.size ** (-1 / 5)
    pts = [x]
    if lower is not None:
        pts.append(2 * lower - x)
    if upper is not None:
        pts.append(2 * upper - x)
    dx = grid[1] - grid[0]
    pad = int(np.ceil(4 * bw / dx)) + 1
    first = grid[0] - dx / 2 - pad * dx
    nbins = grid.size + 2 * pad  # equal bins as a count and a range: NumPy bins by arithmetic, not by sorting
    counts = np.histogram(np.concatenate(pts), bins=nbins, range=(first, first + nbins * dx))[0].astype(float)
    half = int(np.ceil(4 * bw / dx))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / bw) ** 2)
    dens = np.convolve(counts, kernel / (kernel.sum() * dx * x.size), mode="same")
    return dens[pad:pad + grid.size]


def _labels(fit, column: str, data: pd.DataFrame | None) -> np.ndarray:
    if column in fit.data.columns:
        return fit.data[column].astype(str).to_numpy()
    if data is None or column not in data.columns or len(data) != len(fit.data):
        raise ValueError(f"{column!r} is not a column of {fit.name!r}'s data; pass the full data as data=")
    return data[column].astype(str).to_numpy()


#: Most rows the lowess smooth of a residual plot goes through (its cost grows as rows squared: 90 s at 48,000).
LOWESS_ROWS = 5000


def _smoothed_rows(n: int) -> np.ndarray:
    """The rows a lowess smooth goes through: all, or :data:`LOWESS_ROWS` of them drawn at random (seed 0)."""
    if n <= LOWESS_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=LOWESS_ROWS, replace=False))


def residuals_vs_fitted(fits, colour_by: str | None = None, data: pd.DataFrame | None = None,
                        ncol: int = 3) -> Figure:
    """Residuals against posterior-mean fitted values, one panel per fit (lme4's ``plot(model)``).

    Parameters
    ----------
    fits : BayesFit or sequence of BayesFit
    colour_by : str, optional
        Colour points by this grouping column (of the fit's data, or of ``data``): structure
        a model ignores shows up as same-coloured clusters.
    data : DataFrame, optional
        The full data, same rows as the fits' (for ``colour_by`` columns a model did not use).
    ncol : int
        Panels per row.
    """
    from statsmodels.nonparametric.smoothers_lowess import lowess

    fits = as_fits(fits)
    fig, axes = panel_grid(len(fits), ncol, _panel(fits), sharey=True, extra_height=1.4)
    levels: list[str] = []
    if colour_by is not None:
        first = pd.DataFrame({colour_by: _labels(fits[0], colour_by, data)})
        levels = levels_of(data if data is not None and colour_by in data else first, colour_by)
    cols = level_colours(levels)
    for ax, fit in zip(axes, fits, strict=True):
        fv = predict.fitted(fit)
        res = predict.response(fit) - fv
        drawn, note = point_rows(res.size)
        if colour_by is not None:
            lab = _labels(fit, colour_by, data)[drawn]
            ax.scatter(fv[drawn], res[drawn], s=9, alpha=0.6, c=[cols[v] for v in lab], edgecolor="none")
        else:
            ax.scatter(fv[drawn], res[drawn], s=9, alpha=0.5, color=NEUTRAL, edgecolor="none")
        if note:
            ax.text(0.02, 0.02, f"points: {note}", transform=ax.transAxes, fontsize=8, color=NEUTRAL)
        ax.axhline(0, color=NEUTRAL, lw=1.2, ls="--")
        some = _smoothed_rows(res.size)
        smooth = lowess(res[some], fv[some], frac=0.6, return_sorted=True)
        ax.plot(smooth[:, 0], smooth[:, 1], color="black", lw=2.2, path_effects=_HALO)
        ax.set_title(fit.name, fontsize=11)
        ax.set_xlabel("fitted value (posterior mean)")
    for ax in axes[:: min(ncol, len(fits))]:
        ax.set_ylabel("residual")
    handles = [Line2D([], [], color=NEUTRAL, ls="--", lw=1.2), Line2D([], [], color="black", lw=2.2)]
    most = max(f.data.shape[0] for f in fits)
    labels = ["zero", "lowess smooth of the residuals" + (f" (of {LOWESS_ROWS:,} rows drawn at random, seed 0)"
                                                          if most > LOWESS_ROWS else "")]
    handles += [Line2D([], [], ls="", marker="o", color=cols[v]) for v in levels]
    labels += levels
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=10)
    response = fits[0].formula.response
    fig.suptitle(f"Residuals against fitted values of {response}" + (f", coloured by {colour_by}" if colour_by else ""))
    return fig


def qq_residuals(fits, ncol: int = 3) -> Figure:
    """Normal QQ plot of each fit's residuals (lme4's ``qqnorm(resid(model))``), one panel per fit."""
    fits = as_fits(fits)
    fig, axes = panel_grid(len(fits), ncol, _panel(fits), extra_height=1.4)
    for ax, fit in zip(axes, fits, strict=True):
        res = np.sort(predict.residuals(fit))
        n = res.size
        at = spaced_rows(n)  # every one, or evenly spaced
        theo = stats.norm.ppf((at + 0.5) / n)  # R's ppoints for n > 10
        ax.scatter(theo, res[at], s=9, alpha=0.6, color=BAYES, edgecolor="none")
        if at.size < n:
            ax.text(0.98, 0.02, f"{at.size:,} of {n:,} sorted residuals, evenly spaced (both extremes kept)",
                    transform=ax.transAxes, ha="right", fontsize=8, color=NEUTRAL)
        q1, q3 = np.quantile(res, [0.25, 0.75])
        t1, t3 = stats.norm.ppf([0.25, 0.75])
        slope = (q3 - q1) / (t3 - t1)
        ax.axline((t1, q1), slope=slope, color=PALETTE[3], lw=1.5)
        ax.set_title(fit.name, fontsize=11)
        ax.set_xlabel("theoretical normal quantile")
    for ax in axes[:: min(ncol, len(fits))]:
        ax.set_ylabel("residual")
    fig.legend([Line2D([], [], ls="", marker="o", color=BAYES), Line2D([], [], color=PALETTE[3], lw=1.5)],
               ["residuals, sorted", "line through the quartiles (R's qqline)"], loc="outside lower center",
               ncols=2, fontsize=10)
    fig.suptitle(f"Normal QQ plots of the residuals of {fits[0].formula.response}")
    return fig


#: Observations sharing the smallest or the largest value that make a response "piled up" at a bound
#: (the tutorial's scores: 4 zeros and 8 hundreds among 480 otherwise distinct values), which a smoothed
#: density would hide; at least this many times as many as share a typical value inside.
PILE_UP = 3


def piled_up(y: np.ndarray) -> bool:
    """Whether the observations pile up at their smallest or largest value (a bounded scale): at least
    :data:`PILE_UP` of them there, and :data:`PILE_UP` times as many as share a typical inner value."""
    y = np.asarray(y, dtype=float)
    if y.size < 2:
        return False
    _, counts = np.unique(y, return_counts=True)
    inner = counts[1:-1]
    typical = float(np.median(inner)) if inner.size else 1.0
    return max(counts[0], counts[-1]) >= max(PILE_UP, PILE_UP * typical)


def _outline(heights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The vertices of a histogram's outline from 0 (what ``Axes.stairs`` draws), shape ``(2 * bins + 2, 2)``."""
    x = np.repeat(edges, 2)
    y = np.concatenate([[0.0], np.repeat(heights, 2), [0.0]])
    return np.column_stack([x, y])


def ppc(fits, n: int = 50, seed: int = 0, ncol: int = 3) -> Figure:
    """Posterior predictive check: the observed response's distribution against ``n`` replicated data sets.

    Densities (kernel estimates), or histograms where the observations pile up at a bound
    (:func:`piled_up`: a smoothed density would hide the pile-ups), with the observed range marked
    and the share of replicated values outside it said in each panel.
    """
    fits = as_fits(fits)
    fig, axes = panel_grid(len(fits), ncol, _panel(fits), sharex=True, extra_height=1.4)
    y = predict.response(fits[0])
    reps = {fit.name: predict.posterior_predictive(fit, n, seed=seed) for fit in fits}
    lo = min(y.min(), *(r.min() for r in reps.values()))
    hi = max(y.max(), *(r.max() for r in reps.values()))
    grid = np.linspace(lo, hi, 256)
    bins = np.linspace(lo, hi, 61)
    bounded = piled_up(y)
    for ax, fit in zip(axes, fits, strict=True):
        y = predict.response(fit)
        if bounded:
            heights = [np.histogram(r, bins, density=True)[0] for r in reps[fit.name]]
            ax.add_collection(LineCollection([_outline(h, bins) for h in heights], colors=PALETTE[5], lw=0.8,
                                             alpha=0.35))  # one artist: 50 stairs' patches take a second to add
            ax.autoscale_view()
            ax.stairs(np.histogram(y, bins, density=True)[0], bins, color="black", lw=2.2)
            outside = float(np.mean((reps[fit.name] < y.min()) | (reps[fit.name] > y.max())))
            for edge in (y.min(), y.max()):
                ax.axvline(edge, color=NEUTRAL, ls="--", lw=1)
            ax.text(0.02, 0.97, f"{100 * outside:.0f}% of replicated values outside the observed "
                                f"[{y.min():g}, {y.max():g}]", transform=ax.transAxes, va="top", fontsize=8,
                    color=NEUTRAL)
        else:
            dens = np.array([kde(r, grid) for r in reps[fit.name]])
            ax.plot(grid, dens.T, color=PALETTE[5], lw=0.8, alpha=0.35)
            ax.plot(grid, kde(y, grid), color="black", lw=2.2)
        ax.set_title(fit.name, fontsize=11)
        ax.set_ylim(bottom=0)
        ax.set_yticks([])
    label_outer(axes, ncol, fits[0].formula.response, "density")
    fig.legend([Line2D([], [], color="black", lw=2.2), Line2D([], [], color=PALETTE[5], lw=1.2)],
               ["observed data", f"{n} data sets replicated from the posterior"], loc="outside lower center",
               ncols=2, fontsize=10)
    fig.suptitle(f"Posterior predictive check: distribution of {fits[0].formula.response}")
    return fig


def _grid_rows(sub: pd.DataFrame, x: str, points: int) -> pd.DataFrame:
    xs = sub[x].to_numpy(dtype=float)
    rows = sub.iloc[[0] * points].copy().reset_index(drop=True)
    rows[x] = np.linspace(xs.min(), xs.max(), points)
    return rows


def group_lines(fit, data: pd.DataFrame, x: str, facet: str, colour_by: str | None = None, ci: float = 0.95,
                max_draws: int | None = 1000, ncol: int = 4) -> Figure:
    """Fitted lines per group from a mixed model, one panel per level of ``facet``.

    The tutorial's last figure: for ``mixed.lmer2``, facets by mountain range, points coloured
    by site and one fitted line per site (the posterior mean of the conditional mean, with its
    ``ci`` credible band), drawn over the range of ``x`` seen at that site. A line includes the
    effects of the grouping factors that are constant within its panel and colour (range and
    site); factors that vary within it (sites, when there is one line per range) are left at
    zero, their typical value. A binomial or Poisson model's lines are on the response scale
    (:func:`~bayeslmm.summary.predict.response_scale`: the probability, or the rate per unit of
    exposure).

    Parameters
    ----------
    fit : BayesFit
    data : DataFrame
        The data with ``facet``, ``colour_by`` and every column the fit uses.
    x : str
        The predictor on the x-axis (a fixed term of the fit).
    facet : str
        One panel per level of this column.
    colour_by : str, optional
        One line (and colour) per level of this column within each panel; one line per panel
        when ``None``.
    ci : float
    max_draws : int, optional
        Draws used for the lines and bands.
    ncol : int
    """
    data = data.dropna(subset=[c for c in fit.formula.variables if c in data.columns])
    facets = levels_of(data, facet)
    colours = levels_of(data, colour_by) if colour_by else []
    cols = level_colours(colours) if colour_by else {}
    keys = [facet] + ([colour_by] if colour_by else [])
    parts, spans, start = [], [], 0
    for key, sub in data.groupby(keys, observed=True, sort=False):
        rows = _grid_rows(sub, x, 30)
        key = tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        spans.append((key, slice(start, start + len(rows))))
        parts.append(rows)
        start += len(rows)
    new = pd.concat(parts, ignore_index=True)
    within = data.groupby(keys, observed=True)
    groups = [t.group for t in fit.formula.random
              if within[list(t.group_columns)].nunique().to_numpy().max() <= 1]
    y, ylabel = predict.response_scale(fit.formula, data)
    if fit.formula.is_glmm:  # probabilities, or rates per unit of exposure
        new = predict.without_offsets(fit.formula, new)
    eta = predict.inverse_link(fit.formula.family, predict.linear_predictor(fit, new, groups=groups,
                                                                            max_draws=max_draws))
    mean = eta.mean(axis=0)
    lo, hi = eti(eta, ci)
    xs = new[x].to_numpy(dtype=float)
    fig, axes = panel_grid(len(facets), ncol, (3.3, 2.9), sharex=True, sharey=True, extra_height=1.4)
    drawn, note = point_rows(len(data))
    for ax, lv in zip(axes, facets, strict=True):
        sub = (data[facet].astype(str) == lv).to_numpy() & drawn
        for c in colours or [None]:
            pts = sub if c is None else sub & (data[colour_by].astype(str) == c).to_numpy()
            col = cols.get(c, BAYES)
            ax.scatter(data.loc[pts, x], y[pts], s=10, alpha=0.55, color=col, edgecolor="none")
        ax.set_title(lv, fontsize=11)
    for key, sl in spans:
        ax = axes[facets.index(key[0])]
        col = cols.get(key[1], BAYES) if colour_by else BAYES
        ax.fill_between(xs[sl], lo[sl], hi[sl], color=col, alpha=0.18, lw=0)
        ax.plot(xs[sl], mean[sl], color=col, lw=2)
    label_outer(axes, ncol, x, ylabel)
    if colour_by:
        handles = [Line2D([], [], color=cols[c], lw=2, marker="o") for c in colours]
        fig.legend(handles, colours, title=colour_by, loc="outside lower center", ncols=min(len(colours), 8),
                   fontsize=10)
    what = f"each {colour_by} in each {facet}" if colour_by else f"each {facet}"
    fig.suptitle(f"{fit.name}: fitted line of {what} (posterior mean, {percent(ci)} band)"
                 + (f"\n(points: {note})" if note else ""))
    return fig


def population_lines(fits, data: pd.DataFrame, x: str, ci: float = 0.95, max_draws: int | None = 1000) -> Figure:
    """Population-level regression lines of several fits over the data, with credible bands.

    For a mixed model the line is the fixed part alone (the prediction for a new group's
    average member); for a pooled model it is its only line. Shows how much the slope changes
    once groups are modelled. Every fit's fixed part must be the intercept and ``x`` alone, and
    every fit must model the same response with the same family. A binomial or Poisson model's
    lines are on the response scale (:func:`~bayeslmm.summary.predict.response_scale`: the
    probability, or the rate per unit of exposure, offsets 0); the slope in the legend is on the
    link scale.
    """
    fits = as_fits(fits)
    first = fits[0].formula
    response = first.response
    data = data.dropna(subset=[x, response, *(c for c in first.variables if first.is_glmm and c in data.columns)])
    y, ylabel = predict.response_scale(first, data)
    y, _ = jitter_binary(y, first.family)
    fig = new_figure(9.5, 6.8)
    ax = fig.subplots()
    ax.scatter(data[x], y, s=12, alpha=0.35, color=NEUTRAL, edgecolor="none", label="observations")
    grid = pd.DataFrame({x: np.linspace(float(data[x].min()), float(data[x].max()), 60)})
    for i, fit in enumerate(fits):
        if tuple(fit.formula.fixed) != (x,):
            raise ValueError(f"{fit.name!r} has fixed terms {fit.formula.fixed}; a population line needs ({x!r},)")
        if (fit.formula.response, fit.formula.family) != (response, first.family):
            raise ValueError(f"{fit.name!r} models {fit.formula.response} ({fit.formula.family}); the first line "
                             f"{response} ({first.family}): population lines share one response")
        eta = predict.inverse_link(fit.formula.family, predict.linear_predictor(
            fit, predict.without_offsets(fit.formula, grid), groups=(), max_draws=max_draws))
        lo, hi = eti(eta, ci)
        slope = fixed_draws(fit, x)
        s_lo, s_hi = eti(slope, ci)
        col = colour(i)
        ax.fill_between(grid[x], lo, hi, color=col, alpha=0.22, lw=0)
        kind = "population line" if fit.formula.is_mixed else "pooled line"
        what = {"binomial": "log-odds slope", "poisson": "log-rate slope",
                "negbinomial": "log-rate slope"}.get(fit.formula.family, "slope")
        ax.plot(grid[x], eta.mean(axis=0), color=col, lw=2.5,
                label=f"{fit.name} ({kind}): {what} {slope.mean():.2f} [{s_lo:.2f}, {s_hi:.2f}]")
    ax.set(title=f"{response} against {x}: pooled regression and mixed models' population lines",
           xlabel=x, ylabel=ylabel)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=1, fontsize=10,
               title=f"posterior mean and {percent(ci)} credible band")
    return fig

