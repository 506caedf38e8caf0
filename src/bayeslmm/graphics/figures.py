"""Which figures a report shows, drawn with the plotting modules into ``figures/``.

The report keeps to one figure per question. Per-model checks (residuals against fitted values,
QQ plot, posterior predictive check) are one grid figure per kind with a panel for every
distinct posterior, so models can be compared at a glance without a dozen near-identical
images; the partial-pooling figures (shrinkage, group effects, prior against posterior) are drawn
for one mixed model, :func:`main_model`, the one with the most detailed random structure.
Correlated random effects ``(1 + x|g)`` get theirs in every distinct posterior that has them:
the 2-D shrinkage plot per slope and one figure of every correlation's prior and posterior.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bayeslmm.engines.marginal import Unsupported
from bayeslmm.engines.prior_density import sd_priors
from bayeslmm.errors import DataError
from bayeslmm.graphics import plots, plots_checks, plots_glmm, plots_pooling, plots_priors
from bayeslmm.graphics.plots import levels_of
from bayeslmm.graphics.render import Renderer
from bayeslmm.intervals import percent
from bayeslmm.labels import INTERCEPT
from bayeslmm.model.formula import materialize
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.reporting.document import Image
from bayeslmm.store import Store, data_hash
from bayeslmm.summary import pooling, predict, residuals
from bayeslmm.summary.prior_predictive import prior_predictive
from bayeslmm.summary.sidebyside import with_lme4_intervals
from bayeslmm.summary.tables import fixed_draws

#: Most levels a grouping factor may have to be drawn as colours (the palette's size) or facets.
MAX_COLOURS, MAX_FACETS = len(plots.PALETTE), 30


def focus_term(result) -> str | None:
    """The numeric predictor the study is about: the first numeric fixed term of its first model."""
    for spec in result.study.models:
        for term in spec.formula.fixed:
            if term in result.data.columns and pd.api.types.is_numeric_dtype(result.data[term]):
                return term
    return None


def focus_group(result) -> str | None:
    """The first grouping factor used by any model of the study."""
    for spec in result.study.models:
        if spec.formula.random:
            return spec.formula.random[0].group
    return None


def distinct_fits(result) -> list:
    """One fit per distinct posterior, in study order; a fit shared by several models is named
    after all of them (``mixed.lmer2 = full.lmer``: the same formula, data and priors)."""
    names: dict[str, list[str]] = {}
    first: dict[str, object] = {}
    for spec in result.study.models:
        fit = result.fits.get(spec.name)
        if fit is None:
            continue
        names.setdefault(fit.key, []).append(spec.name)
        first.setdefault(fit.key, fit)
    return [dataclasses.replace(first[k], name=" = ".join(v)) for k, v in names.items()]


def main_model(result, x: str | None = None) -> str | None:
    """The mixed model the partial-pooling figures are drawn for.

    Among models with random effects (and ``x`` as a fixed term, when given): the one whose
    grouping factors have the most levels in all (the most detailed random structure, e.g.
    sites nested in ranges rather than ranges alone or three crossed site labels; a factor with a
    level per row, an observation-level effect, does not count); ties go to the model listed first.
    """
    best, score = None, -1
    for spec in result.study.models:
        f = spec.formula
        if not f.random or spec.name not in result.fits or (x is not None and x not in f.fixed):
            continue
        fit = result.fits[spec.name]
        levels = [_n_levels(fit, r) for r in f.random]
        n = sum(k for k in levels if k < len(fit.data))  # an observation-level effect (1|obs) adds no structure
        if n > score:
            best, score = spec.name, n
    if best is None and x is not None:
        return main_model(result)
    return best


def _pooled_fit(result, x: str, like=None):
    """The simplest model with ``x`` and an intercept and no random terms (of the same response and
    family as the formula ``like``, the first model's by default)."""
    like = like if like is not None else result.study.models[0].formula
    for spec in result.study.models:
        f = spec.formula
        if (not f.random and f.fixed == (x,) and f.intercept and spec.name in result.fits
                and (f.response, f.family) == (like.response, like.family)):
            return result.fits[spec.name]
    return None


def _pooled_draws(result, x: str) -> dict[str, np.ndarray] | None:
    fit = _pooled_fit(result, x)
    if fit is None:
        return None
    return {INTERCEPT: fixed_draws(fit, INTERCEPT), x: fixed_draws(fit, x)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _nesting(result, group: str) -> tuple[str, str | None]:
    """Facet and colour columns for the fitted lines of ``group``: (range, site) for a nested factor."""
    cols = tuple(result.study.nest.get(group, ())) or tuple(group.split(":"))
    if len(cols) >= 2 and all(c in result.data.columns for c in cols[:2]):
        return cols[0], cols[-1]
    return group, None


def _lme4_rows(tidy: pd.DataFrame, side: pd.DataFrame | None) -> pd.DataFrame:
    """lme4's estimates and intervals in the side-by-side table's columns: ``side`` itself (profile
    intervals), else ``tidy``'s REML, ML and glmer rows (estimates only: broom.mixed gives their ran_pars no
    interval)."""
    if side is not None:
        return side
    rows = tidy[tidy["method"].isin(["reml", "ml", "laplace", "agq"])]
    return rows.rename(columns={"method": "lme4_method", "estimate": "lme4_estimate", "conf_low": "lme4_conf_low",
                                "conf_high": "lme4_conf_high"}).assign(lme4_ci="")


def make_figures(result, root: Path, tidy: pd.DataFrame, ci: float = 0.95,
                 side: pd.DataFrame | None = None, skipped: list[str] | None = None,
                 echo: Callable[[str], None] | None = None, parts: pd.DataFrame | None = None,
                 workers: int | None = None) -> list[Image]:
    """Draw every figure of the report into ``root/figures`` and return them in reading order.

    ``ci`` is the mass of every interval and band drawn (``tidy``'s intervals are drawn as they are:
    the same mass). ``side``, the side-by-side table, gives lme4's profile intervals of the
    correlations; without it their lme4 estimates come from ``tidy``. Binomial and Poisson models
    get their own checks (:mod:`bayeslmm.graphics.plots_glmm`) and the data, lines and bands on
    the response scale; a figure that does not apply to them is left out, and ``skipped`` (a list,
    when given) receives one line per figure left out saying why. ``echo`` (optional) is told
    each figure's name as it is drawn (the progress of a long report); ``parts``, the variance
    partition table, adds lme4's shares to the variance-partition figure. ``workers`` save the PNG
    files while the next figure is drawn (:class:`~bayeslmm.graphics.render.Renderer`; one per core
    by default).
    """
    with Renderer(workers) as render:
        return _draw(result, root, tidy, ci, side, skipped, echo, parts, render)


def stored_figures(store: Store, inputs: tuple, root: Path, skipped: list[str], draw: Callable[[], list[Image]],
                   echo: Callable[[str], None] | None = None) -> list[Image]:
    """The figures ``draw()`` makes in ``root/figures``, or, where ``store`` kept the set drawn from the same
    ``inputs`` (everything the figures are drawn from), those files and captions again.

    ``skipped`` receives the reasons for figures left out, as :func:`make_figures` gives them.
    """
    drawn = []

    def compute() -> tuple[list[Image], list[str], dict[str, bytes]]:
        images = draw()
        drawn.append(True)
        return images, list(skipped), {im.path: (root / im.path).read_bytes() for im in images}

    images, reasons, files = store.get("figures", inputs, compute)
    if not drawn:
        if echo is not None:
            echo(f"  figures: the {len(images)} drawn by the last run from the same fits and settings")
        (root / "figures").mkdir(parents=True, exist_ok=True)
        for path, content in files.items():
            (root / path).write_bytes(content)
        skipped.extend(r for r in reasons if r not in skipped)
    return images


def figure_inputs(result, ci: float, builtin: bool) -> tuple:
    """What a report's figures are drawn from: the study, its data, every posterior (by content hash; lme4's
    side follows from the formulas and data), the interval mass, whether the data is the built-in simulator's,
    and matplotlib's version (:func:`stored_figures`' key, with bayeslmm's code)."""
    import matplotlib

    study = dataclasses.replace(result.study, path=None)  # where the study file lies draws nothing
    return (repr(study), data_hash(result.data), tuple((n, f.key) for n, f in result.fits.items()),
            float(ci), builtin, matplotlib.__version__)


def _draw(result, root: Path, tidy: pd.DataFrame, ci: float, side: pd.DataFrame | None, skipped: list[str] | None,
          echo: Callable[[str], None] | None, parts: pd.DataFrame | None,
          render: Callable[[Figure, Path], None]) -> list[Image]:
    df, figures = result.data, []
    mass = percent(ci)
    for spec in result.study.models:  # the columns of R expressions (log(y), factor(x)) the figures name
        df = materialize(spec.formula, df)
    (root / "figures").mkdir(parents=True, exist_ok=True)

    def save(make: Callable[[], Figure], name: str, caption: str) -> None:
        if echo is not None:
            echo(f"  figure {len(figures) + 1}: {_safe(name)}")
        render(make(), root / "figures" / f"{_safe(name)}.png")
        figures.append(Image(f"figures/{_safe(name)}.png", caption))

    def skip(reason: str) -> None:
        if skipped is not None and reason not in skipped:
            skipped.append(reason)

    order = [m.name for m in result.study.models]
    first = result.study.models[0].formula
    response = first.response
    binary = first.family == "binomial" and not first.cbind  # yes/no: 0s and 1s
    x, group = focus_term(result), focus_group(result)
    simple_group = group is not None and ":" not in group
    n_levels = len(levels_of(df, group)) if simple_group else 0
    fits = distinct_fits(result)
    main = main_model(result, x)
    main_fit = result.fits[main] if main else None
    # how captions name it: a one-model report ('bayeslmm fit') has no model names to tell apart
    called = "the model" if len(result.study.models) == 1 else main

    # The data (a binomial or Poisson response on its response scale: proportions, 0/1, rates).
    shown = response
    if first.is_glmm:
        values, shown = predict.response_scale(first, df)
        df = df.assign(**{shown: values})
    integers = first.is_glmm and not first.offsets and np.all(np.mod(df[shown].dropna(), 1) == 0)
    bins = np.arange(-0.5, df[shown].max() + 1) if integers and df[shown].max() <= 60 else 30
    save(lambda: plots.response_histogram(df, shown, bins), "response_histogram",
         f"Distribution of {shown}: the response of {'every model' if len(order) > 1 else 'the model'}.")
    if x is not None:
        save(lambda: plots.pooled_regression(df, x, shown, _pooled_draws(result, x), ci, first.family),
             "pooled_regression",
             f"{shown} against {x} with the pooled regression (posterior mean and {mass} band"
             + ("" if not first.is_glmm else ", on the response scale") + "): every observation treated as "
             "independent.")
    if simple_group:
        if binary:
            skip(f"No boxplot or scatter of {response} by {group}: a yes/no response is 0 or 1 in every row; "
                 f"the per-{group} predictive check shows each {group}'s proportion.")
        else:
            save(lambda: plots.group_boxplot(df, shown, group), f"boxplot_{group}",
                 f"{shown} by {group}: the levels differ in their typical {shown}."
                 + _sampled(n_levels, plots.BOX_ENDS, group))
        if x is not None and n_levels <= MAX_COLOURS and not binary:
            save(lambda: plots.group_scatter(df, x, shown, group), f"scatter_{group}",
                 f"{shown} against {x}, coloured by {group}: each {group} occupies its own region, so "
                 f"a pooled slope mixes differences between {group}s with the effect of {x}.")
        if x is not None and n_levels <= MAX_FACETS and first.is_glmm:
            skip(f"No separate regression per {group} (no pooling): its least-squares lines would be on the "
                 f"scale of {shown}, not on the model's ({predict.scale_label(first)}).")
        elif x is not None and n_levels <= MAX_FACETS:
            save(lambda: plots.group_facets(df, x, response, group), f"facets_{group}",
                 f"A separate regression in each {group} (no pooling): within each, the slope of {x}.")

    # What the models say about the question.
    pooled = _pooled_fit(result, x, main_fit.formula if main_fit is not None else None) if x is not None else None
    if x is not None and main_fit is not None and tuple(main_fit.formula.fixed) == (x,):
        lines = [f for f in (pooled, main_fit) if f is not None]
        save(lambda: plots_checks.population_lines(lines, df, x, ci), f"population_lines_{x}",
             f"The slope of {x} without groups and in the population line of {called} (fixed effects only, for an "
             f"average group): posterior means and {mass} credible bands"
             + (f", on the response scale ({predict.response_scale(main_fit.formula, df)[1]}); the mixed model's "
                "line is a typical group's (every group effect 0), which on this scale is not the average over "
                "groups." if main_fit.formula.is_glmm else "."))
    # lme4's interval of each number is the side-by-side table's (profile where it exists), as in the tables
    shown = with_lme4_intervals(tidy, side) if side is not None else tidy
    lme4_ci = (" (lme4's: the profile interval where one exists, as in the tables; a model's REML and ML "
               "estimates share it, as R's confint profiles the ML deviance)") if side is not None else ""
    if x is not None and (tidy["term"] == x).any():
        save(lambda: plots.forest(shown, x, models=order, ci=ci), f"forest_{x}",
             f"The estimate of {x} in every model, with its {mass} interval{lme4_ci}: the answer to the study's "
             "question.")
    if (tidy["effect"] == "ran_pars").any():
        scales = {predict.scale_label(m.formula) for m in result.study.models}
        save(lambda: plots.forest_sd(shown, models=order, response=scales.pop() if len(scales) == 1 else None, ci=ci),
             "forest_sd",
             f"Standard deviations of the group effects and of the residual in every model ({mass} intervals).")

    # Checks of every distinct posterior, one grid figure per kind.
    gaussian = [f for f in fits if not f.formula.is_glmm]
    if gaussian:
        same_rows = all(len(f.data) == len(df) for f in gaussian)  # no rows dropped for missing values
        colour_by = group if simple_group and n_levels <= MAX_COLOURS and same_rows else None
        save(lambda: plots_checks.residuals_vs_fitted(gaussian, colour_by=colour_by, data=df), "residuals_fitted",
             "Residuals against posterior-mean fitted values for every model (lme4's plot(model))"
             + (f", coloured by {group}: same-coloured bands mean the model ignores {group}." if colour_by else "."))
        save(lambda: plots_checks.qq_residuals(gaussian), "qq_residuals",
             "Normal QQ plots of every model's residuals (qqnorm(resid(model))): points on the line mean "
             "normal residuals.")
        save(lambda: plots_checks.ppc(gaussian), "ppc",
             f"Posterior predictive checks: the observed distribution of {gaussian[0].formula.response} (black) "
             "against 50 data sets replicated from each posterior; the observed curve should look like one of the "
             "replicates.")
    glmm_checks(result, fits, df, group, ci, save, skip)

    # Partial pooling in the main mixed model.
    if main_fit is not None:
        if x is not None and x in main_fit.formula.fixed:
            finest = max(main_fit.formula.random, key=lambda t: _n_levels(main_fit, t))
            facet, colour_by = _nesting(result, finest.group)
            if facet in df.columns and len(levels_of(df, facet)) <= MAX_FACETS and (
                    colour_by is None or len(levels_of(df, colour_by)) <= MAX_COLOURS):
                save(lambda: plots_checks.group_lines(main_fit, df, x, facet, colour_by, ci), f"fitted_lines_{main}",
                     f"The fitted line of {called} for each {colour_by or facet} (posterior mean of the conditional "
                     f"mean, {mass} band) over the observations"
                     + (": the tutorial's last figure." if result.study.name == "dragons" else "."))
        glm = main_fit.formula.is_glmm
        lme4 = _glmer_rows(tidy, main) if glm else None
        for term in main_fit.formula.random:
            if not (term.intercept and main_fit.formula.intercept) or (glm and not _glm_pooling(main_fit, term, skip)):
                continue
            _save_pooling(lambda g=term.group: plots_pooling.shrinkage(main_fit, g, ci, lme4=lme4),
                          f"shrinkage_{term.group}",
                          f"Shrinkage in {called}: each {term.group}'s own intercept (no pooling) moves towards what "
                          "the model expects of it (the population, or for a nested level its parent) in the mixed "
                          f"model (partial pooling, with its {mass} interval); levels with little data or far from the "
                          "rest move most." + _sampled(_n_levels(main_fit, term), plots_pooling.SHRUNK_ENDS, term.group)
                          + (_GLM_POOLING.format(scale=predict.scale_label(main_fit.formula),
                                                                  what="intercept") if glm else ""),
                          save, skip)
        many = [t for t in main_fit.formula.random if _n_levels(main_fit, t) > plots.MAX_LEVELS]
        save(lambda: plots_pooling.caterpillar(main_fit, ci=ci), f"caterpillar_{main}",
             f"Every group effect of {called}, sorted, with 50% and {mass} intervals."
             + "".join(_sampled(_n_levels(main_fit, t), plots_pooling.EFFECT_ENDS, t.group,
                                " (every level's effect is in tidy.csv)")
                       for t in dict((t.group, t) for t in many).values()))
    for fit in fits:  # correlated terms with an intercept, (1 + x|g): one figure per numeric slope
        for term in fit.formula.random:
            # a factor's columns ((1 + f|g): fB, fC) are contrasts between levels, not slopes of a line
            slopes = [s for s in term.slopes
                      if term.columns is None or any(c.expr == s and not c.level for c in term.columns)]
            glm = fit.formula.is_glmm
            if (term.correlated and term.intercept and slopes and fit.formula.intercept
                    and (not glm or _glm_pooling(fit, term, skip))):
                lme4 = _glmer_rows(tidy, fit.name.split(" = ")[0]) if glm else None
                for slope in slopes:
                    name = f"shrinkage_2d_{fit.name.split(' ')[0]}_{term.group}"
                    _save_pooling(lambda f=fit, t=term, s=slope, r=lme4: plots_pooling.shrinkage_2d(
                                      f, t.group, s, ci, r),
                                  name + (f"_{slope}" if len(slopes) > 1 else ""),
                                  f"Intercept and slope of {slope} of each {term.group} in {fit.name}: own regressions "
                                  "(no pooling, open circles) pulled towards the population (partial pooling, filled). "
                                  f"The ellipses hold 50% and {mass} of the population of {term.group}s, a normal with "
                                  "the posterior mean of the covariance matrix of the two effects, tilted by their "
                                  "correlation." + (_GLM_POOLING.format(scale=predict.scale_label(fit.formula),
                                                                        what="line") if glm else ""),
                                  save, skip)
    mixed = [f for f in fits if f.formula.is_mixed]
    if mixed:
        latent = ("; for binomial and count models the residual is the latent-scale variance, pi^2/3 for the "
                  "logit link and ln(1 + 1/mean count) for the log link (+ 1/theta for the negative binomial; "
                  "Nakagawa et al. 2017)"
                  if any(f.formula.is_glmm for f in mixed) else "")
        shares = (dict(zip(zip(parts["model"], parts["group"], strict=True), parts["lme4_share"], strict=True))
                  if parts is not None and not parts.empty else None)
        save(lambda: plots_pooling.variance_partition(mixed, ci, lme4=shares), "variance_partition",
             "Posterior share of the total variance for each grouping factor and the residual, in every "
             f"mixed model (drawn from the posterior sds; bars: posterior mean and {mass} interval"
             + ("; crosses: lme4's share" if shares else "") + f"){latent}.")
    if main_fit is not None:
        try:
            prior = sd_priors(main_fit)
        except Unsupported as exc:
            prior = None
            skip(f"No prior-against-posterior figure of the sds of {called}: {exc}.")
        if prior is not None:
            save(lambda: plots_pooling.prior_posterior_sd(main_fit, prior, ci), "prior_posterior_sd",
                 f"Prior (as fitted: its exact density and {mass} interval) against posterior of every standard "
                 f"deviation in {called}, with both {mass} intervals: few levels leave a wide posterior.")
    replicated = {}
    for fit in fits:
        try:
            replicated[fit.name] = prior_predictive(fit)
        except Unsupported as exc:
            skip(f"No prior predictive check of {fit.name}: {exc}.")
    if replicated:
        bars = ", ".join(percent(m) for m in plots_priors.masses(ci))
        save(lambda: plots_priors.prior_predictive_check([f for f in fits if f.name in replicated], ci,
                                                         draws=replicated),
             "prior_predictive",
             "Prior predictive check of every model: data sets replicated from the priors alone (parameters from "
             "the priors as fitted, group effects from their normal given those sds, the response from the family) "
             f"against the observed response; bars: the replicates' {bars} intervals over the observed range. A "
             "prior predictive much wider than the data is what weakly informative priors give; one that misses the "
             "data is a prior in conflict with it.")
    correlated = [f for f in fits if plots_pooling.correlations(f)]
    if correlated:
        save(lambda: plots_pooling.prior_posterior_cor(correlated, _lme4_rows(tidy, side), ci), "prior_posterior_cor",
             "Each correlation of the group effects: its posterior beside its LKJ prior (the marginal of one "
             f"correlation), with the posterior mean and {mass} interval, and lme4's estimate with its {mass} "
             "profile-likelihood interval where lme4 has one.")
    return figures


def _n_levels(fit, term) -> int:
    """How many levels ``term``'s grouping factor has in ``fit``'s data."""
    return fit.data.groupby(list(term.group_columns), observed=True).ngroups


def _sampled(n: int, ends: tuple[str, str], group: str = "", where: str = "") -> str:
    """What a caption adds when a per-level figure draws a sample of ``n`` levels of ``group``
    (:func:`~bayeslmm.graphics.plots.level_sample`), and ``where`` the rest are; ``""`` when it draws them all."""
    note = plots.sample_note(n, ends)
    return f" Of {group or 'the levels'}, it draws {note}{where}." if note else ""


#: What a binomial or Poisson model's shrinkage figure adds to its caption.
_GLM_POOLING = (" On the link scale ({scale}): no pooling is each level's own maximum-likelihood {what} (a GLM, the "
                "other fixed effects shared), complete pooling the GLM without groups; a level whose own estimate is "
                "infinite (all successes, all failures, all zero counts, or separation: open triangle) or finite but "
                "far out (near separation: filled triangle) is drawn at the axis edge, and x marks lme4's partial "
                "pooling (glmer's fixed effects plus conditional modes).")


def _glmer_rows(tidy: pd.DataFrame, model: str) -> pd.DataFrame | None:
    """The tidy rows of glmer's fit (Laplace or AGQ) of ``model``, or None without any."""
    rows = tidy[(tidy["model"] == model) & tidy["method"].isin(["laplace", "agq"])]
    return rows if len(rows) else None


def _glm_pooling(fit, term, skip: Callable[[str], None]) -> bool:
    """Whether a binomial or Poisson model's shrinkage figures can be drawn for ``term``'s group; if not, say why."""
    if fit.formula.family not in pooling.FAMILIES:
        skip(f"No shrinkage plot of {fit.name}: no pooling by maximum likelihood is fitted here for the "
             f"{fit.formula.family} family.")
        return False
    levels = _n_levels(fit, term)
    if levels >= len(fit.data):
        skip(f"No shrinkage plot of {term.group} in {fit.name}: a level per row (an observation-level effect) has "
             "no estimate of its own to shrink.")
        return False
    return True


def _save_pooling(make: Callable[[], Figure], name: str, caption: str,
                  save: Callable[[Callable[[], Figure], str, str], None], skip: Callable[[str], None]) -> None:
    """``save`` a shrinkage figure; if its no-pooling fit has no finite answer (a shared covariate separates a
    binomial or Poisson response), ``skip`` it and say so."""
    try:
        save(make, name, caption)
    except DataError as exc:
        skip(f"No {name.replace('_', ' ')} figure: {exc}.")


def glmm_checks(result, fits: list, df: pd.DataFrame, group: str | None, ci: float,
                save: Callable[[Callable[[], Figure], str, str], None], skip: Callable[[str], None]) -> None:
    """The checks of the binomial and Poisson models among ``fits`` (one grid figure per kind).

    Simulated-quantile residuals (QQ plot against the uniform, residuals against predicted), the
    count check for counts and successes out of trials, and the per-group check for ``group``
    (the study's first grouping factor; a column of each fit's data or of ``df``, same rows).
    The residuals are computed once per posterior, on the study's own fit object (which keeps them).
    """
    glmm = [f for f in fits if f.formula.is_glmm]
    if not glmm:
        return
    if len(glmm) == len(fits):
        skip("No residuals against fitted values, normal QQ plot or density check (Gaussian checks): for binomial "
             "and count models the simulated-quantile residuals and the discrete predictive checks take their "
             "place.")
    first = {}
    for spec in result.study.models:
        fit = result.fits.get(spec.name)
        if fit is not None:
            first.setdefault(fit.key, fit)
    res = [dataclasses.replace(residuals.simulate_residuals(first[f.key]), name=f.name) for f in glmm]
    save(lambda: plots_glmm.qq_uniform(res, ci=ci), "qq_uniform",
         f"Simulated-quantile residuals (DHARMa) of every binomial and count model: where each observation falls "
         f"among {residuals.N_SIM} replicates from the posterior (group effects drawn anew), against the uniform "
         "they follow if the model is right, with the dispersion, zero-inflation and uniformity tests (red: p < "
         f"0.05; the band holds {percent(ci)} of the replicates' own residuals point by point: the spread of a right "
         "model).")
    save(lambda: plots_glmm.residuals_predicted(res), "residuals_predicted",
         "Simulated-quantile residuals against the rank of each row's prediction for a typical group: the binned "
         "25%, 50% and 75% quantiles of the residuals should lie flat on the dashed lines (red: not flat, p < 0.05).")
    counts = [r for f, r in zip(glmm, res, strict=True) if f.formula.family in COUNT_FAMILIES or f.formula.cbind]
    if counts:
        save(lambda: plots_glmm.ppc_counts(counts, ci), "ppc_counts",
             "Posterior predictive check of the counts: how many rows have each value (bars) against "
             f"{residuals.N_SIM} data sets replicated from the posterior (mean and {percent(ci)} interval; red bars: "
             "outside).")
    if group is None:
        return
    cols = group.split(":")
    have = [(f, r) for f, r in zip(glmm, res, strict=True)
            if all(c in f.data.columns for c in cols) or (len(f.data) == len(df) and all(c in df for c in cols))]
    if have:
        save(lambda: plots_glmm.ppc_groups([f for f, _ in have], group, df, ci, res=[r for _, r in have]),
             f"ppc_{_safe(group)}",
             f"Posterior predictive check per {group}: each level's observed proportion of successes (binomial) or "
             f"mean count per row (Poisson) against the {percent(ci)} interval of {residuals.N_SIM} replicates given "
             "the fitted group effects; a model that ignores the groups misses many of them, a mixed model should "
             f"cover about {percent(ci)}.")
