"""Write a report folder: CSV tables, exported tables, figures, report.md and report.html."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bayeslmm.graphics.figures import figure_inputs, focus_term, make_figures, stored_figures
from bayeslmm.lme4.frequentist import METHOD_LABELS as _LME4_LABEL
from bayeslmm.notices import collected
from bayeslmm.numbers import format_interval, format_number
from bayeslmm.reporting.conclusions import conclusions_section
from bayeslmm.reporting.document import Block, Bullets, Code, Heading, Para, Table, to_html, to_markdown
from bayeslmm.reporting.export import SUFFIX, compact_ratios, compact_side, render
from bayeslmm.store import Store
from bayeslmm.summary import analysis, residuals
from bayeslmm.summary.compare import pareto_warnings
from bayeslmm.summary.predict import scale_label
from bayeslmm.summary.r2 import r2_table
from bayeslmm.summary.sidebyside import RATIO_NAMES, runaway_notes, with_lme4_intervals
from bayeslmm.summary.tables import diagnostics

if TYPE_CHECKING:
    from bayeslmm.runner import Fitted


#: What the report says of the built-in data.
BUILTIN_NOTE = ("**Simulated data.** These dragons come from bayeslmm's seeded simulator (`builtin:dragons`), "
                "not from the tutorial. Because the truth is known, the tables show it in a *truth* column beside "
                "each estimate it applies to.")
#: What it adds for the tutorial's own response.
BUILTIN_SCORE_NOTE = (" Ranges differ in both body length and test score, and within a range body length has no "
                      "effect on the score at all. The numbers differ from the tutorial's (its pooled slope of body "
                      "length is 9.0 on the real data); the story is the same. Run with "
                      "`--data ../shared/data/dragons.RData` for the tutorial's own data.")


def with_truth(side: pd.DataFrame, study) -> pd.DataFrame:
    """The side-by-side table with the simulator's truth (:func:`bayeslmm.model.simulate.truth_of`) where known."""
    from bayeslmm.model.simulate import truth_of

    truth = {(spec.name, *k): v for spec in study.models for k, v in truth_of(spec.formula).items()}
    group = side["group"].fillna("").astype(str)
    values = [truth.get((m, e, g, t), np.nan) for m, e, g, t in zip(side["model"], side["effect"], group,
                                                                     side["term"], strict=True)]
    return side.assign(truth=values)


def summary_section(study, side: pd.DataFrame, term: str, p_pos: dict[str, float], ci: float = 0.95) -> list[Block]:
    """The study's headline: the focus term in every model, lme4 beside the posterior, P(> 0)."""
    rows = []
    for spec in study.models:
        r = side[(side["model"] == spec.name) & (side["effect"] == "fixed") & (side["term"] == term)]
        if r.empty:
            continue
        r = r.iloc[0]
        rows.append({"model": spec.name, "lme4 estimate": format_number(r["lme4_estimate"]),
                     f"lme4 {ci:.0%} CI": format_interval(r["lme4_conf_low"], r["lme4_conf_high"]),
                     "posterior mean": format_number(r["post_mean"]),
                     f"{ci:.0%} interval": format_interval(r["post_conf_low"], r["post_conf_high"]),
                     f"P({term} > 0)": format_number(p_pos.get(spec.name, np.nan), 3)})
    if not rows:
        return []
    kinds = ("profile likelihood for linear mixed models, Wald for lm, glm and glmer"
             if any(s.formula.is_glmm for s in study.models) else "profile likelihood for mixed models, Wald for lm")
    where = "across the models" if len(rows) > 1 else f"in {rows[0]['model']}"
    return [Heading(f"Summary: {term} {where}", 2),
            Para(f"lme4's estimate with its {ci:.0%} CI ({kinds}) beside "
                 f"the posterior mean with its {ci:.0%} equal-tailed interval, and the "
                 f"posterior probability that the effect of `{term}` is positive: the Bayesian answer to the "
                 "question a p-value is usually asked to settle."),
            Table(pd.DataFrame(rows))]


def model_section(spec, fit, side: pd.DataFrame, parts: pd.DataFrame, diag: dict, freq,
                  ci: float = 0.95, ratios: pd.DataFrame | None = None, r2: pd.DataFrame | None = None) -> list[Block]:
    """Question, formula, side-by-side table, variance partition, diagnostics and priors of one model; for a
    binomial or Poisson model also its odds or rate ratios (``ratios``) and the tests of its residuals."""
    method = analysis.lme4_method(spec)
    blocks: list[Block] = [Heading(spec.name, 3)]
    if spec.question:
        blocks.append(Para(f"**Question.** {spec.question}"))
    caption = (f"lme4 ({analysis.lme4_label(spec)}) beside the posterior (mean, median, sd, {ci:.0%} equal-tailed "
               "interval)")
    if spec.formula.is_glmm:
        caption += f", on the link scale ({scale_label(spec.formula)})"
    blocks += [Code(spec.formula.text), Table(compact_side(side[side["model"] == spec.name]), caption)]
    mine = ratios[ratios["model"] == spec.name] if ratios is not None and not ratios.empty else None
    if mine is not None and not mine.empty:
        ratio, base = RATIO_NAMES[spec.formula.family]
        blocks.append(Table(compact_ratios(mine), f"The fixed effects as {ratio}s: exp of lme4's estimate and interval "
                            f"beside exp of the posterior draws (mean, median, {ci:.0%} interval); the intercept's is "
                            f"the {base} at the reference levels. Last columns: the prediction on the response scale "
                            "for a typical group (every group effect 0)."))
    if spec.formula.is_glmm:
        blocks.append(Para(residual_tests_text(fit)))
    if method == "agq":
        blocks.append(Para(agq_text(spec)))
    if method in ("reml", "ml"):
        f = freq[(spec.name, method)]
        dfs = ", ".join(f"{t}: df {format_number(f.df[t])}, p {format_number(f.p[t], 3)}"
                        for t in f.fixef.index if np.isfinite(f.df[t]))
        if dfs:
            blocks.append(Para(f"lmerTest's Satterthwaite tests ({_LME4_LABEL[method]} fit): {dfs}."))
    mine = parts[parts["model"] == spec.name] if not parts.empty else parts
    if not mine.empty:
        share = "; ".join(
            f"{r['group']}: lme4 {format_number(100 * r['lme4_share'], 3)}%, "
            f"posterior {format_number(100 * r['post_mean'], 3)}% "
            f"{format_interval(100 * r['post_conf_low'], 100 * r['post_conf_high'], 3)}%"
            for _, r in mine.iterrows() if r["group"] != "Residual")
        blocks.append(Para(f"**Share of variance** (intercept variances over their sum with the residual's): {share}."))
    if r2 is not None and not r2.empty and spec.name in set(r2["model"]):
        blocks.append(Para(r2_text(r2[r2["model"] == spec.name], spec.formula.is_glmm, ci)))
    how = "reused from the cache" if fit.cached else f"fitted in {fit.seconds:.1f} s"
    blocks.append(Para(
        f"Sampler ({fit.engine}): {diag['chains']} chains x {diag['draws']} draws ({how}); divergences "
        f"{diag['divergences']}; max r_hat {format_number(diag['max_r_hat'])}; "
        f"min bulk ESS {format_number(np.round(diag['min_ess_bulk']))}; "
        f"min tail ESS {format_number(np.round(diag['min_ess_tail']))}."))
    if stopping_text(fit.options):  # a large design's plan (engines.marginal.plan): this run's own settings
        blocks.append(Para(stopping_text(fit.options)))
    blocks.append(Para(priors_text(fit)))  # Bambi's engine drops (x|g)'s correlations: no LKJ prior there
    singular = freq[(spec.name, method)].singular_note() if (spec.name, method) in freq else None
    for note in (*fit.notes, *fit.sampler_notes, *([f"lme4: {singular}"] if singular else [])):
        blocks.append(Para(f"**Warning.** {note}"))
    return blocks


def stopping_text(options) -> str | None:
    """Where a run with a target ESS (a large design's plan) stopped sampling, in its own settings; else None."""
    o = options
    if o.target_ess is None:
        return None
    return (f"Sampling ({o.chains} chains after {o.tune} tuning steps, target_accept {o.target_accept}) stopped at "
            f"the first 100 draws per chain where every fixed effect, sd and correlation had bulk and tail ESS >= "
            f"{o.target_ess} and r_hat <= 1.01 (at most {o.draws}).")


def agq_text(spec) -> str:
    """What lme4's side of a model fitted with ``nAGQ > 1`` is, and the scale of its log-likelihood."""
    return (f"lme4's side is glmer with nAGQ = {spec.nagq}: adaptive Gauss-Hermite quadrature with {spec.nagq} nodes "
            "per level integrates the random effect, where the default (nAGQ = 1) is the Laplace approximation. "
            "Its logLik, AIC and BIC here are on the Laplace fit's scale (comparable with the study's other fits); "
            "R's logLik() of an nAGQ > 1 fit leaves out the saturated model's log-likelihood, so R's number differs "
            "by that constant and R's anova() of it against a Laplace fit compares numbers on different scales.")


def r2_text(rows: pd.DataFrame, latent: bool, ci: float) -> str:
    """One model's marginal and conditional R², lme4 beside the posterior (:mod:`bayeslmm.summary.r2`)."""
    parts = [f"{r['r2']} lme4 {format_number(r['lme4_estimate'], 3)}, posterior {format_number(r['post_mean'], 3)} "
             f"{format_interval(r['post_conf_low'], r['post_conf_high'], 3)}" for _, r in rows.iterrows()]
    scale = " on the latent (link) scale" if latent else ""
    return (f"**R²** (Nakagawa & Schielzeth{scale}; marginal: fixed effects, conditional: fixed and random; "
            f"{ci:.0%} interval): " + "; ".join(parts) + ".")


def residual_tests_text(fit) -> str:
    """One paragraph: a binomial or Poisson model's tests on its simulated-quantile residuals."""
    res = residuals.simulate_residuals(fit)
    parts = []
    for t in residuals.residual_tests(res):
        if not t.computed:
            parts.append(f"{t.name}: {t.note}")
            continue
        n = res.pearson.shape[0] if t.name == "dispersion" else res.n_sim
        value = f"D = {format_number(t.statistic, 3)}, " if t.name == "uniformity" else (
            "" if t.name == "quantiles" else f"ratio {format_number(t.statistic, 3)}, ")
        parts.append(f"{t.name}: {value}{residuals.format_p(t.p_value, n)}" + (" (**flagged**)" if t.flagged else ""))
    return (f"**Residual checks** (simulated-quantile residuals from {res.n_sim} posterior predictive replicates, "
            "DHARMa's tests; figures below): " + "; ".join(parts) + ".")


def priors_text(fit) -> str:
    """One paragraph: every prior as the engine used it, those the user set marked as such."""
    user = set(getattr(fit.model, "user_set", ()))
    items = [f"`{k}` ~ {v}{_prior_gloss(v)}{' (**set**)' if k in user else ''}" for k, v in fit.priors.items()]
    how = "set in the study where marked, Bambi's defaults scaled to the data otherwise" if user else \
        "Bambi's defaults, scaled to the data"
    return f"Priors ({how}): " + "; ".join(items) + "."


def _prior_gloss(prior: str) -> str:
    """What an LKJ prior on a correlation matrix means, in a phrase (nothing for other priors)."""
    if not prior.startswith("LKJ("):
        return ""
    if prior == "LKJ(eta=1)":
        return " (uniform over correlation matrices)"
    try:
        eta = float(prior.removeprefix("LKJ(eta=").removesuffix(")"))
    except ValueError:
        return ""
    return " (favours correlations near 0)" if eta > 1 else " (favours correlations near -1 and 1)"


def sensitivity_section(study, fits: dict, freq: dict) -> list[Block]:
    """Which numbers are the prior speaking, in one place: each distinct posterior's prior-sensitive
    parameters and why (power-scaling, :mod:`bayeslmm.summary.sensitivity`)."""
    from bayeslmm.summary import sensitivity

    names: dict[str, list[str]] = {}
    first: dict[str, object] = {}
    for spec in study.models:
        names.setdefault(fits[spec.name].key, []).append(spec.name)
        first.setdefault(fits[spec.name].key, spec)
    lines, missing = [], []
    for key, models in names.items():
        spec, label = first[key], " = ".join(models)
        fit = fits[spec.name]
        why = sensitivity.unavailable(fit)
        if why:
            missing.append(f"{label}: {why}")
            continue
        f = freq.get((spec.name, analysis.lme4_method(spec)))
        lines += [f"{label}: {line}" for line in sensitivity.findings(sensitivity.power_scaling(fit),
                                                                     f.ngroups if f is not None else None)]
    blocks: list[Block] = [
        Heading("Prior sensitivity", 2),
        Para("Which numbers are the data speaking and which the prior? Power-scaling (Kallioinen et al. 2024, "
             "priorsense; arviz-stats `psense`) raises each model's prior, then its likelihood, to a power near 1 "
             "and measures how far each parameter's posterior moves; "
             f"{format_number(sensitivity.THRESHOLD)} or more counts as sensitive. Each model's table gives both "
             "numbers in its last column (prior / likelihood)."
             + (" Prior-sensitive:" if lines else " No fixed effect, sd or correlation of any model is "
                "prior-sensitive: every posterior is the data speaking."))]
    if lines:
        blocks.append(Bullets(tuple(lines)))
    if missing:
        blocks.append(Para("Not computed: " + "; ".join(missing) + "."))
    return blocks


def comparison_section(study, table: pd.DataFrame) -> list[Block]:
    """Each comparison: LOO beside the LRT and AIC/BIC, and a plain-language reading."""
    from bayeslmm.summary.compare import reading

    if table.empty:
        return []
    blocks: list[Block] = [Heading("Model comparisons", 2),
                           Para("PSIS-LOO (expected log predictive density; higher is better) of the Bayesian fits "
                                "beside the likelihood-ratio test and AIC/BIC of the ML fits, as lme4's "
                                "`anova()` reports them, and AICc (AIC corrected for small samples, the tutorial's "
                                "NOTE 2). Where PSIS's Pareto k exceeds 0.7 for an observation, the "
                                "model is refitted without it and its exact elpd used (`loo_refits` says how many; "
                                "at most `--max-refits` per model). Leave-one-group-out (`elpd_logo`, when asked "
                                "for with `--logo` or a comparison's `logo`) refits the model once per level of a "
                                "grouping factor: LOO scores predicting a new observation in a group the model has "
                                "seen, leave-one-group-out predicting a new group.")]
    for comp in study.comparisons:
        t = table[table["comparison"] == comp.name]
        cols = ["model", "elpd_loo", "elpd_se", "elpd_diff", "elpd_diff_se", "p_loo"]
        cols += ["pareto_k_bad", "loo_refits"] if t["pareto_k_bad"].sum() > 0 else []
        cols += ["loo_subsample", "elpd_subsampling_se"] if t["loo_subsample"].sum() > 0 else []
        cols += ["stacking_weight", "aic", "aicc", "bic", "lrt_chisq", "lrt_df", "lrt_p"]
        cols += ["pb_p"] if "pb_p" in t else []
        if t["logo_group"].fillna("").astype(bool).any():
            cols += ["elpd_logo", "elpd_logo_se", "elpd_logo_diff", "elpd_logo_diff_se"]
        show = t[cols]
        blocks += [Heading(comp.name, 3)]
        if comp.question:
            blocks.append(Para(f"**Question.** {comp.question}"))
        blocks += [Table(show), Para(reading(t))]
        if t["loo_subsample"].sum() > 0:
            blocks.append(Para(subsample_text(t)))
    return blocks


def subsample_text(table: pd.DataFrame) -> str:
    """What a comparison says when its LOO was estimated from a subsample of rows
    (:func:`bayeslmm.summary.compare.loo_subsample`)."""
    from bayeslmm.summary.compare import LOO_APPROX_DRAWS

    sub = table[table["loo_subsample"] > 0]
    ses = ", ".join(f"{r['model']} {format_number(r['elpd_subsampling_se'])}" for _, r in sub.iterrows())
    return (f"**LOO from a subsample.** The elpd is estimated from {int(sub['loo_subsample'].iloc[0]):,} rows drawn "
            "at random (seed 0) instead of all of them: PSIS-LOO on those rows corrects an approximation of every "
            f"row's elpd (its log predictive density over {LOO_APPROX_DRAWS} evenly spaced draws), the difference "
            "estimator of Magnusson et al. (2019) that arviz-stats' `loo_subsample` computes. `elpd_se` includes "
            f"the subsampling error, `elpd_subsampling_se` is that part alone ({ses}); Pareto k is checked on the "
            "subsample only, and the stacking weights rest on the approximation outside it. The likelihood-ratio "
            "test uses every row.")


def write_tables(root: Path, side: pd.DataFrame, study) -> None:
    """The side-by-side table of every model in every export format, under ``tables/``."""
    folder = root / "tables"
    folder.mkdir(exist_ok=True)
    for spec in study.models:
        compact = compact_side(side[side["model"] == spec.name])
        for fmt, suffix in SUFFIX.items():
            (folder / f"{spec.name}.{suffix}").write_text(
                render(compact, fmt, caption=f"{spec.name}: {spec.formula.text} (lme4: {analysis.lme4_label(spec)})"),
                encoding="utf-8")


@dataclass(frozen=True)
class Written:
    """What writing a report adds to the fits: the tidy table and the run-level warnings.

    ``notes`` are the warnings that belong to no single fit (LOO's Pareto k); ``report_notes``
    those of lme4's side and the report's other computations (Python warnings turned into text
    by :func:`bayeslmm.notices.collected`, and lme4's singular fits).
    """

    tidy: pd.DataFrame
    notes: tuple[str, ...]
    report_notes: tuple[str, ...]


def write(result: Fitted, root: Path, *, ci: float = 0.95, source: str = "", profiles: dict | None = None,
          pb: int = 0, echo=None, crossval=None, store: Store | None = None) -> Written:
    """Write the report files into ``root``.

    Parameters
    ----------
    result : Fitted
        The study, its data and the Bayesian fit of every model.
    root : Path
        The (staged) report folder.
    ci : float
        Mass of the intervals.
    source : str
        Where the data came from.
    profiles : dict, optional
        lme4-style profile intervals per model; computed here when ``None``.
    pb : int
        Simulations of the parametric-bootstrap LRT of each comparison (0: none).
    echo : callable, optional
        Where progress lines go.
    crossval : CrossValidation, optional
        Exact refits where PSIS-LOO fails and leave-one-group-out for the comparisons
        (:class:`~bayeslmm.summary.crossval.CrossValidation`; its defaults, refits uncached, when ``None``).
    store : Store, optional
        Where the figures drawn from the same fits and settings are kept for a re-run (nowhere by default).
    """
    from bayeslmm.summary.crossval import CrossValidation

    crossval = crossval if crossval is not None else CrossValidation()
    store = store if store is not None else Store()
    root.mkdir(parents=True, exist_ok=True)
    study, fits = result.study, result.fits
    freq, computed, report_notes = {}, {}, []
    say = echo if echo is not None else (lambda _: None)
    say("  lme4's fits and profile intervals ...")
    for spec in study.models:  # model by model, so that each warning names its model
        with collected(f"{spec.name} (lme4 side): ") as caught:
            freq.update(analysis.frequentist_fits({spec.name: fits[spec.name]}, {spec.name: spec.nagq}))
            if profiles is None:
                computed.update(analysis.profile_intervals(dataclasses.replace(study, models=(spec,)), fits, freq, ci))
        report_notes += caught
    profiles = computed if profiles is None else profiles
    with collected() as caught:
        side = analysis.side_by_side_all(study, fits, freq, ci, profiles)
        # one lme4 interval per number: the side-by-side table's (profile where it exists), named
        tidy = with_lme4_intervals(analysis.tidy_all(fits, freq, ci), side)
        builtin = str(source).startswith("builtin:")
        if builtin:
            side = with_truth(side, study)
        parts = analysis.variance_partitions(study, fits, freq, ci)
        r2 = r2_table(study, fits, freq, ci)
        r2.to_csv(root / "r2.csv", index=False)
        say("  LOO and the comparisons ...")
        comparison = analysis.comparisons(study, fits, freq, crossval, pb=pb, echo=echo)
        tidy.to_csv(root / "tidy.csv", index=False)
        side.to_csv(root / "sidebyside.csv", index=False)
        if not parts.empty:
            parts.to_csv(root / "variance_partition.csv", index=False)
        if not comparison.empty:
            comparison.to_csv(root / "comparison.csv", index=False)
        write_tables(root, side, study)
        ratios = analysis.ratio_tables(study, fits, side, ci)
        if not ratios.empty:
            ratios.to_csv(root / "ratios.csv", index=False)
        diags = {name: diagnostics(fit, fit.tidy(ci)) for name, fit in fits.items()}
        skipped: list[str] = []
        say("  figures ...")
        figures = stored_figures(store, figure_inputs(result, ci, builtin), root, skipped, lambda: make_figures(
            result, root, tidy, ci, side, skipped=skipped, echo=echo, parts=parts), say)
        checks = [f"{spec.name}: {note}" if len(study.models) > 1 else note for spec in study.models
                  for note in (*residuals.check_notes(fits[spec.name]),
                               *runaway_notes(side[side["model"] == spec.name], spec.formula))]
    report_notes += caught + checks + crossval.notes
    opts = next(iter(fits.values())).options

    blocks: list[Block] = [Heading(study.title, 1)]
    if study.description:
        blocks.append(Para(study.description))
    if builtin:
        score = any(m.formula.response == "testScore" for m in study.models)
        blocks.append(Para(BUILTIN_NOTE + (BUILTIN_SCORE_NOTE if score else "")))
    term = focus_term(result)
    p_pos = analysis.probability_positive(fits, term) if term is not None else {}
    blocks += conclusions_section(study, fits, side, comparison, term, p_pos, ci)
    if term is not None:
        blocks += summary_section(study, side, term, p_pos, ci)
    loo_problems = pareto_warnings(comparison) if not comparison.empty else []
    problems = [f"{name}: {note}" for name, fit in fits.items() for note in fit.sampler_notes] + loo_problems
    report_notes = [*analysis.singular_notes(study, freq), *report_notes]
    advice = [f"{name}: {note}" for name, fit in fits.items() for note in fit.notes] + report_notes
    if problems or advice:
        blocks += [Heading("Warnings", 2),
                   Para("What the checks found in the data, the formulas and the sampler's diagnostics, each with "
                        "what to do."),
                   Bullets(tuple(dict.fromkeys(problems + advice)))]
    blocks += sensitivity_section(study, fits, freq)
    prep = [f"`{k}` = `{v}` standardised (mean 0, sd 1 with n - 1, as R's `scale()`)" for k, v in study.scale.items()]
    prep += [f"`{k}` = `{':'.join(v)}` (explicit nesting, as R's `factor(a:b)`)" for k, v in study.nest.items()]
    blocks += [
        Heading("Data and settings", 2),
        Bullets((f"data: `{source}`, {len(result.data)} rows", *prep,
                 f"sampler: {opts.chains} chains x {'at most ' if opts.target_ess is not None else ''}{opts.draws} "
                 f"draws after {opts.tune} tuning steps, target_accept "
                 f"{opts.target_accept}, seed {opts.seed}; priors: Bambi's defaults scaled to the data unless the "
                 "study sets them, and LKJ on the correlations of correlated terms (listed per model, set ones marked)",
                 "engines: `marginal` integrates the random effects out exactly (the model is Gaussian), runs NUTS "
                 "(nutpie) on the fixed effects, standard deviations and correlations only, and draws the random "
                 "effects from their exact conditional normal: the same posterior as Bambi's model, without its "
                 "funnel (for correlated terms, Bambi's priors with an LKJ prior on the correlations, which Bambi "
                 "lacks); `bambi` is Bambi + PyMC NUTS on the full model; `pymc` is bayeslmm's plain PyMC model of "
                 "the marginal engine's posterior, its reference. The engine of each model is named below",
                 f"intervals: {ci:.0%} equal-tailed posterior intervals (the {(1 - ci) / 2:.1%} and "
                 f"{(1 + ci) / 2:.1%} quantiles), in the tables and the figures alike; estimate = posterior "
                 "mean, std_error = posterior sd",
                 "lme4's side: OLS for models without random terms, else the REML fit (ML where the study says so, "
                 f"as the tutorial does for the likelihood-ratio test); lme4's {ci:.0%} CIs are profile-likelihood "
                 "intervals (R's confint(method = 'profile'), which profiles the ML deviance) for linear mixed "
                 "models, Wald intervals for lm; binomial and Poisson models get glmer's Laplace fit (glm without "
                 "random terms), negative binomial ones glmer.nb's (glm.nb), with Wald intervals (R's "
                 "confint(method = 'Wald'): none for an sd, nor for the negative binomial's theta, Bambi's alpha)"
                 + "".join(f"; {spec.name}: glmer's adaptive Gauss-Hermite fit, nAGQ = {spec.nagq}"
                           for spec in study.models if analysis.lme4_method(spec) == "agq")
                 + "".join(f"; {name}: Wald, none for the sds (its crossed design is too large to profile in "
                           "seconds: see the warnings)" for name, prof in profiles.items() if prof.empty),
                 *(["binomial and count models: every estimate, sd and interval in the tables and tidy.csv is on "
                    "the link scale (log-odds, log of the mean), as lme4 and broom.mixed give them; ratios.csv and "
                    "each model's second table give exp of the fixed effects (odds ratios, rate ratios) and "
                    "predictions on the response scale"] if any(m.formula.is_glmm for m in study.models) else []))),
        Heading("Models", 2),
    ]
    for spec in study.models:
        blocks += model_section(spec, fits[spec.name], side, parts, diags[spec.name], freq, ci, ratios, r2)
    blocks += comparison_section(study, comparison)
    blocks += [Heading("Figures", 2), *figures]
    if skipped:
        blocks += [Para("Not drawn:"), Bullets(tuple(skipped))]
    blocks += [Heading("Sampler diagnostics", 2), Table(pd.DataFrame([{"model": k, **v} for k, v in diags.items()]))]
    blocks.append(Para("Every model passed the sampler checks (no divergences, r_hat <= 1.01, ESS >= 400)."
                       if not problems else "**Sampler and LOO warnings.** " + "; ".join(problems)))
    (root / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (root / "report.html").write_text(to_html(blocks, study.title, root), encoding="utf-8")
    return Written(tidy, tuple(loo_problems), tuple(report_notes))
