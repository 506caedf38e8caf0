"""Figures that show partial pooling: shrinkage, group effects, variance shares, priors of sds and correlations.

A mixed model's estimate of each group sits between the group's own estimate (no pooling)
and the estimate that ignores groups (complete pooling); groups with little data or far from
the rest move most. The tables behind the shrinkage figures are public
(:func:`shrinkage_table`, :func:`shrinkage_table_2d`) so a notebook can print them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from matplotlib.ticker import PercentFormatter
from scipy import sparse, stats

from bayeslmm.errors import OptionsError
from bayeslmm.graphics.plots import (
    BAYES,
    FREQ,
    METHODS,
    NEUTRAL,
    colour,
    level_sample,
    new_figure,
    panel_grid,
    place_labels,
)
from bayeslmm.graphics.plots_checks import as_fits, kde
from bayeslmm.intervals import eti, percent
from bayeslmm.labels import (
    COR_PREFIX,
    INTERCEPT,
    RESIDUAL,
    SD_PREFIX,
    cor_pairs,
    cor_term,
    sd_term,
)
from bayeslmm.model.formula import fixed_design, model_frame
from bayeslmm.model.priors import lkj_marginal, parse_prior
from bayeslmm.numbers import format_number
from bayeslmm.summary import pooling, predict
from bayeslmm.summary.tables import cor_draws, fixed_draws, sd_draws, variance_partition_draws

NO_POOL, PARTIAL, COMPLETE = FREQ, BAYES, NEUTRAL
#: Largest block of draws x levels a shrinkage table holds at once.
_BLOCK_BYTES = 2**27
#: What the samples of a shrinkage plot and a caterpillar plot keep at their ends (:func:`level_sample`).
SHRUNK_ENDS, EFFECT_ENDS = ("most shrunk", "least shrunk"), ("highest", "lowest")


def _term(fit, group: str, slope: str | None = None):
    for term in fit.formula.random:
        if term.group == group and term.intercept and (slope is None or slope in term.slopes):
            return term
    want = f"an intercept{f' and a slope of {slope}' if slope else ''}"
    raise ValueError(f"{fit.name!r} has no random term for {group!r} with {want}")


def _effects(fit, group: str, coef: str = INTERCEPT, lme4: pd.DataFrame | None = None):
    """Levels of ``group`` (the posterior's order) and the draws of their ``coef`` effects, or with ``lme4``
    (tidy rows of one lme4 fit) its conditional modes as a single draw (NaN for a level it lacks)."""
    if lme4 is None:
        return predict.group_effect_draws(fit, group, coef)
    levels, _ = predict.group_effect_draws(fit, group, coef, max_draws=1)
    rows = lme4[(lme4["effect"] == "ran_vals") & (lme4["group"] == group) & (lme4["term"] == coef)]
    modes = dict(zip(rows["level"].astype(str), rows["estimate"], strict=True))
    return levels, np.array([[modes.get(lv, np.nan) for lv in levels]], dtype=float)


def _fixed(fit, term: str, lme4: pd.DataFrame | None = None) -> np.ndarray:
    """Draws of a fixed effect, or with ``lme4`` (tidy rows of one lme4 fit) its estimate as a single draw."""
    if lme4 is None:
        return fixed_draws(fit, term)
    rows = lme4[(lme4["effect"] == "fixed") & (lme4["term"] == term)]
    return np.array([rows["estimate"].iloc[0] if len(rows) else np.nan], dtype=float)


def _level_intercepts(fit, group: str,
                      lme4: pd.DataFrame | None = None) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Levels, rows per level, draws of each level's intercept (partial pooling) and of its target.

    A level's intercept is the model's mean response of its rows with every non-intercept
    fixed covariate at 0 and slopes left out: Intercept + the level's effect + the average,
    over the level's rows, of the other grouping factors' intercept effects (for a site nested
    in a range, its range's effect; crossed factors' too), but not of factors nested in it (a
    range's sites: the range itself shrinks towards the one population intercept); on the link
    scale for a binomial or Poisson model. The target is the same without the level's own effect:
    what the model shrinks the level towards. The
    averages go through a sparse levels x other-levels matrix, never a draws x rows one (800 levels
    x 20 rows x 4000 draws stays small). With ``lme4`` (tidy rows of one lme4 fit of the same model)
    the same from lme4's fixed intercept and conditional modes: one "draw".
    """
    levels, n, parts = _intercept_parts(fit, group, lme4)
    return levels, n, *_intercept_draws(parts, slice(None))


def _intercept_parts(fit, group: str, lme4: pd.DataFrame | None = None):
    """What :func:`_level_intercepts` adds up, before adding it: levels, rows per level, and ``(fixed intercept
    draws, the level's effects (draws, levels), [(levels x other levels shares, the other factor's effects)])``."""
    levels, u = _effects(fit, group, lme4=lme4)
    pos = predict.level_positions(levels, predict.row_labels(fit.data, group), group)
    n = np.bincount(pos, minlength=len(levels))
    others = []
    for term in fit.formula.random:
        if term.group != group and term.intercept:
            lv, uh = _effects(fit, term.group, lme4=lme4)
            other = predict.level_positions(lv, predict.row_labels(fit.data, term.group), term.group)
            if _nested_in(other, pos):  # a child (sites of a range): its effects are not what the range shrinks to
                continue
            share = sparse.csr_matrix((1.0 / n[pos], (pos, other)), shape=(len(levels), len(lv)))  # rows sum to 1
            others.append((share, uh))
    return levels, n, (_fixed(fit, INTERCEPT, lme4), u, others)


def _intercept_draws(parts, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Draws of the intercepts (partial pooling) and targets of the levels ``cols`` from :func:`_intercept_parts`."""
    fixed, u, others = parts
    u = u[:, cols]
    target = np.repeat(fixed[:, None], u.shape[1], axis=1)
    for share, uh in others:
        target += np.asarray(share[cols] @ uh.T).T
    return target + u, target


def _nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether the factor coded ``inner`` (per row) is nested in ``outer``: more levels, each within one."""
    pairs = np.unique(np.column_stack([inner, outer]), axis=0)
    return len(np.unique(inner)) > len(np.unique(outer)) and len(pairs) == len(np.unique(inner))


def no_pooling(y: np.ndarray, common: np.ndarray, own: np.ndarray, pos: np.ndarray, n_levels: int) -> np.ndarray:
    """Each level's own coefficients: least squares with ``own`` columns per level, ``common`` ones shared.

    The no-pooling regression: every level gets its own coefficient on each ``own`` column (an
    intercept, the slopes that vary by level), the ``common`` columns one coefficient for all rows
    (``y ~ common + group + group:x``). Solved exactly by Frisch-Waugh-Lovell, a level at a time
    (no rows x levels matrix): the level's own columns are projected out of its ``y`` and common
    columns, the common coefficients come from the pooled residuals, and each level's own
    coefficients from its rows with the common part removed.

    Returns
    -------
    ndarray, shape (n_levels, own columns)
        NaN for a level whose rows do not determine its own coefficients (too few rows, or a
        covariate that does not vary within it).
    """
    own = np.asarray(own, dtype=float).reshape(len(y), -1)
    both = np.column_stack([np.asarray(y, dtype=float), np.asarray(common, dtype=float).reshape(len(y), -1)])
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(n_levels + 1))
    k = own.shape[1]
    coefs = np.full((n_levels, k, both.shape[1]), np.nan)
    resid = np.empty_like(both)
    for lv in range(n_levels):
        rows = order[bounds[lv]:bounds[lv + 1]]
        if rows.size == 0:
            continue
        c, _, rank, _ = np.linalg.lstsq(own[rows], both[rows], rcond=None)
        resid[rows] = both[rows] - own[rows] @ c
        if rank == k:
            coefs[lv] = c
    shared = np.linalg.lstsq(resid[:, 1:], resid[:, 0], rcond=None)[0] if both.shape[1] > 1 else np.zeros(0)
    return coefs[:, :, 0] - coefs[:, :, 1:] @ shared


def _own_and_pooled(fit, x: np.ndarray, common: np.ndarray, own: np.ndarray, pos: np.ndarray, n_levels: int,
                    extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """No pooling (each level's ``own`` coefficients, ``common`` ones shared) and complete pooling (the
    coefficients of ``x`` and of the column ``extra`` after them) of a fit's response.

    Gaussian: least squares (:func:`no_pooling`, ``lstsq``). Binomial and Poisson: maximum likelihood
    on the link scale (:func:`bayeslmm.summary.pooling.glm_no_pooling`, R's ``glm``), where a level's
    own estimate may be infinite. Returns the own coefficients (levels x own columns), the direction
    in which each infinite one runs off (0 otherwise), why it is infinite per level (``""`` if it is
    not) and the complete-pooling coefficients.
    """
    if not fit.formula.is_glmm:
        y = predict.response(fit)
        coefs = no_pooling(y, common, own, pos, n_levels)
        x_all = x if extra is None else np.column_stack([x, extra])
        return coefs, np.zeros_like(coefs), [""] * n_levels, np.linalg.lstsq(x_all, y, rcond=None)[0]
    frame = model_frame(fit.formula, fit.data)
    own_fit = pooling.glm_no_pooling(fit.formula.family, frame.y, frame.trials, frame.offset, common, own, pos,
                                     n_levels)
    return own_fit.coefs, own_fit.direction, list(own_fit.reason), pooling.complete_pooling(frame, extra)


def shrinkage_table(fit, group: str, ci: float = 0.95, lme4: pd.DataFrame | None = None) -> pd.DataFrame:
    """No-pooling, complete-pooling and partial-pooling intercept of every level of ``group``.

    ``no_pooling``: the level's own intercept from least squares of the response on the fixed
    covariates and one dummy per level (each level its own intercept, common slopes: the
    ``y ~ x + group`` regression). ``complete_pooling``: the intercept of least squares on the
    fixed covariates alone (groups ignored). ``partial``: the mixed model's posterior of the
    level's intercept (see :func:`_level_intercepts`) with its ``ci`` interval; ``target`` what
    the model shrinks the level towards (the population intercept, plus for a nested level its
    parent's effect); ``population`` the posterior mean of the fixed intercept. Rows are
    sorted by ``no_pooling``.

    A binomial or Poisson model's table is on the link scale: no pooling and complete pooling are
    maximum-likelihood GLMs (:mod:`bayeslmm.summary.pooling`), and a level whose own estimate does
    not exist (all successes, all failures, all zero counts) has ``no_pooling`` +-inf and says why
    in ``separation`` (``""`` for the other levels and for every level of a Gaussian model). With
    ``lme4`` (tidy rows of lme4's fit of the same model), ``lme4`` holds its partial-pooling
    intercept: the fixed intercept plus the conditional modes, as ``partial`` is built.
    """
    _term(fit, group)
    design = fixed_design(fit.formula, fit.data)
    x, names = design.X, design.names
    if INTERCEPT not in names:
        raise ValueError(f"{fit.name!r} has no fixed intercept; a shrinkage plot compares intercepts")
    levels, n, parts = _intercept_parts(fit, group)
    pos = predict.level_positions(levels, predict.row_labels(fit.data, group), group)
    covs = x[:, [j for j, nm in enumerate(names) if nm != INTERCEPT]]
    own, _, why, pooled = _own_and_pooled(fit, x, covs, np.ones((pos.size, 1)), pos, len(levels))
    step = max(1, _BLOCK_BYTES // (8 * parts[1].shape[0]))  # levels at a time: 24,000 levels x 4,000 draws is 768 MB
    summary = []
    for a in range(0, len(levels), step):
        partial, target = _intercept_draws(parts, slice(a, a + step))
        summary.append(np.vstack([partial.mean(axis=0), *eti(partial, ci), target.mean(axis=0)]))
    mean, lo, hi, target = np.hstack(summary) if summary else np.zeros((4, 0))
    out = pd.DataFrame({
        "level": levels, "n": n, "no_pooling": own[:, 0], "complete_pooling": pooled[names.index(INTERCEPT)],
        "partial": mean, "partial_low": lo, "partial_high": hi,
        "target": target, "population": fixed_draws(fit, INTERCEPT).mean(), "separation": why,
    })
    if lme4 is not None:
        out["lme4"] = _level_intercepts(fit, group, lme4)[2][0]
    return out.sort_values("no_pooling", kind="stable").reset_index(drop=True)


def _link_label(formula) -> str:
    """What a level's intercept measures: the response (Gaussian), its log-odds, or its log rate per unit of
    exposure (a Poisson model's intercept is at offset 0: one unit of ``hours`` for ``offset(log(hours))``)."""
    exposure = predict.exposure_label(formula) if formula.family == "poisson" else None
    return f"log of the mean {formula.response} per {exposure}" if exposure else predict.scale_label(formula)


def _x_label(fit) -> str:
    covs = [t for t in fit.formula.fixed]
    response = _link_label(fit.formula)
    if not covs:
        return f"{response} of the level" if fit.formula.is_glmm else f"mean {response} of the level"
    return f"{response} at {', '.join(covs)} = 0 (the level's intercept)"


def _sizes(n: np.ndarray) -> np.ndarray:
    """Marker areas: proportional to rows per level, between 15 and 90 points squared."""
    return 70.0 * np.ones_like(n, dtype=float) if np.ptp(n) == 0 else 15 + 75 * n / n.max()


def _span(*values) -> tuple[float, float]:
    """The finite range of ``values`` with a margin of 6% on each side (0.5 when they are one number)."""
    v = np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in values])
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    pad = 0.06 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


#: Tukey's "far out" fences, in interquartile ranges: a binomial or Poisson level's finite no-pooling estimate
#: beyond them (and beyond what else the figure shows) is drawn at the axis edge instead of stretching it. Near
#: separation (one success in 25 trials at the highest hours) gives finite maximum-likelihood estimates of -20
#: and more on the log-odds scale, which would squeeze every other level into a corner.
FAR_IQR = 3.0
#: Why a level is drawn at the edge although its estimate is finite.
FAR_OUT = "near separation"


def _far_out(values: np.ndarray) -> np.ndarray:
    """Which rows of ``values`` (levels x coordinates) lie beyond :data:`FAR_IQR` interquartile ranges from the
    quartiles of the finite rows in some coordinate (none with fewer than 4 finite rows)."""
    v = np.asarray(values, dtype=float).reshape(len(values), -1)
    ok = np.isfinite(v).all(axis=1)
    if ok.sum() < 4:
        return np.zeros(len(v), dtype=bool)
    q1, q3 = np.percentile(v[ok], [25, 75], axis=0)
    with np.errstate(invalid="ignore"):
        return ok & ((v < q1 - FAR_IQR * (q3 - q1)) | (v > q3 + FAR_IQR * (q3 - q1))).any(axis=1)


def _edge_label(sign: float, reason: str, count: int) -> str:
    """The legend entry of the levels drawn at the edge: which infinity (``sign`` 0: a direction in the
    plane), or beyond the axis (:data:`FAR_OUT`), why, how many."""
    levels = f"{count} level{'s' if count > 1 else ''}"
    if reason == FAR_OUT:
        return f"no pooling off the axis, finite: {reason} ({levels})"
    return f"no pooling {'infinite' if sign == 0 else '+inf' if sign > 0 else '-inf'}: {reason} ({levels})"


def _lme4_label(lme4: pd.DataFrame) -> str:
    """``lme4 glmer (Laplace)``: which lme4 fit tidy rows come from, in the legend's words (:data:`METHODS`)."""
    method = str(lme4["method"].iloc[0]) if len(lme4) else ""
    return METHODS[method][1].split(":")[0] if method in METHODS else f"lme4 ({method})"


def shrinkage(fit, group: str, ci: float = 0.95, lme4: pd.DataFrame | None = None,
              max_levels: int | None = None) -> Figure:
    """Shrinkage of each level's intercept from its own estimate towards what the model expects.

    One row per level, sorted by the no-pooling estimate (largest on top): the no-pooling
    estimate (open circle), an arrow to the partial-pooling posterior mean (filled, with its
    ``ci`` interval), and a tick at the level's target (the population intercept, or for a
    nested level its parent's intercept). Point area shows the level's number of rows; the
    dashed line is the complete-pooling value.

    A binomial or Poisson model is drawn on the link scale (:func:`shrinkage_table`); a level whose
    own estimate is infinite (all successes, all failures, all zero counts) gets an open triangle at
    the axis edge, pointing to its infinity, and a legend entry saying why; one whose finite estimate
    lies beyond Tukey's far-out fences (:func:`_far_out`) and beyond everything else drawn, a filled
    triangle there. ``lme4`` (tidy rows of lme4's fit of the model) adds lme4's partial pooling, its
    intercept plus conditional modes (x). With more than ``max_levels`` levels
    (:data:`~bayeslmm.graphics.plots.MAX_LEVELS` by default) it draws a labelled sample of them
    (:func:`~bayeslmm.graphics.plots.level_sample`: the most and least shrunk and a seeded random
    sample), and its title says which.
    """
    t = shrinkage_table(fit, group, ci, lme4)
    shown_levels, sampled = level_sample(np.abs(t["no_pooling"] - t["partial"]), SHRUNK_ENDS, max_levels)
    t = t.iloc[shown_levels].reset_index(drop=True)
    k = len(t)
    fig = new_figure(10, 0.36 * k + 2.6 + (0.3 if lme4 is not None else 0.0))
    ax = fig.subplots()
    y = np.arange(k, dtype=float)
    size = _sizes(t["n"].to_numpy(dtype=float))
    own = t["no_pooling"].to_numpy(dtype=float)
    rest = (t[["partial_low", "partial_high", "target", "complete_pooling"]], t["lme4"] if "lme4" in t else [])
    infinite, far = np.isinf(own), _far_out(own) if fit.formula.is_glmm else np.zeros(k, dtype=bool)
    if far.any():  # far out, and beyond everything else drawn
        lo, hi = _span(own[np.isfinite(own) & ~far], *rest)
        far &= (own < lo) | (own > hi)
    shown, edge = np.isfinite(own) & ~far, infinite | far
    why = np.where(far, FAR_OUT, t["separation"].to_numpy(dtype=object))
    ax.axvline(t["complete_pooling"].iloc[0], color=COMPLETE, ls="--", lw=1.5, zorder=0)
    off = 0.16 if k <= 40 else 0.0
    ax.hlines(y - off, t["partial_low"], t["partial_high"], color=PARTIAL, lw=1.6, alpha=0.7)
    target = t["target"].to_numpy(dtype=float)
    one_target = bool(np.allclose(target, target[0], rtol=1e-9, atol=0))  # a top-level factor: the population
    if one_target:
        ax.axvline(target[0], color="black", lw=1.5, zorder=1)
    else:  # nested levels: each towards its parent's value
        ax.plot(target, y, "|", color="black", ms=14, mew=2, zorder=2)
    ax.scatter(own[shown], y[shown] + off, s=size[shown], facecolor="white", edgecolor=NO_POOL, lw=1.6, zorder=3)
    ax.scatter(t["partial"], y - off, s=size, color=PARTIAL, edgecolor="white", lw=0.5, zorder=4)
    starts = own.copy()
    edge_handles, edge_labels = [], []
    if edge.any():  # the values drawn set the axis; the infinite and far-out ones sit on its edge
        lo, hi = _span(own[shown], *rest)
        ax.set_xlim(lo, hi)
        starts[edge] = np.where(own[edge] > hi, hi, lo)
        for sign, marker in ((-1.0, "<"), (1.0, ">")):
            side = edge & ((own > hi) == (sign > 0))
            for reason in dict.fromkeys(why[side]):
                these = side & (why == reason)
                face = NO_POOL if reason == FAR_OUT else "white"  # filled: a finite estimate, open: infinite
                ax.scatter(starts[these], y[these] + off, s=np.maximum(size[these], 50), marker=marker,
                           facecolor=face, edgecolor=NO_POOL, lw=1.6, zorder=3, clip_on=False)
                edge_handles.append(Line2D([], [], ls="", marker=marker, mfc=face, mec=NO_POOL, mew=1.6, ms=8))
                edge_labels.append(_edge_label(sign, reason, int(these.sum())))
    for yi, a, b in zip(y, starts, t["partial"], strict=True):
        if np.isfinite(a):
            ax.annotate("", xy=(b, yi - off), xytext=(a, yi + off), zorder=5,
                        arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.0, "shrinkA": 0, "shrinkB": 0,
                                    "mutation_scale": 9})
    if lme4 is not None:
        ax.scatter(t["lme4"], y - off, s=36, marker="x", color="black", lw=1.3, zorder=6)
    ax.set_yticks(y, t["level"], fontsize=10 if k <= 30 else 8)
    ax.set_ylim(-0.7, k - 0.3)
    ax.grid(axis="y", visible=False)
    sizes_note = f"{t['n'].iloc[0]} rows each" if t["n"].nunique() == 1 else "point area: rows per level"
    ax.set(xlabel=_x_label(fit), ylabel=group,
           title=f"Partial pooling of the {group} intercepts in {fit.name} "  # the sample on a line of its own
                 + (f"({k} levels, {sizes_note})" if not sampled else f"({sizes_note})\n({sampled})"))
    handles = [
        Line2D([], [], ls="", marker="o", mfc="white", mec=NO_POOL, mew=1.6, ms=8),
        Line2D([], [], color=PARTIAL, marker="o", lw=1.6, ms=8),
        Line2D([], [], color="black", lw=1.5) if one_target else Line2D([], [], ls="", marker="|", color="black",
                                                                        ms=12, mew=2),
        Line2D([], [], color=COMPLETE, ls="--", lw=1.5),
    ]
    how = "maximum-likelihood (GLM)" if fit.formula.is_glmm else "least-squares"
    labels = [f"no pooling: the level's own {how} intercept",
              f"partial pooling: posterior mean, {percent(ci)} interval",
              "population intercept: what every level shrinks towards" if one_target
              else "what the level shrinks towards (its parent's intercept)",
              f"complete pooling: one intercept for all ({'GLM' if fit.formula.is_glmm else 'least squares'})"]
    if lme4 is not None:
        handles.append(Line2D([], [], ls="", marker="x", color="black", ms=7, mew=1.3))
        labels.append(f"{_lme4_label(lme4)}: fixed intercept + conditional modes")
    fig.legend(handles + edge_handles, labels + edge_labels, loc="outside lower center", ncols=2, fontsize=10)
    return fig


def _group_slope(fit, group: str, slope: str | None = None) -> str:
    """The slope of ``group`` a 2-D shrinkage plot shows: ``slope``, else the first slope of the group's
    correlated term, else of its other terms (``(x||g)`` puts the slope in a term of its own)."""
    _term(fit, group)
    terms = sorted((t for t in fit.formula.random if t.group == group), key=lambda t: not t.correlated)
    slopes = list(dict.fromkeys(c for t in terms for c in t.slopes))
    if not slopes:
        raise ValueError(f"{fit.name!r} has no random slope for {group!r}; use shrinkage()")
    if slope is None:
        return slopes[0]
    if slope not in slopes:
        raise ValueError(f"{fit.name!r} has no random slope of {slope!r} for {group!r}; "
                         f"its slopes: {', '.join(slopes)}")
    return slope


def pair_cor_draws(fit, group: str, a: str, b: str) -> np.ndarray | None:
    """Draws of the correlation of the ``a`` and ``b`` effects of ``group``, or None when the posterior has
    none (separate terms, ``(x||g)``, or an engine that fitted a correlated term without its correlation)."""
    cors = cor_draws(fit)
    for pair in ((a, b), (b, a)):
        if (group, cor_term(*pair)) in cors:
            return cors[(group, cor_term(*pair))]
    return None


def population_covariance(fit, group: str, a: str, b: str) -> np.ndarray:
    """Posterior mean of the 2 x 2 covariance matrix of the ``a`` and ``b`` effects of ``group``.

    Draw by draw Sigma = [[s_a^2, r s_a s_b], [r s_a s_b, s_b^2]], with r the correlation's draw
    when ``a`` and ``b`` share a correlated term (``(1 + x|g)``) and 0 when they do not (``(x||g)``
    makes separate terms); the matrix returned is the mean of Sigma over the draws (so its
    diagonal holds the posterior means of the variances, not the squared means of the sds).
    """
    sds = sd_draws(fit)
    sa, sb = sds[(group, sd_term(a))], sds[(group, sd_term(b))]
    r = pair_cor_draws(fit, group, a, b)
    c = float(np.mean(sa * sb * (0.0 if r is None else r)))
    return np.array([[np.mean(sa**2), c], [c, np.mean(sb**2)]])


def shrinkage_table_2d(fit, group: str, slope: str | None = None, lme4: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each level's intercept and slope without pooling and with partial pooling.

    ``no_pooling_*``: the level's own least-squares coefficients, every coefficient that varies by
    ``group`` (intercept and slopes of all its terms) estimated within the level, the other fixed
    covariates shared (:func:`no_pooling`; for ``y ~ x + (1 + x|g)`` the level's own regression
    on ``x``); NaN where the level's rows cannot determine them. ``partial_*``: posterior means of
    the level's intercept (as in :func:`shrinkage_table`) and of its slope (fixed slope + the
    level's slope effect). ``complete_*``: least squares of the response on the fixed effects,
    groups ignored; ``population_*``: posterior means of the fixed intercept and slope.
    ``sd_intercept``, ``sd_slope``, ``cor``: the standard deviations and correlation of the
    posterior-mean covariance matrix of the two effects (:func:`population_covariance`).
    ``slope`` defaults to the group's first slope (:func:`_group_slope`).

    A binomial or Poisson model's table is on the link scale, its no pooling and complete pooling
    maximum-likelihood GLMs (:func:`shrinkage_table`); a level whose own estimate runs off to
    infinity says why in ``separation`` and where in ``direction_intercept`` and ``direction_slope``
    (its ``no_pooling_*`` are +-inf along that direction, NaN where it is 0; ``""`` and 0 for the other
    levels). With ``lme4`` (tidy rows of lme4's fit of the model), ``lme4_intercept`` and ``lme4_slope``
    are lme4's partial pooling: fixed effects plus conditional modes.
    """
    slope = _group_slope(fit, group, slope)
    design = fixed_design(fit.formula, fit.data)
    names = list(design.names)
    if INTERCEPT not in names:
        raise ValueError(f"{fit.name!r} has no fixed intercept; a shrinkage plot compares intercepts")
    coefs = [INTERCEPT, *dict.fromkeys(c for t in fit.formula.random if t.group == group
                                       for c in t.coefs if c != INTERCEPT)]
    levels, n, partial_a, _ = _level_intercepts(fit, group)
    pos = predict.level_positions(levels, predict.row_labels(fit.data, group), group)
    own_x = np.column_stack([predict.covariate_values(fit.data, c) for c in coefs])
    common = design.X[:, [j for j, nm in enumerate(names) if nm not in coefs]]
    extra = None if slope in names else own_x[:, coefs.index(slope)]
    own, direction, why, pooled = _own_and_pooled(fit, design.X, common, own_x, pos, len(levels), extra)
    shown = [0, coefs.index(slope)]
    own, direction = own[:, shown], direction[:, shown]
    _, u_s = predict.group_effect_draws(fit, group, slope)
    beta_s = fixed_draws(fit, slope) if slope in names else np.zeros(u_s.shape[0])
    cov = population_covariance(fit, group, INTERCEPT, slope)
    sd = np.sqrt(np.diag(cov))
    out = pd.DataFrame({
        "level": levels, "n": n,
        "no_pooling_intercept": own[:, 0], "no_pooling_slope": own[:, 1],
        "partial_intercept": partial_a.mean(axis=0), "partial_slope": (beta_s[:, None] + u_s).mean(axis=0),
        "complete_intercept": pooled[names.index(INTERCEPT)],
        "complete_slope": pooled[names.index(slope) if slope in names else -1],
        "population_intercept": fixed_draws(fit, INTERCEPT).mean(), "population_slope": beta_s.mean(),
        "sd_intercept": sd[0], "sd_slope": sd[1], "cor": cov[0, 1] / (sd[0] * sd[1]),
        "separation": why, "direction_intercept": direction[:, 0], "direction_slope": direction[:, 1],
    })
    if lme4 is not None:
        out["lme4_intercept"] = _level_intercepts(fit, group, lme4)[2][0]
        slope_fixed = _fixed(fit, slope, lme4)[0] if slope in names else 0.0
        out["lme4_slope"] = slope_fixed + _effects(fit, group, slope, lme4)[1][0]
    return out


def population_ellipse(centre: tuple[float, float], cov: np.ndarray, mass: float, **style) -> Ellipse:
    """The ellipse holding ``mass`` of a bivariate normal (``centre``, ``cov``), in data coordinates.

    Its axes lie along the eigenvectors of ``cov`` with half-lengths sqrt(chi2_2(mass) x eigenvalue);
    ``angle`` (degrees, in (-90, 90]) is that of the major axis, positive when the correlation is.
    """
    values, vectors = np.linalg.eigh(np.asarray(cov, dtype=float))
    major = vectors[:, 1]
    angle = float(np.degrees(np.arctan2(major[1], major[0])))
    angle = angle - 180 if angle > 90 else angle + 180 if angle <= -90 else angle
    r = np.sqrt(stats.chi2.ppf(mass, 2))
    width, height = 2 * r * np.sqrt(np.clip(values[::-1], 0, None))
    return Ellipse(centre, width, height, angle=angle, **style)


#: Above this many levels the 2-D shrinkage plot draws its arrows as one collection of thin lines.
MANY_LEVELS = 60


def _edge_points(ax, centres: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a ray from each centre along its direction leaves the axes' box (data coordinates), and the
    direction's angle on screen in degrees (for a marker that points along it)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    out = np.empty_like(centres)
    for i, ((cx, cy), (dx, dy)) in enumerate(zip(centres, directions, strict=True)):
        hits = [t for t in ((x1 - cx) / dx if dx > 0 else (x0 - cx) / dx if dx < 0 else np.inf,
                            (y1 - cy) / dy if dy > 0 else (y0 - cy) / dy if dy < 0 else np.inf) if t >= 0]
        t = min(hits) if hits else 0.0
        out[i] = (cx + t * dx, cy + t * dy)
    screen = ax.transData.transform(centres + directions * 1e-3 * np.array([x1 - x0, y1 - y0])) - \
        ax.transData.transform(centres)
    return out, np.degrees(np.arctan2(screen[:, 1], screen[:, 0]))


def shrinkage_2d(fit, group: str, slope: str | None = None, ci: float = 0.95,
                 lme4: pd.DataFrame | None = None) -> Figure:
    """Intercept against slope of every level: own regression, arrow to the partial-pooling estimate.

    Like the sleepstudy figure of lme4's authors: each level's own least-squares line (open
    circles) moves towards the population (cross) in the mixed model (filled circles). The two
    ellipses hold 50% and ``ci`` of the population distribution of levels: the normal centred at
    the posterior means of the fixed intercept and slope whose covariance is the posterior mean of
    the covariance matrix of the two effects (:func:`population_covariance`) -- tilted by the
    correlation of a correlated term ``(1 + x|g)``, axis-aligned for ``(x||g)``, whose correlation
    is 0 by construction. Up to 12 levels are labelled; above :data:`MANY_LEVELS` the points
    shrink and the arrows become thin lines without heads (one artist, fast at 800 levels).

    A binomial or Poisson model is drawn on the link scale, its own lines maximum-likelihood GLMs
    (:func:`shrinkage_table_2d`); a level whose own estimate runs off to infinity (all successes,
    all failures, all zero counts, or separation along the slope's covariate) gets an open triangle
    where the ray from its partial-pooling point in that direction leaves the axes, pointing along
    it, and a legend entry saying why; a level whose finite estimate is far out (:func:`_far_out`) and
    beyond everything else drawn gets a filled one on the ray towards it. The axes hold the points
    drawn and the outer ellipse. ``lme4`` (tidy rows of lme4's fit) adds lme4's partial pooling
    (fixed effects + conditional modes, x).
    """
    t = shrinkage_table_2d(fit, group, slope, lme4)
    slope = _group_slope(fit, group, slope)
    k = len(t)
    many = k > MANY_LEVELS
    fig = new_figure(9.5, 7.5)
    ax = fig.subplots()
    cx, cy = t["population_intercept"].iloc[0], t["population_slope"].iloc[0]
    sd_a, sd_b, cor = t["sd_intercept"].iloc[0], t["sd_slope"].iloc[0], t["cor"].iloc[0]
    cov = np.array([[sd_a**2, cor * sd_a * sd_b], [cor * sd_a * sd_b, sd_b**2]])
    for p, ls in ((0.5, "-"), (ci, "--")):
        ax.add_patch(population_ellipse((cx, cy), cov, p, fill=False, edgecolor="black", ls=ls, lw=1.4, zorder=6))
    size = _sizes(t["n"].to_numpy(dtype=float)) * (1.0 if not many else max(0.12, MANY_LEVELS / k))
    own = t[["no_pooling_intercept", "no_pooling_slope"]].to_numpy(dtype=float)
    partial = t[["partial_intercept", "partial_slope"]].to_numpy(dtype=float)
    direction = t[["direction_intercept", "direction_slope"]].to_numpy(dtype=float)
    ok = np.isfinite(own).all(axis=1)
    infinite = (t["separation"] != "").to_numpy() & (np.abs(direction).sum(axis=1) > 0)
    centre = np.array([cx, cy])
    reach = np.sqrt(stats.chi2.ppf(ci, 2) * np.diag(cov))  # the outer ellipse's box
    rest = np.vstack([partial, centre, centre - reach, centre + reach,
                      [[t["complete_intercept"].iloc[0], t["complete_slope"].iloc[0]]],
                      t[["lme4_intercept", "lme4_slope"]].to_numpy(dtype=float) if "lme4_intercept" in t
                      else np.zeros((0, 2))])
    far = _far_out(own) if fit.formula.is_glmm else np.zeros(k, dtype=bool)
    if far.any():  # far out, and beyond everything else drawn
        box = [_span(np.concatenate([own[ok & ~far, j], rest[:, j]])) for j in (0, 1)]
        far &= ((own < [b[0] for b in box]) | (own > [b[1] for b in box])).any(axis=1)
    shown, edge = ok & ~far, infinite | far
    why = np.where(far, FAR_OUT, t["separation"].to_numpy(dtype=object))
    direction = np.where(far[:, None], own - partial, direction)
    ax.scatter(own[shown, 0], own[shown, 1], s=size[shown], facecolor="white",
               edgecolor=NO_POOL, lw=0.8 if many else 1.6, zorder=3)
    ax.scatter(partial[:, 0], partial[:, 1], s=size, color=PARTIAL, edgecolor="white",
               lw=0.3 if many else 1.0, zorder=4)
    edge_handles, edge_labels = [], []
    starts, ends = own[shown], partial[shown]
    if edge.any():  # the points drawn and the outer ellipse set the axes; infinite and far-out ones sit on their edge
        ax.set_xlim(*_span(own[shown, 0], rest[:, 0]))
        ax.set_ylim(*_span(own[shown, 1], rest[:, 1]))
        points, angles = _edge_points(ax, partial[edge], direction[edge])
        reasons = why[edge]
        for (px, py), angle, reason in zip(points, angles, reasons, strict=True):
            ax.plot([px], [py], ls="", marker=(3, 0, angle - 90), mfc=NO_POOL if reason == FAR_OUT else "white",
                    mec=NO_POOL, mew=1.6, ms=max(6.0, np.sqrt(size.max())), zorder=3, clip_on=False)
        starts, ends = np.vstack([starts, points]), np.vstack([ends, partial[edge]])
        for reason in dict.fromkeys(reasons):
            face = NO_POOL if reason == FAR_OUT else "white"  # filled: a finite estimate, open: infinite
            edge_handles.append(Line2D([], [], ls="", marker=(3, 0, -90), mfc=face, mec=NO_POOL, mew=1.6, ms=9))
            edge_labels.append(_edge_label(0.0, reason, int((reasons == reason).sum())))
    if many:
        ax.add_collection(LineCollection(np.stack([starts, ends], axis=1), colors="black", lw=0.5, alpha=0.35,
                                         zorder=2))
    else:
        for (x0, y0), (x1, y1) in zip(starts, ends, strict=True):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                        arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 0.9, "shrinkA": 5, "shrinkB": 5,
                                    "mutation_scale": 10})
    ax.plot([t["complete_intercept"].iloc[0]], [t["complete_slope"].iloc[0]], "D", mfc="none", mec=COMPLETE,
            mew=2, ms=15, zorder=7)  # open and larger: the population cross stays visible inside it
    ax.plot([cx], [cy], "X", color="black", ms=10, mec="white", zorder=8)
    if lme4 is not None:
        ax.scatter(t["lme4_intercept"], t["lme4_slope"], s=30 if not many else 12, marker="x", color="black",
                   lw=1.2, zorder=5)
    if k <= 12:
        place_labels(ax, partial[:, 0], partial[:, 1], list(t["level"]), np.vstack([partial, starts, [[cx, cy]]]),
                     color=PARTIAL)
    at = ", ".join([*fit.formula.fixed, *([slope] if slope not in fit.formula.fixed else [])])
    ax.set(xlabel=f"intercept: {_link_label(fit.formula)} at {at} = 0", ylabel=f"slope of {slope}",
           title=f"Partial pooling of the {group} lines in {fit.name} ({k} levels)")
    arrow = (Line2D([], [], color="black", lw=0.5, alpha=0.5) if many else
             Line2D([], [], color="black", lw=0.9, marker=">", ms=5, markevery=[-1]))
    handles = [
        Line2D([], [], ls="", marker="o", mfc="white", mec=NO_POOL, mew=1.6, ms=9),
        Line2D([], [], ls="", marker="o", color=PARTIAL, ms=9),
        arrow,
        Line2D([], [], ls="", marker="X", color="black", ms=10),
        Line2D([], [], ls="", marker="D", mfc="none", mec=COMPLETE, mew=2, ms=11),
        Line2D([], [], color="black", lw=1.4),
        Line2D([], [], color="black", lw=1.4, ls="--"),
    ]
    glm = fit.formula.is_glmm
    labels = ["no pooling: the level's own " + ("GLM (maximum likelihood)" if glm else "regression"),
              "partial pooling: posterior mean",
              "each level's shrinkage, no pooling to partial pooling",
              "population mean (fixed effects)", f"complete pooling: one {'GLM' if glm else 'regression'} for all",
              "50% of the population of levels", f"{percent(ci)} of the population of levels"]
    if lme4 is not None:
        handles.append(Line2D([], [], ls="", marker="x", color="black", ms=7, mew=1.2))
        labels.append(f"{_lme4_label(lme4)}: fixed effects + conditional modes")
    how = (f"correlation {format_number(cor)}" if pair_cor_draws(fit, group, INTERCEPT, slope) is not None
           else f"no correlation in the model: ({slope} || {group})")
    title = (f"ellipses: the population of {group} levels, a normal with the posterior-mean covariance\n"
             f"(sds {format_number(sd_a)} and {format_number(sd_b)}, {how})")
    fig.legend(handles + edge_handles, labels + edge_labels, loc="outside lower center", ncols=2, fontsize=10,
               title=title, title_fontsize=10)
    return fig


def caterpillar(fit, groups: list[str] | None = None, ci: float = 0.95, inner: float = 0.5,
                max_levels: int | None = None) -> Figure:
    """Every level's effect (deviation from the fixed part) with intervals, sorted, one panel per term.

    Thick bars hold ``inner`` of the posterior, thin ones ``ci``; levels are sorted by posterior
    mean. Panels are stacked, their heights proportional to the number of levels. A term with more
    than ``max_levels`` levels (:data:`~bayeslmm.graphics.plots.MAX_LEVELS` by default) shows a
    labelled sample of them (:func:`~bayeslmm.graphics.plots.level_sample`: the highest and lowest
    and a seeded random sample), and its panel's title says which.
    """
    coefs = [(t, c) for t, c in predict.random_coefs(fit) if groups is None or t.group in groups]
    if not coefs:
        raise ValueError(f"{fit.name!r} has no random effects" + (f" for {groups}" if groups else ""))
    data = []
    for term, coef in coefs:
        levels, u = predict.group_effect_draws(fit, term.group, coef)
        means = u.mean(axis=0)
        shown, sampled = level_sample(means, EFFECT_ENDS, max_levels)
        order = shown[np.argsort(means[shown], kind="stable")]
        data.append((term.group, coef, np.asarray(levels)[order], u[:, order], sampled))
    heights = [0.24 * len(d[2]) + 0.9 + (0.3 if d[4] else 0.0) for d in data]
    fig = new_figure(9.5, sum(heights) + 1.4)
    axes = fig.subplots(len(data), 1, height_ratios=heights, squeeze=False).ravel()
    for ax, (group, coef, levels, u, sampled) in zip(axes, data, strict=True):
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
        ax.set_title(f"{group}: {what} effects ({len(levels)} levels)" if not sampled else
                     f"{group}: {what} effects\n({sampled})", fontsize=11, loc="left")
        ax.set_ylabel(group)
    axes[-1].set_xlabel(f"effect on {predict.scale_label(fit.formula)} (deviation from the fixed part)")
    fig.suptitle(f"Group effects in {fit.name}: posterior mean, {percent(inner)} and {percent(ci)} intervals")
    return fig


def variance_partition(fits, ci: float = 0.95, ncol: int = 3, lme4: dict | None = None) -> Figure:
    """Posterior of each variance's share of the total, one panel per component, one curve per fit.

    The share of a grouping factor is var_g / (sum of the random-intercept variances + the
    residual variance), computed draw by draw from the posterior sds (the intraclass
    correlation when there is one factor). Below each curve: posterior mean and ``ci`` interval,
    and lme4's share (``lme4``: ``{(model, component): share}``) as a cross on the same row.
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
            if lme4 and np.isfinite(lme4.get((name, comp), np.nan)):
                ax.plot([lme4[(name, comp)]], [yk], "x", color=FREQ, ms=7, mew=2, zorder=4)
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
    labels = list(shares)
    if lme4:
        handles.append(Line2D([], [], color=FREQ, ls="", marker="x", ms=7, mew=2))
        labels.append("lme4's share")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=10,
               title=f"model (bars: posterior mean and {percent(ci)} interval)")
    fig.suptitle("How the variance of the response splits between grouping factors and residual")
    return fig


def prior_posterior_sd(fit, priors: dict | None = None, ci: float = 0.95) -> Figure:
    """Prior against posterior of every standard deviation of a fit, one panel each (correlations:
    :func:`prior_posterior_cor`).

    Shows what the data said: a factor with few levels (8 mountain ranges) leaves a wide
    posterior for its sd, while the residual sd (hundreds of rows) is pinned down. The prior is
    drawn exactly: its density and ``ci`` interval from the scipy distribution of the prior the
    engines read (``priors``, keyed like :func:`~bayeslmm.summary.tables.sd_draws`; by default
    :func:`bayeslmm.engines.prior_density.sd_priors`), so the same prior gives the same curve and
    numbers in every panel. The panel notes the number of levels and both intervals.
    """
    from bayeslmm.engines.prior_density import sd_priors

    post = {k: v for k, v in sd_draws(fit).items() if not k[1].startswith(COR_PREFIX)}  # correlations: their own figure
    prior = priors if priors is not None else sd_priors(fit)
    keys = list(post)
    fig, axes = panel_grid(len(keys), 3, (4.3, 3.7), extra_height=1.5)
    nlev = {t.group: len(predict.group_effect_draws(fit, t.group, t.coefs[0], max_draws=1)[0])
            for t in fit.formula.random}
    for ax, key in zip(axes, keys, strict=True):
        group, term = key
        pq, qq = eti(post[key], ci), prior[key].ppf([(1 - ci) / 2, (1 + ci) / 2])
        xmax = max(np.quantile(post[key], 0.999) * 1.15, float(prior[key].ppf(0.9)))
        grid = np.linspace(0, xmax, 400)
        dp = prior[key].pdf(grid)
        dq = kde(post[key], grid, 0.0)
        ax.fill_between(grid, dp, color=NEUTRAL, alpha=0.35, lw=0)
        ax.plot(grid, dp, color=NEUTRAL, lw=1.5)
        ax.fill_between(grid, dq, color=BAYES, alpha=0.3, lw=0)
        ax.plot(grid, dq, color=BAYES, lw=2)
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, 1.05 * max(dq.max(), min(dp.max(), 3 * dq.max())))  # a prior's spike at 0 may leave the frame
        ax.set_yticks([])
        name = "residual sd" if group == RESIDUAL else f"sd of {group} {term.removeprefix(SD_PREFIX)}"
        info = f"{len(fit.data)} rows" if group == RESIDUAL else f"{nlev[group]} levels"
        ax.set_title(f"{name} ({info})", fontsize=11)
        ax.text(0.97, 0.96, f"posterior {percent(ci)}: {pq[0]:.1f} to {pq[1]:.1f}\nprior {percent(ci)}: {qq[0]:.1f} to "
                f"{qq[1]:.1f}", transform=ax.transAxes, ha="right", va="top", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set_xlabel(f"standard deviation ({predict.scale_label(fit.formula)})")
    for ax in axes[::3]:
        ax.set_ylabel("density")
    fig.legend([Line2D([], [], color=NEUTRAL, lw=6, alpha=0.5), Line2D([], [], color=BAYES, lw=6, alpha=0.5)],
               ["prior (exact density)", "posterior"], loc="outside lower center", ncols=2, fontsize=10)
    fig.suptitle(f"Standard deviations of {fit.name}: prior against posterior")
    return fig


def cor_prior_eta(fit, group: str) -> float:
    """The LKJ shape eta of ``group``'s correlation matrix, read from the fit's recorded priors.

    The fit records each prior as text (``cor(subject)``: ``LKJ(eta=1)``, eta with 4 significant
    digits); the statement is read back with :func:`bayeslmm.model.priors.parse_prior`.
    """
    for key, text in fit.priors.items():
        try:
            statement = parse_prior(f"{key} ~ {text}")
        except OptionsError:
            continue
        if statement.cls == "cor" and statement.group == group:
            return statement.value
    raise ValueError(f"{fit.name!r} records no LKJ prior for the correlations of {group!r}")


def correlations(fit) -> list[tuple[str, str, str, int]]:
    """Every correlation a fit's posterior holds: ``(group, a, b, k)`` per pair of a correlated term of
    ``k`` coefficients, in formula order and lme4's order within a term (:func:`bayeslmm.labels.cor_pairs`)."""
    return [(t.group, a, b, len(t.coefs)) for t in fit.formula.random if t.correlated for a, b in cor_pairs(t.coefs)
            if pair_cor_draws(fit, t.group, a, b) is not None]


def _lme4_row(lme4: pd.DataFrame | None, models: list[str], group: str, term: str) -> pd.Series | None:
    """lme4's row of a correlation in the side-by-side table: REML if any model of the posterior has it."""
    if lme4 is None or lme4.empty:
        return None
    rows = lme4[lme4["model"].isin(models) & (lme4["group"] == group) & (lme4["term"] == term)
                & lme4["lme4_estimate"].notna()]
    if rows.empty:
        return None
    return rows.sort_values("lme4_method", key=lambda m: m != "reml", kind="stable").iloc[0]


def prior_posterior_cor(fits, lme4: pd.DataFrame | None = None, ci: float = 0.95, ncol: int = 3) -> Figure:
    """Each correlation's posterior beside its LKJ prior, one panel per correlation of every fit.

    The prior curve is the exact marginal of one correlation of the group's LKJ(eta) matrix
    (:func:`bayeslmm.model.priors.lkj_marginal`, eta from :func:`cor_prior_eta`), the posterior a
    kernel density of the draws reflected at -1 and 1. Below the curves: the posterior mean with
    its ``ci`` equal-tailed interval, the prior's ``ci`` interval and, when ``lme4`` (rows of the
    side-by-side table: ``model, group, term, lme4_method, lme4_estimate, lme4_conf_low,
    lme4_conf_high, lme4_ci``) has the correlation, lme4's estimate with its interval (REML's
    when a model sharing the posterior has it; a fit named ``a = b`` stands for models a and b).
    """
    panels = [(f, *c) for f in as_fits(fits) for c in correlations(f)]
    if not panels:
        raise ValueError("no correlated random effects among the fits: write a term like (1 + x|group)")
    several = len({id(p[0]) for p in panels}) > 1
    ncol = max(1, min(ncol, len(panels)))
    fig, axes = panel_grid(len(panels), ncol, (max(4.6, 10.0 / ncol), 3.8), extra_height=2.0)
    grid = np.linspace(-1, 1, 801)
    mass = percent(ci)
    methods: dict[str, tuple[str, bool]] = {}
    for ax, (fit, group, a, b, k) in zip(axes, panels, strict=True):
        term, draws = cor_term(a, b), pair_cor_draws(fit, group, a, b)
        eta = cor_prior_eta(fit, group)
        prior = lkj_marginal(eta, k)
        dp, dq = prior.pdf(grid), kde(draws, grid, -1.0, 1.0)
        ax.fill_between(grid, dp, color=NEUTRAL, alpha=0.35, lw=0)
        ax.plot(grid, dp, color=NEUTRAL, lw=1.5)
        ax.fill_between(grid, dq, color=BAYES, alpha=0.3, lw=0)
        ax.plot(grid, dq, color=BAYES, lw=2)
        top = max(dp.max(), dq.max())
        rows = [(NEUTRAL, prior.mean(), prior.ppf([(1 - ci) / 2, (1 + ci) / 2])),
                (BAYES, draws.mean(), eti(draws, ci))]
        row = _lme4_row(lme4, fit.name.split(" = "), group, term)
        if row is not None:
            method, kind = str(row["lme4_method"]), str(row.get("lme4_ci", "") or "")
            has_ci = bool(np.isfinite(row["lme4_conf_low"]) and np.isfinite(row["lme4_conf_high"]))
            seen_kind, seen_ci = methods.get(method, ("", False))
            methods[method] = (seen_kind or kind, seen_ci or has_ci)  # for the legend
            rows.append((METHODS.get(method, (FREQ,))[0], row["lme4_estimate"],
                         (row["lme4_conf_low"], row["lme4_conf_high"])))
        for i, (col, centre, (lo, hi)) in enumerate(rows):
            yk = -top * 0.08 * (i + 1)
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [yk, yk], color=col, lw=2.2, solid_capstyle="butt")
            ax.plot([centre], [yk], "o", color=col, ms=5)
        ax.set_ylim(-top * 0.08 * (len(rows) + 1), top * 1.45)  # headroom for the numbers
        ax.set_xlim(-1, 1)
        ax.axhline(0, color=NEUTRAL, lw=0.8)
        ax.axvline(0, color=NEUTRAL, lw=0.8, ls=":")
        ax.set_yticks([])
        nlev = len(predict.group_effect_draws(fit, group, a, max_draws=1)[0])
        ax.set_title(f"{group}: correlation of the {a} and {b} effects" + (f"\nin {fit.name}" if several else ""),
                     fontsize=11)
        lo, hi = (float(v) for v in eti(draws, ci))
        text = (f"LKJ(eta = {format_number(eta)}), {k} x {k}; {nlev} levels\n"
                f"posterior {format_number(draws.mean())} [{format_number(lo)}, {format_number(hi)}]")
        if row is not None:
            text += (f"\nlme4 {str(row['lme4_method']).upper()} {format_number(row['lme4_estimate'])}"
                     + (f" [{format_number(row['lme4_conf_low'])}, {format_number(row['lme4_conf_high'])}]"
                        if np.isfinite(row["lme4_conf_low"]) else ""))
        ax.text(0.5, 0.98, text, transform=ax.transAxes, ha="center", va="top", fontsize=8.5,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
        ax.set_xlabel("correlation")
    for ax in axes[:: min(ncol, len(panels))]:
        ax.set_ylabel("density")
    handles = [Line2D([], [], color=NEUTRAL, lw=6, alpha=0.5), Line2D([], [], color=BAYES, lw=6, alpha=0.5),
               Line2D([], [], color=NEUTRAL, lw=2.2, marker="o", ms=5),
               Line2D([], [], color=BAYES, lw=2.2, marker="o", ms=5)]
    labels = ["prior: one correlation of an LKJ(eta) matrix, Beta(eta - 1 + k/2, same) on (-1, 1)",
              "posterior density", f"prior: mean and {mass} interval",
              f"posterior: mean and {mass} interval (equal-tailed)"]
    for method, (kind, has_ci) in methods.items():
        handles.append(Line2D([], [], color=METHODS.get(method, (FREQ,))[0], lw=2.2 if has_ci else 0, marker="o", ms=5))
        labels.append(f"lme4 {method.upper()}: estimate" + (f" and {mass} {kind + ' ' if kind else ''}interval"
                                                             if has_ci else " (no interval)"))
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9.5)
    fig.suptitle(f"Correlations of the group effects: prior against posterior ({mass} intervals)")
    return fig
