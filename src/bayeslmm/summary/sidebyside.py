"""lme4's answer beside the posterior, parameter by parameter, saying where they disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.intervals import eti
from bayeslmm.labels import COR_PREFIX

SIDE_COLUMNS = [
    "model", "effect", "group", "term", "lme4_method", "lme4_estimate", "lme4_std_error", "lme4_conf_low",
    "lme4_conf_high", "lme4_ci", "post_mean", "post_median", "post_sd", "post_conf_low", "post_conf_high", "agreement",
    "prior_sensitivity", "likelihood_sensitivity", "sensitivity", "ci",
]
#: A posterior mean this many posterior sds from lme4's estimate is reported as a difference.
SHIFT_SD = 0.5
#: A posterior interval this many times wider than lme4's (profile) interval is reported.
WIDER = 1.5


def side_by_side(bayes_rows: pd.DataFrame, freq_rows: pd.DataFrame, ngroups: dict[str, int] | None = None,
                 ci_kind: pd.Series | None = None, ci: float = 0.95,
                 boundary: list[tuple[str, str]] | None = None,
                 sensitivity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per parameter of one model: lme4's estimate and CI beside the posterior's.

    Parameters
    ----------
    bayes_rows : DataFrame
        Tidy Bayesian rows of the model with a ``median`` column (``fit.tidy(ci, median=True)``).
    freq_rows : DataFrame
        Tidy rows of the frequentist fit (one method) of the same model.
    ngroups : dict, optional
        Levels per grouping factor, for the explanation of wide intervals.
    ci_kind : Series, optional
        What lme4's interval is per row (e.g. ``Wald``, ``profile``), indexed like ``freq_rows``.
    ci : float
        Mass of both intervals (kept in the ``ci`` column, so tables made later can say it).
    boundary : list of (group, term), optional
        Standard deviations lme4 put at 0 and correlations at +-1 (a singular fit,
        :meth:`FreqFit.boundary_terms`).
    sensitivity : DataFrame, optional
        The posterior's power-scaling sensitivity (:func:`bayeslmm.summary.sensitivity.power_scaling`):
        ``prior_sensitivity``, ``likelihood_sensitivity`` and the diagnosis as ``sensitivity`` (empty
        where it was not computed).

    Returns
    -------
    DataFrame
        ``SIDE_COLUMNS``; fixed effects, standard deviations and correlations (group levels are
        many), in the posterior's order. A parameter lme4 has and the posterior lacks (the
        correlation of ``(x|g)`` fitted by Bambi's engine, which drops it) gets a row too, after
        the others of its group, with no posterior values and an agreement that says so.
    """
    keys = ["effect", "group", "term"]
    b = bayes_rows[bayes_rows["effect"].isin(["fixed", "ran_pars"])]
    f = freq_rows[freq_rows["effect"].isin(["fixed", "ran_pars"])].copy()
    f["lme4_ci"] = ci_kind if ci_kind is not None else np.where(f["effect"] == "fixed", "Wald", "")
    f = f[[*keys, "method", "estimate", "std_error", "conf_low", "conf_high", "lme4_ci"]].rename(columns={
        "method": "lme4_method", "estimate": "lme4_estimate", "std_error": "lme4_std_error",
        "conf_low": "lme4_conf_low", "conf_high": "lme4_conf_high"})
    b = b[["model", *keys, "estimate", "median", "std_error", "conf_low", "conf_high"]].rename(columns={
        "estimate": "post_mean", "median": "post_median", "std_error": "post_sd", "conf_low": "post_conf_low",
        "conf_high": "post_conf_high"})
    out = _with_lme4_only(b.merge(f, on=keys, how="left"), f, keys)
    at_bound = set(boundary or ())
    out["agreement"] = [agreement(r, (ngroups or {}).get(r["group"]), (r["group"], r["term"]) in at_bound)
                        for _, r in out.iterrows()]
    sens = (sensitivity if sensitivity is not None else pd.DataFrame(columns=[*keys, "diagnosis"]))
    sens = sens.reindex(columns=[*keys, "prior_sensitivity", "likelihood_sensitivity", "diagnosis"])
    out = out.merge(sens.rename(columns={"diagnosis": "sensitivity"}), on=keys, how="left")
    out["sensitivity"] = out["sensitivity"].fillna("").astype(str)
    out["ci"] = ci
    return out[SIDE_COLUMNS].reset_index(drop=True)


def _with_lme4_only(out: pd.DataFrame, f: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``out`` with lme4's rows that it lacks, each after the last row of its ``(effect, group)``."""
    have = set(map(tuple, out[keys].to_numpy()))
    rows = out.to_dict("records")
    model = out["model"].iloc[0] if len(out) else ""
    for r in f.to_dict("records"):
        if tuple(r[k] for k in keys) in have:
            continue
        same = [i for i, o in enumerate(rows) if (o["effect"], o["group"]) == (r["effect"], r["group"])]
        rows.insert(same[-1] + 1 if same else len(rows), {**r, "model": model})
    return pd.DataFrame(rows, columns=list(out.columns))


def agreement(row: pd.Series, ngroups: int | None = None, at_boundary: bool = False) -> str:
    """Where lme4 and the posterior disagree materially, in words; ``"agree"`` otherwise.

    Every parameter: the posterior mean more than :data:`SHIFT_SD` posterior sds from lme4's
    estimate. Fixed effects and correlations: only one of the two intervals excludes 0.
    Standard deviations and correlations: lme4's estimate outside the posterior interval, a
    posterior interval :data:`WIDER` times wider than lme4's; for an sd, a right-skewed posterior
    from few groups. A parameter lme4 put on the boundary (``at_boundary``, a singular fit: an sd
    at 0, a correlation at +-1) is said to be so, rather than compared: a posterior never reaches it.
    """
    notes = []
    est, mean, sd = row["lme4_estimate"], row["post_mean"], row["post_sd"]
    if not np.isfinite(mean):
        return "only lme4 estimates this: the Bayesian model has no such parameter"
    if not np.isfinite(est):
        return "no lme4 value"
    is_cor = str(row["term"]).startswith(COR_PREFIX)
    if at_boundary:
        where = ("correlation matrix at its boundary" if is_cor and abs(est) <= 0.99 else
                 f"correlation = {est:+.0f}" if is_cor else "sd = 0")
        return (f"lme4 at the boundary (singular fit: {where}); the posterior puts it between "
                f"{row['post_conf_low']:.3g} and {row['post_conf_high']:.3g}")
    z = abs(mean - est) / sd if sd > 0 else 0.0
    if z > SHIFT_SD:
        notes.append(f"posterior mean {z:.1f} sd from lme4's estimate")
    lo, hi = row["lme4_conf_low"], row["lme4_conf_high"]
    plo, phi = row["post_conf_low"], row["post_conf_high"]
    if (row["effect"] == "fixed" or is_cor) and np.isfinite(lo) and np.isfinite(hi):
        if (lo > 0 or hi < 0) != (plo > 0 or phi < 0):
            side = "lme4's CI" if (lo > 0 or hi < 0) else "the posterior interval"
            notes.append(f"only {side} excludes 0")
    if row["effect"] == "ran_pars":
        if not plo <= est <= phi:
            notes.append("lme4's estimate lies outside the posterior interval")
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo and (phi - plo) > WIDER * (hi - lo):
            why = f" (only {ngroups} groups)" if ngroups and ngroups < 20 else ""
            notes.append(f"posterior interval {(phi - plo) / (hi - lo):.1f}x wider than lme4's{why}")
        elif (not is_cor and ngroups is not None and ngroups < 10
              and row["post_mean"] > 1.1 * row["post_median"]):
            notes.append(f"right-skewed posterior from {ngroups} groups: mean > median, the prior matters")
    return "; ".join(notes) if notes else "agree"


def variance_partition_table(model: str, draws: dict[str, np.ndarray], point: dict[str, float],
                             ci: float = 0.95) -> pd.DataFrame:
    """Each grouping factor's share of the variance: lme4's point value and the posterior.

    Parameters
    ----------
    model : str
    draws : dict
        Posterior draws of the shares (``tables.variance_partition_draws``).
    point : dict
        lme4's (REML) shares (``frequentist.variance_partition``).
    ci : float
        Interval mass.
    """
    rows = []
    for group, d in draws.items():
        lo, hi = eti(d, ci)
        med = np.quantile(d, 0.5)
        rows.append({"model": model, "group": group, "lme4_share": point.get(group, np.nan),
                     "post_mean": float(d.mean()), "post_median": float(med), "post_conf_low": float(lo),
                     "post_conf_high": float(hi)})
    return pd.DataFrame(rows)


#: What ``exp`` of a fixed effect is in a binomial (logit link) and a count (log link) model, and of its intercept.
RATIO_NAMES = {"binomial": ("odds ratio", "odds"), "poisson": ("rate ratio", "rate"),
               "negbinomial": ("rate ratio", "rate")}
RATIO_COLUMNS = [
    "model", "term", "scale", "lme4_method", "lme4_ratio", "lme4_conf_low", "lme4_conf_high", "lme4_ci", "post_mean",
    "post_median", "post_conf_low", "post_conf_high", "predicted", "predicted_mean", "predicted_conf_low",
    "predicted_conf_high", "ci",
]


def ratio_table(fit, side: pd.DataFrame, ci: float = 0.95) -> pd.DataFrame:
    """A binomial or Poisson model's fixed effects on the response's scale: odds ratios or rate ratios.

    ``exp`` of each fixed effect (the tidy table keeps the link scale, as lme4 and broom.mixed do):
    a binomial model's odds ratio (the odds multiply by it per unit of a predictor, or for a
    factor's level against the reference level), a Poisson model's rate ratio; the intercept's is
    the odds (rate per unit of exposure) at the reference levels with every numeric predictor at 0
    (``scale`` says which). lme4: ``exp`` of its estimate and of its interval (of the kind in
    ``lme4_ci``: Wald, or profile; ``exp`` keeps the coverage of either). Posterior: mean and median
    of ``exp`` of the draws, and ``exp`` of the link-scale equal-tailed interval (the same quantiles). ``predicted``
    names, and ``predicted_*`` summarise, the response-scale prediction for a typical group (every
    group effect 0) at the reference levels, with this term's column at 1 (its level, or one unit of
    it): the probability of success, or the rate, from the posterior draws of intercept + effect.

    Parameters
    ----------
    fit : BayesFit
        A binomial or Poisson fit.
    side : DataFrame
        Its side-by-side rows (:func:`side_by_side`), for lme4's estimates and intervals.
    ci : float
        Mass of the intervals.
    """
    from bayeslmm.labels import INTERCEPT
    from bayeslmm.summary.predict import exposure_label, inverse_link
    from bayeslmm.summary.tables import fixed_draws

    family = fit.formula.family
    if family not in RATIO_NAMES:
        raise ValueError(f"{fit.name!r} is a {family} model: odds and rate ratios are for binomial and Poisson "
                         "(or negative binomial) models")
    ratio, base = RATIO_NAMES[family]
    exposure = exposure_label(fit.formula)
    what = ("P(success)" if family == "binomial" else f"{fit.formula.response} / {exposure}" if exposure
            else f"mean {fit.formula.response}")
    fixed = side[side["effect"] == "fixed"]
    intercept = fixed_draws(fit, INTERCEPT) if (fixed["term"] == INTERCEPT).any() else None
    rows = []
    for _, r in fixed.iterrows():
        term = r["term"]
        draws = fixed_draws(fit, term)
        e = np.exp(draws)
        lo, hi = np.exp(eti(draws, ci))  # exactly exp of the tidy table's link-scale interval
        at = draws if term == INTERCEPT or intercept is None else intercept + draws
        p = inverse_link(family, at)
        plo, phi = eti(p, ci)
        rows.append({
            "model": r["model"], "term": term, "scale": base if term == INTERCEPT else ratio,
            "lme4_method": r["lme4_method"], "lme4_ratio": np.exp(r["lme4_estimate"]),
            "lme4_conf_low": np.exp(r["lme4_conf_low"]), "lme4_conf_high": np.exp(r["lme4_conf_high"]),
            "lme4_ci": r["lme4_ci"], "post_mean": float(e.mean()), "post_median": float(np.median(e)),
            "post_conf_low": float(lo), "post_conf_high": float(hi),
            "predicted": f"{what} at the reference levels" if term == INTERCEPT else f"{what} at {term} = 1",
            "predicted_mean": float(p.mean()), "predicted_conf_low": float(plo), "predicted_conf_high": float(phi),
            "ci": ci,
        })
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


#: A fixed effect beyond this on the log-odds scale (an odds ratio above 22,000) is a sign of separation.
RUNAWAY = 10.0


def runaway_notes(side: pd.DataFrame, formula) -> list[str]:
    """Warnings for a binomial model's fixed effects that ran off: ``|estimate| > RUNAWAY`` on the log-odds scale.

    Such an lme4 estimate (or posterior mean) is the mark of complete or quasi-complete separation
    (:func:`bayeslmm.model.checks.separation_warning` finds it in the data): the likelihood keeps
    rising as the effect grows, so lme4's estimate and SE are arbitrary and the posterior is the prior's.
    """
    if formula.family != "binomial":
        return []
    out = []
    for _, r in side[side["effect"] == "fixed"].iterrows():
        who = [f"{name} {v:.3g}" for name, v in (("lme4's estimate", r["lme4_estimate"]),
                                                  ("the posterior mean", r["post_mean"]))
               if np.isfinite(v) and abs(v) > RUNAWAY]
        if who:
            out.append(f"{r['term']}: {' and '.join(who)} on the log-odds scale (beyond +-{RUNAWAY:g}, an odds ratio "
                       "of more than 22,000): a sign of separation, where the estimate has no finite value; check "
                       "the levels or values of this term with only one outcome")
    return out


def with_lme4_intervals(tidy: pd.DataFrame, side: pd.DataFrame) -> pd.DataFrame:
    """``tidy`` with each lme4-side row's interval the one the side-by-side table shows: the profile
    interval where one exists, Wald otherwise; the kind in column ``conf_method`` (``Wald``, ``profile``,
    or ``ETI`` for the posterior's equal-tailed interval).

    The side-by-side table is the one source of the lme4 interval of a parameter; figures and tidy.csv
    take it from there, so the report shows one interval per number.
    """
    keys = ["model", "effect", "group", "term"]
    lme4 = side[[*keys, "lme4_conf_low", "lme4_conf_high", "lme4_ci"]].copy()
    lme4["group"] = lme4["group"].fillna("").astype(str)
    out = tidy.copy()
    out["_g"] = out["group"].fillna("").astype(str)
    merged = out.merge(lme4.rename(columns={"group": "_g"}), on=["model", "effect", "_g", "term"], how="left")
    # a model's REML and ML rows share its profile interval, which profiles the ML deviance (R's confint)
    hit = (merged["method"] != "bayes") & merged["lme4_ci"].notna() & (merged["lme4_ci"] != "")
    merged.loc[hit, "conf_low"] = merged.loc[hit, "lme4_conf_low"]
    merged.loc[hit, "conf_high"] = merged.loc[hit, "lme4_conf_high"]
    bayes = merged["method"] == "bayes"
    merged["conf_method"] = np.where(bayes, "ETI", np.where(hit, merged["lme4_ci"],
                                                            np.where(merged["conf_low"].notna(), "Wald", "")))
    return merged.drop(columns=["_g", "lme4_conf_low", "lme4_conf_high", "lme4_ci"])
