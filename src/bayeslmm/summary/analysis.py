"""The frequentist side of a study and the tables that put both sides together."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from bayeslmm.lme4 import frequentist
from bayeslmm.model.formula import model_frame
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.store import data_hash
from bayeslmm.summary.compare import compare_models
from bayeslmm.summary.sensitivity import power_scaling
from bayeslmm.summary.sidebyside import ratio_table, side_by_side, variance_partition_table
from bayeslmm.summary.tables import fixed_draws, variance_partition_draws


def frequentist_fits(fits: dict, nagq: dict[str, int] | None = None) -> dict[tuple[str, str], frequentist.FreqFit]:
    """lme4's fits of every model, on the same rows as its Bayesian fit.

    OLS (``ols``) for models without random terms; REML (``reml``) and ML (``ml``) otherwise;
    glmer's Laplace (``laplace``) or, where ``nagq`` (model name to glmer's ``nAGQ``, the study's
    ``nagq`` key) says more than 1, adaptive Gauss-Hermite (``agq``) fit of a binomial or Poisson
    mixed model. Keyed ``(model name, method)``.
    """
    out = {}
    for name, fit in fits.items():
        n = (nagq or {}).get(name, 1)
        for method in frequentist_methods(fit.formula, n):
            agq = n if method == "agq" else None
            f = fit.store.get("lme4", lme4_inputs(fit, method, agq),  # kept beside a cached posterior
                              lambda fit=fit, method=method, agq=agq: frequentist.fit(
                                  model_frame(fit.formula, fit.data), method, agq))
            out[(name, method)] = replace(f, name=name)
    return out


def lme4_inputs(fit, method: str, nagq: int | None) -> tuple:
    """What determines lme4's ``method`` fit of a Bayesian fit's model: its formula, family and data
    (the key of the result kept in :attr:`fit.store <bayeslmm.engines.bayes.BayesFit.store>`)."""
    return fit.formula.text, fit.formula.family, method, nagq, data_hash(fit.data)


def frequentist_methods(formula, nagq: int = 1) -> tuple[str, ...]:
    """R's fits of a formula: REML and ML (``lmer``), Laplace (``glmer``, binomial and Poisson; AGQ with
    ``nagq`` > 1), or OLS / GLM without random terms."""
    if formula.is_glmm:
        return ("glm",) if not formula.is_mixed else ("agq",) if nagq > 1 else ("laplace",)
    return ("reml", "ml") if formula.is_mixed else ("ols",)


def lme4_method(spec) -> str:
    """Which frequentist fit stands beside a model: OLS or GLM, glmer's Laplace or AGQ fit (the model's
    ``nagq``), or the study's REML/ML choice."""
    if spec.formula.is_glmm:
        return frequentist_methods(spec.formula, spec.nagq)[0]
    return spec.lme4_method if spec.formula.is_mixed else "ols"


def lme4_label(spec) -> str:
    """The lme4 fit beside a model as tables and notes name it: ``REML``, ``Laplace``, ``AGQ, nAGQ = 25``."""
    method = lme4_method(spec)
    return frequentist.method_label(method, spec.nagq if method == "agq" else None)


def ml_fit(freq: dict, name: str):
    """The maximum-likelihood fit of a model for likelihood-ratio tests: ML, Laplace, OLS or GLM (None if absent)."""
    for method in ("ml", "laplace", "agq", "ols", "glm"):
        if (name, method) in freq:
            return freq[(name, method)]
    return None


def tidy_all(fits: dict, freq: dict, ci: float = 0.95) -> pd.DataFrame:
    """Every fit's tidy rows (Bayesian and frequentist) in one broom.mixed table."""
    parts = [fit.tidy(ci) for fit in fits.values()] + [f.tidy(ci) for f in freq.values()]
    return pd.concat(parts, ignore_index=True)


def side_by_side_all(study, fits: dict, freq: dict, ci: float = 0.95, profiles: dict | None = None) -> pd.DataFrame:
    """The side-by-side table of every model of the study, with each posterior's power-scaling sensitivity.

    ``profiles`` maps a model name to lme4-style profile intervals (``effect, group, term,
    conf_low, conf_high``) that replace the Wald intervals (and fill the standard deviations').
    """
    tables = []
    for spec in study.models:
        fit = fits[spec.name]
        method = lme4_method(spec)
        f = freq[(spec.name, method)]
        rows = f.tidy(ci).copy()
        kind = pd.Series(np.where(rows["effect"] == "fixed", "Wald", ""), index=rows.index)
        if profiles and spec.name in profiles:
            prof = profiles[spec.name].set_index(["effect", "group", "term"])
            for i, r in rows.iterrows():
                key = (r["effect"], r["group"], r["term"])
                if key in prof.index:
                    rows.loc[i, ["conf_low", "conf_high"]] = prof.loc[key, ["conf_low", "conf_high"]].to_numpy()
                    kind[i] = "profile"
        tables.append(side_by_side(fit.tidy(ci, median=True), rows, f.ngroups, kind, ci, f.boundary_terms(),
                                   power_scaling(fit)))
    return pd.concat(tables, ignore_index=True)


def ratio_tables(study, fits: dict, side: pd.DataFrame, ci: float = 0.95) -> pd.DataFrame:
    """Odds ratios and rate ratios of every binomial and Poisson model (:func:`ratio_table`); empty without any."""
    tables = [ratio_table(fits[spec.name], side[side["model"] == spec.name], ci)
              for spec in study.models if spec.formula.is_glmm]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def profile_intervals(study, fits: dict, freq: dict, ci: float = 0.95) -> dict[str, pd.DataFrame]:
    """lme4's profile-likelihood intervals of each linear mixed model (as ``confint(method = "profile")``):
    fixed effects, standard deviations and correlations (of terms of any number of coefficients).

    Binomial and Poisson mixed models get none: their intervals stay Wald (R's ``confint(method =
    "Wald")``, no interval for an sd), as :func:`side_by_side_all` labels them."""
    from bayeslmm.lme4.profile import profile_ci

    out = {}
    for spec in study.models:
        if not spec.formula.is_mixed or spec.formula.is_glmm:
            continue
        fit, method = fits[spec.name], lme4_method(spec)
        prof = fit.store.get("profile", (*lme4_inputs(fit, method, None), float(ci)),
                             lambda fit=fit, f=freq[(spec.name, method)]: profile_ci(
                                 model_frame(fit.formula, fit.data), f, ci))
        out[spec.name] = prof.assign(group=prof["group"].fillna(""))
    return out


def variance_partitions(study, fits: dict, freq: dict, ci: float = 0.95) -> pd.DataFrame:
    """Variance partition of every mixed model: lme4's point values (REML; glmer's Laplace or AGQ fit for a
    GLMM, on the latent scale as the posterior's) beside the posterior."""
    tables = []
    for spec in study.models:
        if not spec.formula.is_mixed:
            continue
        fit = fits[spec.name]
        mean = float(np.mean(fit.data[spec.formula.response])) if spec.formula.family in COUNT_FAMILIES else None
        method = lme4_method(spec) if spec.formula.is_glmm else "reml"
        point = frequentist.variance_partition(freq[(spec.name, method)], mean)
        tables.append(variance_partition_table(spec.name, variance_partition_draws(fits[spec.name]), point, ci))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def comparisons(study, fits: dict, freq: dict, crossval=None, pb: int = 0, echo=None) -> pd.DataFrame:
    """Every comparison of the study: LOO beside the LRT on ML fits (OLS for lm models).

    ``crossval`` (:class:`~bayeslmm.summary.crossval.CrossValidation`; its defaults, without a cache, when
    ``None``) refits where PSIS fails and runs each comparison's leave-one-group-out; with ``pb``
    simulations a parametric-bootstrap LRT (columns ``pb_p``, ``pb_nsim``) for linear models.
    """
    from bayeslmm.summary.crossval import CrossValidation

    crossval = crossval if crossval is not None else CrossValidation()
    tables = []
    for comp in study.comparisons:
        ml = {m: ml_fit(freq, m) for m in comp.models}
        table = compare_models(comp.name, comp.models, fits, ml, crossval, crossval.group_of(comp))
        if pb:
            table = _with_pb(table, fits, ml, pb, echo)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _with_pb(table: pd.DataFrame, fits: dict, ml: dict, nsim: int, echo=None) -> pd.DataFrame:
    """The comparison table with the parametric-bootstrap p of each LRT (NaN where none applies)."""
    from bayeslmm.lme4.pbtest import pb_lrt
    from bayeslmm.model.formula import model_frame

    p = np.full(len(table), np.nan)
    for i, r in enumerate(table.itertuples()):
        if not np.isfinite(r.lrt_p) or fits[r.model].formula.is_glmm:
            continue
        small, large = sorted((r.model, r.lrt_against), key=lambda m: ml[m].npar)
        frames = {m: model_frame(fits[m].formula, fits[m].data) for m in (small, large)}
        if echo is not None:
            echo(f"parametric bootstrap: {small} against {large}, {nsim} simulations ...")
        seed = fits[small].options.seed
        p[i] = pb_lrt(frames[small], frames[large], ml[small], nsim=nsim, seed=seed).p_value
    return table.assign(pb_p=p, pb_nsim=np.where(np.isfinite(p), nsim, np.nan))


def probability_positive(fits: dict, term: str) -> dict[str, float]:
    """P(term > 0 | data) in every model that has the term: the Bayesian answer to its p-value."""
    out = {}
    for name, fit in fits.items():
        try:
            out[name] = float(np.mean(fixed_draws(fit, term) > 0))
        except KeyError:
            continue
    return out


def singular_notes(study, freq: dict) -> list[str]:
    """lme4's "boundary (singular) fit" for each model whose lme4 fit (the one shown beside it) is singular."""
    out = []
    for spec in study.models:
        f = freq.get((spec.name, lme4_method(spec)))
        note = f.singular_note() if f is not None else None
        if note:
            out.append(f"{spec.name}: {note}" if len(study.models) > 1 else note)
    return out
