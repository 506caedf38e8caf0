"""Figures that show partial pooling: shrinkage, group effects, variance shares, sds' priors.

A mixed model's estimate of each group sits between the group's own estimate (no pooling)
and the estimate that ignores groups (complete pooling); groups with little data or far from
the rest move most. The tables behind the shrinkage figures are public
(:func:`shrinkage_table`, :func:`shrinkage_table_2d`) so a notebook can print them.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from matplotlib.ticker import PercentFormatter
from scipy import stats

from bayeslmm.graphics.plots import BAYES, FREQ, NEUTRAL, colour, new_figure, panel_grid, place_labels
from bayeslmm.graphics.plots_checks import as_fits, kde
from bayeslmm.intervals import eti, percent
from bayeslmm.labels import INTERCEPT, RESIDUAL, RESIDUAL_TERM, SD_PREFIX, sd_term, sd_variable
from bayeslmm.model.formula import fixed_design
from bayeslmm.summary import predict
from bayeslmm.summary.tables import fixed_draws, sd_draws, variance_partition_draws

NO_POOL, PARTIAL, COMPLETE = FREQ, BAYES, NEUTRAL


def _term(fit, group: str, slope: str | None = None):
    for term in fit.formula.random:
        if term.group == group and term.intercept and (slope is None or slope in term.slopes):
            return term
    want = f"an intercept{f' and a slope of {slope}' if slope else ''}"
    raise ValueError(f"{fit.name!r} has no random term for {group!r} with {want}")


def _level_intercepts(fit, group: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Levels, rows per level, draws of each level's intercept (partial pooling) and of its target.

    A level's intercept is the model's mean response of its rows with every non-intercept
    fixed covariate at 0 and slopes left out: Intercept + the level's effect + the average,
    over the level's rows, of the other grouping factors' intercept effects (for a site nested
    in a range, its range's effect). The target is the same without the level's own effect:
    what the model shrinks the level towards.
    """
    levels, u = predict.group_effect_draws(fit, group)
    pos = predict.level_positions(levels, predict.row_labels(fit.data, group), group)
    n = np.bincount(pos, minlength=len(levels))
    member = np.zeros((pos.size, len(levels)))
    member[np.arange(pos.size), pos] = 1.0 / n[pos]
    others = np.zeros((u.shape[0], pos.size))
    for term in fit.formula.random:
        if term.group != group and term.intercept:
            lv, uh = predict.group_effect_draws(fit, term.group)
            others += uh[:, predict.level_positions(lv, predict.row_labels(fit.data, term.group), term.group)]
    target = fixed_draws(fit, INTERCEPT)[:, None] + others @ member
    return levels, n, target + u, target


def shrinkage_table(fit, group: str, ci: float = 0.95) -> pd.DataFrame:
    """No-pooling, complete-pooling and partial-pooling intercept of every level of ``group``.

    ``no_pooling``: the level's own intercept from least squares of the response on the fixed
    covariates and one dummy per level (each level its own intercept, common slopes: the
    ``y ~ x + group`` regression). ``complete_pooling``: the intercept of least squares on the
    fixed covariates alone (groups ignored). ``partial``: the mixed model's posterior of the
    level's intercept (see :func:`_level_intercepts`) with its ``ci`` interval; ``target`` what
    the model shrinks the level towards (the population intercept, plus for a nested level its
    parent's effect); ``population`` the posterior mean of the fixed intercept. Rows are
    sorted by ``no_pooling``.
    """
    _term(fit, group)
    design = fixed_design(fit.formula, fit.data)
    x, names = design.X, design.names
    if INTERCEPT not in names:
        raise ValueError(f"{fit.name!r} has no fixed intercept; a shrinkage plot compares intercepts")
    y = predict.response(fit)
    levels, n, partial, target = _level_intercepts(fit, group)
    pos = predict.level_positions(levels, predict.row_labels(fit.data, group), group)
    dummies = np.zeros((y.size, len(levels)))
    dummies[np.arange(y.size), pos] = 1.0
    covs = x[:, [j for j, nm in enumerate(names) if nm != INTERCEPT]]
    own = np.linalg.lstsq(np.column_stack([covs, dummies]), y, rcond=None)[0][covs.shape[1]:]
    pooled = np.linalg.lstsq(x, y, rcond=None)[0][names.index(INTERCEPT)]
    lo, hi = eti(partial, ci)
    out = pd.DataFrame({
        "level": levels, "n": n, "no_pooling": own, "complete_pooling": pooled,
        "partial": partial.mean(axis=0), "partial_low": lo, "partial_high": hi,
        "target": target.mean(axis=0), "population": fixed_draws(fit, INTERCEPT).mean(),
    })
    return out.sort_values("no_pooling", kind="stable").reset_index(drop=True)


def _x_label(fit) -> str:
    covs = [t for t in fit.formula.fixed]
    response = fit.formula.response
    return f"{response} at {', '.join(covs)} = 0 (the level's intercept)" if covs else f"mean {response} of the level"


def _sizes(n: np.ndarray) -> np.ndarray:
    """Marker areas: proportional to rows per level, between 15 and 90 points squared."""
    return 70.0 * np.ones_like(n, dtype=float) if np.ptp(n) == 0 else 15 + 75 * n / n.max()


def shrinkage(fit, group: str, ci: float = 0.95) -> Figure:
    """Shrinkage of each level's intercept from its own estimate towards what the model expects.

    One row per level, sorted by the no-pooling estimate (largest on top): the no-pooling
    estimate (open circle), an arrow to the partial-pooling posterior mean (filled, with its
    ``ci`` interval), and a tick at the level's target (the population intercept, or for a
    nested level its parent's intercept). Point area shows the level's number of rows; the
    dashed line is the complete-pooling value.
    """
    t = shrinkage_table(fit, group, ci)
    k = len(t)
    fig = new_figure(10, 0.36 * k + 2.6)
    ax = fig.subplots()
    y = np.arange(k, dtype=float)
    size = _sizes(t["n"].to_numpy(dtype=float))
    ax.axvline(t["complete_pooling"].iloc[0], color=COMPLETE, ls="--", lw=1.5, zorder=0)
    off = 0.16 if k <= 40 else 0.0
    ax.hlines(y - off, t["partial_low"], t["partial_high"], color=PARTIAL, lw=1.6, alpha=0.7)
    ax.plot(t["target"], y, "|", color="black", ms=14, mew=2, zorder=2)
    ax.scatter(t["no_pooling"], y + off, s=size, facecolor="white", edgecolor=NO_POOL, lw=1.6, zorder=3)
    ax.scatter(t["partial"], y - off, s=size, color=PARTIAL, edgecolor="white", lw=0.5, zorder=4)
    for yi, a, b in zip(y, t["no_pooling"], t["partial"], strict=True):
        ax.annotate("", xy=(b, yi - off), xytext=(a, yi + off), zorder=5,
                    arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.0, "shrinkA": 0, "shrinkB": 0,
                                "mutation_scale": 9})
    ax.set_yticks(y, t["level"], fontsize=10 if k <= 30 else 8)
    ax.set_ylim(-0.7, k - 0.3)
    ax.grid(axis="y", visible=False)
    sizes_note = f"{t['n'].iloc[0]} rows each" if t["n"].nunique() == 1 else "point area: rows per level"
    ax.set(xlabel=_x_label(fit), ylabel=group,
           title=f"Partial pooling of the {group} intercepts in {fit.name} ({k} levels, {sizes_note})")
    handles = [
        Line2D([], [], ls="", marker="o", mfc="white", mec=NO_POOL, mew=1.6, ms=8),
        Line2D([], [], color=PARTIAL, marker="o", lw=1.6, ms=8),
        Line2D([], [], ls="", marker="|", color="black", ms=12, mew=2),
        Line2D([], [], color=COMPLETE, ls="--", lw=1.5),
    ]
    labels = ["no pooling: the level's own least-squares intercept",
              f"partial pooling: posterior mean, {percent(ci)} interval",
              "what the model shrinks the level towards",
              "complete pooling: one intercept for all (least squares)"]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=10)
    return fig


def shrinkage_table_2d(fit, group: str, slope: str | None = None) -> pd.DataFrame:
    """Each level's intercept and slope without pooling and with partial pooling.

    ``no_pooling_*``: least squares of the response on an intercept and ``slope`` within the
    level alone (its own regression). ``partial_*``: posterior means of the level's intercept
    (as in :func:`shrinkage_table`) and of its slope (fixed slope + the level's slope effect).
    ``complete_*``: least squares over all rows; ``population_*``: posterior means of the fixed
    intercept and slope; ``sd_*``: posterior means of the sds of the level effects.
    """
    term = _term(fit, group, slope)
    if not term.slopes:
        raise ValueError(f"{fit.name!r} has no random slope for {group!r}; use shrinkage()")
    slope = slope or term.slopes[0]
    y = predict.response(fit)
    s = predict.covariate_values(fit.data, slope)
    levels, n, partial_a, _ = _level_intercepts(fit, group)
    _, u_s = predict.group_effect_draws(fit, group, slope)
    names = predict.fixed_effect_draws(fit, max_draws=1)[0]
    beta_s = fixed_draws(fit, slope) if slope in names else np.zeros(u_s.shape[0])
    labels = predict.row_labels(fit.data, group)
    own = []
    for lv in levels:
        m = labels == lv
        if m.sum() >= 3 and np.ptp(s[m]) > 0:
            own.append(np.polyfit(s[m], y[m], 1)[::-1])
        else:
            own.append([np.nan, np.nan])
    own = np.array(own)
    cb = np.polyfit(s, y, 1)[::-1]
    sds = sd_draws(fit)
    return pd.DataFrame({
        "level": levels, "n": n,
        "no_pooling_intercept": own[:, 0], "no_pooling_slope": own[:, 1],
        "partial_intercept": partial_a.mean(axis=0), "partial_slope": (beta_s[:, None] + u_s).mean(axis=0),
        "complete_intercept": cb[0], "complete_slope": cb[1],
        "population_intercept": fixed_draws(fit, INTERCEPT).mean(), "population_slope": beta_s.mean(),
        "sd_intercept": sds[(group, sd_term(INTERCEPT))].mean(), "sd_slope": sds[(group, sd_term(slope))].mean(),
    })


def shrinkage_2d(fit, group: str, slope: str | None = None) -> Figure:
    """Intercept against slope of every level: own regression, arrow to the partial-pooling estimate.

    Like the sleepstudy figure of lme4's authors: each level's own least-squares line (open
    circles) moves towards the population (cross) in the mixed model (filled circles). Ellipses
    hold 50% and 95% of the population distribution of levels (normal, posterior-mean sds; the
    Bayesian fit has no intercept-slope correlation, so the ellipses are axis-aligned).
    """
    t = shrinkage_table_2d(fit, group, slope)
    slope = slope or _term(fit, group).slopes[0]
    fig = new_figure(9.5, 7.5)
    ax = fig.subplots()
    cx, cy = t["population_intercept"].iloc[0], t["population_slope"].iloc[0]
    for p, ls in ((0.5, "-"), (0.95, "--")):
        r = np.sqrt(stats.chi2.ppf(p, 2))
        ax.add_patch(Ellipse((cx, cy), 2 * r * t["sd_intercept"].iloc[0], 2 * r * t["sd_slope"].iloc[0],
                             fill=False, edgecolor=PARTIAL, ls=ls, lw=1, alpha=0.6))
    size = _sizes(t["n"].to_numpy(dtype=float))
    ok = t["no_pooling_intercept"].notna().to_numpy()
    ax.scatter(t["no_pooling_intercept"][ok], t["no_pooling_slope"][ok], s=size[ok], facecolor="white",
               edgecolor=NO_POOL, lw=1.6, zorder=3)
    ax.scatter(t["partial_intercept"], t["partial_slope"], s=size, color=PARTIAL, edgecolor="white", zorder=4)
    for r in t[ok].itertuples():
        ax.annotate("", xy=(r.partial_intercept, r.partial_slope),
                    xytext=(r.no_pooling_intercept, r.no_pooling_slope), zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 0.9, "shrinkA": 5, "shrinkB": 5,
                                "mutation_scale": 10})
    if len(t) <= 12:
        ok_xy = t.loc[ok, ["no_pooling_intercept", "no_pooling_slope"]].to_numpy(dtype=float)
        points = np.vstack([t[["partial_intercept", "partial_slope"]].to_numpy(dtype=float), ok_xy, [[cx, cy]]])
        place_labels(ax, t["partial_intercept"].to_numpy(dtype=float), t["partial_slope"].to_numpy(dtype=float),
                     list(t["level"]), points, color=PARTIAL)
    ax.plot([cx], [cy], "X", color="black", ms=11, zorder=5)
    ax.plot([t["complete_intercept"].iloc[0]], [t["complete_slope"].iloc[0]], "D", color=COMPLETE, ms=8, zorder=5)
    response = fit.formula.response
    ax.set(xlabel=f"intercept: {response} at {slope} = 0", ylabel=f"slope of {slope}",
           title=f"Partial pooling of the {group} lines in {fit.name} ({len(t)} levels)")
    handles = [
        Line2D([], [], ls="", marker="o", mfc="white", mec=NO_POOL, mew=1.6, ms=9),
        Line2D([], [], ls="", marker="o", color=PARTIAL, ms=9),
        Line2D([], [], ls="", marker="X", color="black", ms=10),
        Line2D([], [], ls="", marker="D", color=COMPLETE, ms=8),
        Line2D([], [], color=PARTIAL, lw=1, alpha=0.6),
        Line2D([], [], color=PARTIAL, lw=1, ls="--", alpha=0.6),
    ]
    labels = ["no pooling: the level's own regression", "partial pooling: posterior mean",
              "population mean (fixed effects)", "complete pooling: one regression for all",
              "50% of the population of levels", "95% of the population of levels"]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=10)
    return fig


def caterpillar(fit, groups: list[str] | None = None, ci: float = 0.95, inner: float = 0.5) -> Figure:
    """Every level's effect (deviation from the fixed part) with intervals, sorted, one panel per term.

    Thick bars hold ``inner`` of the posterior, thin ones ``ci``; levels are sorted by posterior
    mean. Panels are stacked, their heights proportional to the number of levels.
    """
    coefs = [(t, c) for t, c in predict.random_coefs(fit) if groups is None or t.group in groups]
    if not coefs:
        raise ValueError(f"{fit.name!r} has no random effects" + (f" for {groups}" if groups else ""))
    data = []
    for term, coef in coefs:
        levels, u = predict.group_effect_draws(fit, term.group, coef)
        order = np.argsort(u.mean(axis=0))
        data.append((term.group, coef, np.asarray(levels)[order], u[:, order]))
    heights = [0.24 * len(d[2]) + 0.9 for d in data]
    fig = new_figure(9.5, sum(heights) + 1.4)
    axes = fig.subplots(len(data), 1, height_ratios=heights, squeeze=False).ravel()
    for ax, (group, coef, levels, u) in zip(axes, data, strict=True):
        y = np.arange(len(levels))
        lo, hi = eti(u, ci)
        ilo, ihi = eti(u, inner)
        ax.axvline(0, color=NEUTRAL, ls="--", lw=1, zorder=0)
        ax.hlines(y, lo, hi, color=BAYES, lw=1.2)
        ax.hlines(y, ilo, ihi, color=BAYES, lw=3.5)
        ax.plot(u.mean(axis=0), y, "o", color="white", mec=BAYES, mew=1.5, ms=5, zorder=3)
        ax.set_yticks(y, levels, fontsize=10 if len(levels) <= 30 else 8)
        ax.set_ylim(-0.7, len(levels) - 0.3)
        ax.grid(axis="y", visible=False)
        what = "intercept" if coef == INTERCEPT else f"slope of {coef}"
        ax.set_title(f"{group}: {what} effects ({len(levels)} levels)", fontsize=11, loc="left")
        ax.set_ylabel(group)
    axes[-1].set_xlabel(f"effect on {fit.formula.response} (deviation from the fixed part)")
    fig.suptitle(f"Group effects in {fit.name}: posterior mean, {percent(inner)} and {percent(ci)} intervals")
    return fig


def variance_partition(fits, ci: float = 0.95, ncol: int = 3) -> Figure:
    """Posterior of each variance's share of the total, one panel per component, one curve per fit.

    The share of a grouping factor is var_g / (sum of the random-intercept variances + the
    residual variance), computed draw by draw from the posterior sds (the intraclass
    correlation when there is one factor). Below each curve: posterior mean and ``ci`` interval.
    """
    fits = [f for f in as_fits(fits) if f.formula.is_mixed]
    if not fits:
        raise ValueError("no mixed model among the fits: a variance partition needs random effects")
    shares = {f.name: variance_partition_draws(f) for f in fits}
    comps = [c for c in dict.fromkeys(c for s in shares.values() for c in s) if c != RESIDUAL] + [RESIDUAL]
    ncol = 2 if len(comps) == 4 else ncol
    fig, axes = panel_grid(len(comps), ncol, (4.6, 3.4), extra_height=1.6)
    grid = np.linspace(0, 1, 401)
    for ax, comp in zip(axes, comps, strict=True):
        present = [(i, name) for i, name in enumerate(shares) if comp in shares[name]]
        curves = {name: kde(shares[name][comp], grid, 0.0, 1.0) for _, name in present}
        top = max(c.max() for c in curves.values())
        for k, (i, name) in enumerate(present):
            col = colour(i)
            ax.plot(grid, curves[name], color=col, lw=2)
            lo, hi = eti(shares[name][comp], ci)
            yk = -top * 0.07 * (k + 1)
            ax.plot([lo, hi], [yk, yk], color=col, lw=2.2)
            ax.plot([shares[name][comp].mean()], [yk], "o", color=col, ms=5)
        ax.set_ylim(-top * 0.07 * (len(present) + 1), top * 1.05)
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.axhline(0, color=NEUTRAL, lw=0.8)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title("residual" if comp == RESIDUAL else comp, fontsize=11)
        ax.set_xlabel("share of the total variance")
    for ax in axes[:: min(ncol, len(comps))]:
        ax.set_ylabel("posterior density")
    handles = [Line2D([], [], color=colour(i), lw=2, marker="o", ms=5) for i in range(len(shares))]
    fig.legend(handles, list(shares), loc="outside lower center", ncols=min(4, len(shares)), fontsize=10,
               title=f"model (bars: posterior mean and {percent(ci)} interval)")
    fig.suptitle("How the variance of the response splits between grouping factors and residual")
    return fig


def prior_sd_draws(fit, n: int = 4000, seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    """Draws from the priors of every sd of a fit, keyed like :func:`bayeslmm.summary.tables.sd_draws`.

    The priors are Bambi's, read from the model rebuilt from the fit's formula and data
    (``prior_predictive`` of that model); if they differ from the priors recorded in the fit,
    a ValueError says so.
    """
    from bayeslmm.engines.bayes import build_model, prior_table

    model = build_model(fit.formula, fit.data)
    if prior_table(model) != fit.priors:
        raise ValueError(f"the priors of {fit.name!r} are not Bambi's defaults for its formula and data")
    keys = [(t.group, sd_term(c)) for t, c in predict.random_coefs(fit)] + [(RESIDUAL, RESIDUAL_TERM)]
    keys = {k: sd_variable(*k) for k in keys}
    log = logging.getLogger("pymc")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = model.prior_predictive(draws=n, var_names=list(keys.values()), random_seed=seed)
    finally:
        log.setLevel(level)
    prior = idata["prior"]
    return {k: np.asarray(prior[v].values, dtype=float).reshape(-1) for k, v in keys.items()}


def prior_posterior_sd(fit, prior_draws: dict[tuple[str, str], np.ndarray] | None = None, ci: float = 0.95,
                       seed: int = 0) -> Figure:
    """Prior against posterior of every standard deviation of a fit, one panel each.

    Shows what the data said: a factor with few levels (8 mountain ranges) leaves a wide
    posterior for its sd, while the residual sd (hundreds of rows) is pinned down. The panel
    notes the number of levels and both ``ci`` intervals.
    """
    post = sd_draws(fit)
    prior = prior_draws if prior_draws is not None else prior_sd_draws(fit, seed=seed)
    keys = list(post)
    fig, axes = panel_grid(len(keys), 3, (4.3, 3.7), extra_height=1.5)
    nlev = {t.group: len(predict.group_effect_draws(fit, t.group, t.coefs[0], max_draws=1)[0])
            for t in fit.formula.random}
    for ax, key in zip(axes, keys, strict=True):
        group, term = key
        pq, qq = eti(post[key], ci), eti(prior[key], ci)
        xmax = max(np.quantile(post[key], 0.999) * 1.15, np.quantile(prior[key], 0.9))
        grid = np.linspace(0, xmax, 400)
        dp = kde(prior[key][prior[key] < 3 * xmax], grid, 0.0)
        dq = kde(post[key], grid, 0.0)
        ax.fill_between(grid, dp, color=NEUTRAL, alpha=0.35, lw=0)
        ax.plot(grid, dp, color=NEUTRAL, lw=1.5)
        ax.fill_between(grid, dq, color=BAYES, alpha=0.3, lw=0)
        ax.plot(grid, dq, color=BAYES, lw=2)
        ax.set_xlim(0, xmax)
        ax.set_ylim(bottom=0)
        ax.set_yticks([])
        name = "residual sd" if group == RESIDUAL else f"sd of {group} {term.removeprefix(SD_PREFIX)}"
        info = f"{len(fit.data)} rows" if group == RESIDUAL else f"{nlev[group]} levels"
        ax.set_title(f"{name} ({info})", fontsize=11)
        ax.text(0.97, 0.96, f"posterior {percent(ci)}: {pq[0]:.1f} to {pq[1]:.1f}\nprior {percent(ci)}: {qq[0]:.1f} to "
                f"{qq[1]:.1f}", transform=ax.transAxes, ha="right", va="top", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set_xlabel(f"standard deviation ({fit.formula.response})")
    for ax in axes[::3]:
        ax.set_ylabel("density")
    fig.legend([Line2D([], [], color=NEUTRAL, lw=6, alpha=0.5), Line2D([], [], color=BAYES, lw=6, alpha=0.5)],
               ["prior (Bambi's default)", "posterior"], loc="outside lower center", ncols=2, fontsize=10)
    fig.suptitle(f"Standard deviations of {fit.name}: prior against posterior")
    return fig
