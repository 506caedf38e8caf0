"""Figures of the data and of estimates across models; the shared style.

Each function returns a :class:`matplotlib.figure.Figure` and never calls ``show()``. Figures
are built without pyplot's global state, so a notebook shows each once (the returned value)
and a report saves and drops them without ``plt.close``. Model checks live in
:mod:`bayeslmm.graphics.plots_checks`, the partial-pooling figures in :mod:`bayeslmm.graphics.plots_pooling`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bayeslmm.intervals import eti, percent
from bayeslmm.labels import INTERCEPT, RESIDUAL, SD_PREFIX

#: Okabe-Ito: distinguishable with every common form of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
BAYES, FREQ, NEUTRAL = PALETTE[0], PALETTE[3], "#555555"
#: Colour and legend text of each estimation method of the tidy table (``{ci}``: the interval's mass).
METHODS = {
    "bayes": (BAYES, "Bayesian: posterior mean, {ci} interval"),
    "reml": (FREQ, "lme4 REML: estimate, {ci} {kind} CI"),
    "ml": (PALETTE[1], "lme4 ML: estimate, {ci} {kind} CI"),
    "ols": (PALETTE[2], "lm (OLS): estimate, {ci} CI"),
    "laplace": (FREQ, "lme4 glmer (Laplace): estimate, {ci} {kind} CI"),
    "agq": (PALETTE[4], "lme4 glmer (AGQ): estimate, {ci} {kind} CI"),
    "glm": (PALETTE[2], "glm: estimate, {ci} {kind} CI"),
}

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
}
mpl.rcParams.update(STYLE)


def colour(i: int) -> str:
    """The i-th palette colour (cycles)."""
    return PALETTE[i % len(PALETTE)]


def level_colours(levels: Sequence[str]) -> dict[str, str]:
    """One palette colour per level (up to 8 levels; more levels cycle, so prefer facets)."""
    return {lv: colour(i) for i, lv in enumerate(levels)}


def new_figure(width: float, height: float) -> Figure:
    """An empty figure with constrained layout (a margin all round), outside pyplot's state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1)
    return fig


def levels_of(df: pd.DataFrame, column: str) -> list[str]:
    """Levels of a column in display order (categorical order if it has one, else sorted)."""
    s = df[column]
    if isinstance(s.dtype, pd.CategoricalDtype):
        present = set(s.astype(str).unique())
        return [str(c) for c in s.cat.categories if str(c) in present]
    return sorted(s.astype(str).unique())


#: Most levels a per-level figure (caterpillar, shrinkage, boxplot) draws; above it, a labelled sample.
MAX_LEVELS = 60
#: Seed of that sample (the same levels in every run).
SAMPLE_SEED = 0
#: What a boxplot's sample keeps at its ends (:func:`level_sample`).
BOX_ENDS = ("highest medians", "lowest medians")


def level_sample(key: np.ndarray, ends: tuple[str, str], max_levels: int | None = None,
                 seed: int = SAMPLE_SEED) -> tuple[np.ndarray, str]:
    """Which levels a per-level figure draws, and how to say so.

    All of them when there are at most ``max_levels``; else the ``max_levels // 6`` with the
    largest ``key``, as many with the smallest, and the rest of ``max_levels`` drawn at random
    (seeded) from the levels in between, so the figure stays readable with thousands of levels.

    Parameters
    ----------
    key : ndarray
        One number per level (e.g. how far it is shrunk, its posterior mean); NaN sorts as smallest.
    ends : (str, str)
        What the largest and smallest ``key`` are called (``("most shrunk", "least shrunk")``).
    max_levels : int, optional
        :data:`MAX_LEVELS` by default.

    Returns
    -------
    positions : ndarray of int
        Sorted positions of the levels to draw.
    note : str
        ``""`` when all are drawn, else e.g. "60 of 2,400 levels: the 10 most shrunk, the 10 least
        shrunk and 40 drawn at random (seed 0)".
    """
    max_levels = MAX_LEVELS if max_levels is None else max_levels
    key = np.asarray(key, dtype=float)
    n = key.size
    if n <= max_levels:
        return np.arange(n), ""
    k = _ends(max_levels)
    order = np.argsort(np.nan_to_num(key, nan=-np.inf), kind="stable")  # smallest first
    low, high, middle = order[:k], order[n - k:], order[k:n - k]
    rest = np.random.default_rng(seed).choice(middle, size=max_levels - 2 * k, replace=False)
    return np.sort(np.concatenate([low, high, rest])), sample_note(n, ends, max_levels, seed)


def _ends(max_levels: int) -> int:
    return max(1, max_levels // 6)


def sample_note(n: int, ends: tuple[str, str], max_levels: int | None = None, seed: int = SAMPLE_SEED) -> str:
    """How :func:`level_sample` picks the levels drawn out of ``n`` (``""`` when it draws them all)."""
    max_levels = MAX_LEVELS if max_levels is None else max_levels
    if n <= max_levels:
        return ""
    k = _ends(max_levels)
    return (f"{max_levels:,} of {n:,} levels: the {k} {ends[0]}, the {k} {ends[1]} and {max_levels - 2 * k} "
            f"drawn at random (seed {seed})")


#: Most observations a scatter of the data draws; above it, a seeded random sample of rows (:func:`point_rows`).
MAX_POINTS = 20_000


def point_rows(n: int, max_points: int | None = None, seed: int = SAMPLE_SEED) -> tuple[np.ndarray, str]:
    """Which of ``n`` rows a scatter draws: a boolean mask, all of them up to ``max_points``
    (:data:`MAX_POINTS` by default), else that many drawn at random (seeded); and ``""`` or what to say
    ("20,000 of 480,000 rows drawn at random (seed 0)"). Lines and smooths drawn over the points are
    computed from every row; the points only show the cloud, which a sample shows as well."""
    max_points = MAX_POINTS if max_points is None else max_points
    mask = np.ones(n, dtype=bool)
    if n <= max_points:
        return mask, ""
    mask[:] = False
    mask[np.random.default_rng(seed).choice(n, size=max_points, replace=False)] = True
    return mask, f"{max_points:,} of {n:,} rows drawn at random (seed {seed})"


def spaced_rows(n: int, max_points: int | None = None) -> np.ndarray:
    """Positions 0 ... n - 1, or :data:`MAX_POINTS` of them evenly spaced, first and last kept (sorted values
    thinned for a QQ plot)."""
    max_points = MAX_POINTS if max_points is None else max_points
    return np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))


def panel_grid(n: int, ncol: int, panel: tuple[float, float], *, sharex: bool = False, sharey: bool = False,
               extra_width: float = 0.6, extra_height: float = 0.9) -> tuple[Figure, list]:
    """A figure with ``n`` panels in rows of ``ncol``; unused cells are hidden."""
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    fig = new_figure(panel[0] * ncol + extra_width, panel[1] * nrow + extra_height)
    axes = fig.subplots(nrow, ncol, sharex=sharex, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def label_outer(axes: list, ncol: int, xlabel: str | None = None, ylabel: str | None = None) -> None:
    """Label the x-axis of the lowest panel in each column and the y-axis of the first column."""
    n, ncol = len(axes), max(1, min(ncol, len(axes)))
    for i, ax in enumerate(axes):
        if xlabel is not None and i + ncol >= n:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)
        if ylabel is not None and i % ncol == 0:
            ax.set_ylabel(ylabel)


def place_labels(ax, xs: np.ndarray, ys: np.ndarray, labels: list[str], avoid: np.ndarray, fontsize: float = 9,
                 **text) -> list:
    """Label points without overlaps: for each, the first of eight offsets whose box is clear.

    Boxes are estimated in display units (text width ~0.6 em per character) and checked
    against labels already placed and against the markers at ``avoid`` (data coordinates).
    """
    ax.autoscale_view()
    to_px = ax.transData.transform
    dpi = ax.figure.dpi
    em = fontsize * dpi / 72
    markers = [(x - 0.55 * em, y - 0.55 * em, x + 0.55 * em, y + 0.55 * em) for x, y in to_px(avoid)]
    placed: list[tuple[float, float, float, float]] = []
    out = []
    gap = 0.7 * em
    for (px, py), label in zip(to_px(np.column_stack([xs, ys])), labels, strict=True):
        w, h = 0.6 * em * len(label), em
        options = [(gap, gap), (gap, -gap - h), (-gap - w, gap), (-gap - w, -gap - h),
                   (-w / 2, gap), (-w / 2, -gap - h), (gap, -h / 2), (-gap - w, -h / 2)]
        best = options[0]
        for dx, dy in options:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed + markers):
                best = (dx, dy)
                break
        dx, dy = best
        placed.append((px + dx, py + dy, px + dx + w, py + dy + h))
        pts = 72 / dpi
        out.append(ax.annotate(label, ax.transData.inverted().transform((px, py)), xytext=(dx * pts, dy * pts),
                               textcoords="offset points", fontsize=fontsize, ha="left", va="bottom", zorder=6,
                               **text))
    return out


# ---------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------


def response_histogram(df: pd.DataFrame, response: str, bins: int | np.ndarray = 30) -> Figure:
    """Histogram of the response (the tutorial's first look at the data); ``bins``: their number or edges
    (``-0.5, 0.5, 1.5, ...`` gives a bar per count)."""
    fig = new_figure(8.5, 5)
    ax = fig.subplots()
    y = pd.to_numeric(df[response], errors="coerce").dropna()
    ax.hist(y, bins=bins, color=BAYES, alpha=0.85, edgecolor="white")
    ax.axvline(y.mean(), color=FREQ, lw=2, ls="--", label=f"mean {y.mean():.1f}")
    ax.set(title=f"Distribution of {response} (n = {len(y)})", xlabel=response, ylabel="number of observations")
    ax.legend(loc="upper right")
    return fig


def jitter_binary(y: np.ndarray, family: str) -> tuple[np.ndarray, bool]:
    """A binomial model's 0/1 responses moved up to 0.05 inwards (seeded), so that their density shows, and
    whether they were 0/1; any other response as it is."""
    binary = family == "binomial" and bool(np.isin(y[np.isfinite(y)], (0.0, 1.0)).all())
    if binary:
        y = y + np.where(y == 1, -1, 1) * np.random.default_rng(0).uniform(0, 0.05, y.size)
    return y, binary


def pooled_regression(df: pd.DataFrame, x: str, response: str, draws: dict[str, np.ndarray] | None = None,
                      ci: float = 0.95, family: str = "gaussian") -> Figure:
    """Response against one predictor with the pooled (complete-pooling) regression line.

    Parameters
    ----------
    df : DataFrame
    x, response : str
        Columns (for a binomial or Poisson model, ``response`` holds the response scale:
        :func:`~bayeslmm.summary.predict.response_scale`).
    draws : dict, optional
        Posterior draws ``{"(Intercept)": ..., x: ...}`` of the pooled model; the line is the
        posterior mean and the band the ``ci`` credible band of the regression line, on the
        response scale (the probability, or the rate per unit of exposure, for ``family``
        binomial or poisson: the inverse link of the line on the link scale).
    ci : float
        Mass of the band.
    family : str
        The pooled model's family; 0/1 responses are jittered a little up and down.
    """
    from bayeslmm.summary.predict import inverse_link

    fig = new_figure(8.5, 5.5)
    ax = fig.subplots()
    y, binary = jitter_binary(df[response].to_numpy(dtype=float), family)
    drawn, note = point_rows(len(df))
    ax.scatter(df[x].to_numpy()[drawn], y[drawn], s=14, alpha=0.3 if binary else 0.45, color=NEUTRAL,
               edgecolor="none", label="observations" + (f" ({note})" if note else ""))
    if binary:  # the share of 1s in ten bins of x: what the curve should follow
        xs, ys = df[x].to_numpy(dtype=float), df[response].to_numpy(dtype=float)
        edges = np.unique(np.quantile(xs, np.linspace(0, 1, 11)))
        which = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, len(edges) - 2)
        ax.plot([xs[which == b].mean() for b in range(len(edges) - 1)],
                [ys[which == b].mean() for b in range(len(edges) - 1)], "D", color="black", ms=7, zorder=4,
                label=f"share of 1s in ten bins of {x}")
    grid = np.linspace(float(df[x].min()), float(df[x].max()), 100)
    if draws is not None:
        lines = inverse_link(family, draws[INTERCEPT][:, None] + draws[x][:, None] * grid[None, :])
        lo, hi = eti(lines, ci)
        slope = draws[x]
        s_lo, s_hi = eti(slope, ci)
        kind = {"binomial": "log-odds slope", "poisson": "log-rate slope", "negbinomial": "log-rate slope"}.get(
            family, "slope")
        ax.fill_between(grid, lo, hi, color=BAYES, alpha=0.3, lw=0, label=f"{percent(ci)} credible band of the line")
        ax.plot(grid, lines.mean(axis=0), color=BAYES, lw=2.5,
                label=f"pooled fit (posterior mean): {kind} {slope.mean():.2f} [{s_lo:.2f}, {s_hi:.2f}]")
    ax.set(title=f"{response} against {x}, all observations pooled", xlabel=x, ylabel=response)
    if binary:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=10)
    else:
        ax.legend(loc="upper left")
    return fig


def group_boxplot(df: pd.DataFrame, response: str, group: str, max_levels: int | None = None) -> Figure:
    """Boxplot of the response per level of a grouping factor.

    With more than ``max_levels`` levels (:data:`MAX_LEVELS` by default), a labelled sample of them
    (:func:`level_sample`: the highest and lowest medians and a seeded random sample), in the same
    order; the title says which.
    """
    levels = levels_of(df, group)
    by_level = dict(iter(df[response].astype(float).groupby(df[group].astype(str).to_numpy(), sort=False)))
    data = [by_level[lv].to_numpy() for lv in levels]
    shown, sampled = level_sample(np.array([np.median(d) for d in data]), BOX_ENDS, max_levels)
    levels, data = [levels[i] for i in shown], [data[i] for i in shown]
    fig = new_figure(min(24.0, max(8.5, 0.8 * len(levels) + 3)), 5.5)
    ax = fig.subplots()
    bp = ax.boxplot(data, patch_artist=True, widths=0.6)
    ax.set_xticks(range(1, len(levels) + 1), levels)
    for i, box in enumerate(bp["boxes"]):
        box.set(facecolor=colour(i), alpha=0.6)
    for med in bp["medians"]:
        med.set(color="black", lw=1.5)
    ax.set(title=f"{response} by {group}" + (f"\n({sampled})" if sampled else ""), xlabel=group, ylabel=response)
    ax.grid(axis="x", visible=False)
    if len(levels) > 8 or max(map(len, levels)) * len(levels) > 90:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return fig


def group_scatter(df: pd.DataFrame, x: str, response: str, group: str) -> Figure:
    """Response against a predictor, points coloured by the level of a grouping factor."""
    levels = levels_of(df, group)
    cols = level_colours(levels)
    drawn, note = point_rows(len(df))
    df = df[drawn]
    fig = new_figure(10, 6)
    ax = fig.subplots()
    markers = "osD^vphX"
    for i, lv in enumerate(levels):
        sub = df[df[group].astype(str) == lv]
        ax.scatter(sub[x], sub[response], s=26, alpha=0.8, color=cols[lv], marker=markers[i % len(markers)],
                   edgecolor="#333333", linewidths=0.3, label=lv)
    ax.set(title=f"{response} against {x}, coloured by {group}" + (f"\n({note})" if note else ""), xlabel=x,
           ylabel=response)
    ax.legend(title=group, loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=1.6, alignment="left")
    return fig


def group_facets(df: pd.DataFrame, x: str, response: str, group: str) -> Figure:
    """One panel per group level, each with its own least-squares line (no pooling)."""
    levels = levels_of(df, group)
    fig, axes = panel_grid(len(levels), 4, (3.3, 2.9), sharex=True, sharey=True, extra_height=1.2)
    drawn, note = point_rows(len(df))
    labels = df[group].astype(str).to_numpy()
    for i, (ax, lv) in enumerate(zip(axes, levels, strict=True)):
        sub = df[labels == lv]
        xs, ys = sub[x].to_numpy(dtype=float), sub[response].to_numpy(dtype=float)
        pts = drawn[labels == lv]
        ax.scatter(xs[pts], ys[pts], s=12, alpha=0.6, color=colour(i), edgecolor="none")
        if len(sub) > 2 and np.ptp(xs) > 0:
            b1, b0 = np.polyfit(xs, ys, 1)
            g = np.linspace(xs.min(), xs.max(), 20)
            ax.plot(g, b0 + b1 * g, color="black", lw=1.8, label="own least-squares line")
            ax.text(0.03, 0.96, f"slope {b1:.2f}", transform=ax.transAxes, va="top", fontsize=10,
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
        ax.set_title(f"{lv} (n = {len(sub)})", fontsize=11)
    label_outer(axes, 4, x, response)
    fig.suptitle(f"{response} against {x}: a separate regression in each {group} (no pooling)"
                 + (f"\n(points: {note}; lines from every row)" if note else ""))
    return fig


# ---------------------------------------------------------------------------------------
# Estimates across models (tidy rows of any method)
# ---------------------------------------------------------------------------------------


def _forest_rows(ax, rows: pd.DataFrame, labels: list[tuple[str, str]], reference: float | None,
                 annotate: bool = True) -> dict[str, bool]:
    """Dot-and-whisker rows on ``ax``: one row per (model, term) label, one dot per method.

    The methods present in a row are spread evenly around it; each dot gets its number (and
    interval) as text right of the axes. Returns ``{method: whether it had intervals}`` for
    the legend.
    """
    known = [m for m in METHODS if m in set(rows["method"])]
    methods = known + sorted(set(rows["method"]) - set(METHODS))
    drawn: dict[str, set] = {}  # method -> kinds of the intervals drawn (empty: dots only)
    n = len(labels)
    for i, (model, term) in enumerate(labels):
        hits = [(m, rows[(rows["method"] == m) & (rows["model"] == model) & (rows["term"] == term)]) for m in methods]
        hits = [(m, h.iloc[0]) for m, h in hits if not h.empty]
        step = min(0.3, 0.8 / max(len(hits), 1))
        for j, (method, r) in enumerate(hits):
            col = METHODS.get(method, (colour(methods.index(method) + 4), method))[0]
            y = n - 1 - i + ((len(hits) - 1) / 2 - j) * step
            lo, hi = float(r["conf_low"]), float(r["conf_high"])
            has_ci = bool(np.isfinite(lo) and np.isfinite(hi))
            kinds = drawn.setdefault(method, set())
            if has_ci:
                kinds.add(str(r["conf_method"]) if r.get("conf_method") else "Wald")
            if has_ci:
                ax.plot([lo, hi], [y, y], color=col, lw=2.2, solid_capstyle="butt")
            ax.plot([float(r["estimate"])], [y], "o", color=col, ms=7, zorder=3)
            if annotate:
                text = f"{r['estimate']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if has_ci else "")
                ax.annotate(text, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=9,
                            color=col, annotation_clip=False)
    ax.set_yticks(range(n), [m if not t else f"{m}: {t}" for m, t in labels][::-1])
    ax.set_ylim(-0.6, n - 0.4)
    ax.grid(axis="y", visible=False)
    if reference is not None:
        ax.axvline(reference, color=NEUTRAL, ls="--", lw=1, zorder=0)
    return drawn


def _row_height(rows: pd.DataFrame) -> float:
    """Inches per forest row: room for the most methods any one row shows."""
    k = int(rows.groupby(["model", "term"], dropna=False)["method"].nunique().max()) if len(rows) else 1
    return 0.3 + 0.2 * k


def _method_legend(fig: Figure, drawn: dict[str, set], ci: float) -> None:
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for m, kinds in drawn.items():
        col, text = METHODS.get(m, (NEUTRAL, m))
        text = text.format(ci=percent(ci), kind=" or ".join(sorted(kinds - {"ETI"})) or "Wald")
        handles.append(Line2D([], [], color=col, marker="o", lw=2.2 if kinds else 0, ms=7))
        labels.append(text if kinds else text.split(",")[0])
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 2), fontsize=10)


def forest(tidy: pd.DataFrame, term: str, effect: str = "fixed", group: str | None = None,
           models: Sequence[str] | None = None, reference: float | None = 0.0, ci: float = 0.95) -> Figure:
    """Dot-and-whisker plot of one term across models, every method side by side.

    Parameters
    ----------
    tidy : DataFrame
        Tidy rows of several models (broom.mixed schema), any mix of methods (``bayes``,
        ``reml``, ``ml``, ``ols``); a method without intervals gets a dot only.
    term : str
        The term to show (``bodyLength2``, ``sd__(Intercept)``).
    effect, group : str
        Row filter; ``group`` for ``ran_pars``.
    models : sequence of str, optional
        Order of the models (top to bottom).
    reference : float, optional
        Draw a dashed vertical line here (0 for fixed effects).
    ci : float
        Mass of the table's intervals (for the legend).
    """
    rows = tidy[(tidy["term"] == term) & (tidy["effect"] == effect)]
    if group is not None:
        rows = rows[rows["group"] == group]
    order = list(models) if models is not None else list(dict.fromkeys(rows["model"]))
    order = [m for m in order if m in set(rows["model"])]
    if not order:
        raise ValueError(f"no {effect} rows for term {term!r}" + (f" in group {group!r}" if group else ""))
    fig = new_figure(10, _row_height(rows) * len(order) + 2.0)
    ax = fig.subplots()
    methods = _forest_rows(ax, rows.assign(term=""), [(m, "") for m in order], reference)
    what = f"{term} ({group})" if group else term
    ax.set(title=f"{what} in every model", xlabel=f"estimate of {what}", ylabel="model")
    _method_legend(fig, methods, ci)
    return fig


def forest_sd(tidy: pd.DataFrame, models: Sequence[str] | None = None, response: str | None = None,
              ci: float = 0.95) -> Figure:
    """Standard deviations across models: one panel per grouping factor, the residual last.

    Rows are models (``model: term`` when a group has several coefficients); every method of
    the tidy table side by side, as in :func:`forest`. ``response`` names the unit of the x-axis,
    ``ci`` the mass of the table's intervals (for the legend).
    """
    rows = tidy[(tidy["effect"] == "ran_pars") & tidy["term"].astype(str).str.startswith(SD_PREFIX)]
    order = list(models) if models is not None else list(dict.fromkeys(rows["model"]))
    groups = [g for g in dict.fromkeys(rows["group"].astype(str)) if g != RESIDUAL]
    groups += [RESIDUAL] if (rows["group"] == RESIDUAL).any() else []
    panels = []
    for g in groups:
        sub = rows[rows["group"].astype(str) == g]
        terms = list(dict.fromkeys(sub["term"]))
        several = len(terms) > 1
        labels = [(m, t if several else "") for m in order for t in terms
                  if ((sub["model"] == m) & (sub["term"] == t)).any()]
        panels.append((g, sub if several else sub.assign(term=""), terms, labels))
    if not panels:
        raise ValueError("no standard deviations (ran_pars rows) in the table")
    heights = [_row_height(p[1]) * len(p[3]) + 0.8 for p in panels]
    fig = new_figure(10, sum(heights) + 1.6)
    axes = fig.subplots(len(panels), 1, height_ratios=heights, squeeze=False).ravel()
    methods: dict[str, set] = {}
    for ax, (g, sub, terms, labels) in zip(axes, panels, strict=True):
        for m, kinds in _forest_rows(ax, sub, labels, reference=None).items():
            methods[m] = methods.get(m, set()) | kinds
        what = "residual sd (sd__Observation)" if g == RESIDUAL else f"sd of the {g} effects ({', '.join(terms)})"
        ax.set_title(what, fontsize=11, loc="left")
        ax.set_xlim(left=0)
    axes[-1].set_xlabel("standard deviation" + (f" (units of {response})" if response else ""))
    fig.suptitle("Standard deviations in every model")
    _method_legend(fig, methods, ci)
    return fig
