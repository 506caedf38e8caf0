"""A Bayesian fit as text, laid out as lme4's ``summary()`` prints a fit, with posterior columns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.intervals import percent
from bayeslmm.labels import RESIDUAL, SD_PREFIX
from bayeslmm.numbers import format_number

FAMILY_WORDS = {"gaussian": "linear mixed model", "binomial": "binomial mixed model (logit link)",
                "poisson": "Poisson mixed model (log link)"}


def _table(df: pd.DataFrame) -> str:
    return df.to_string(index=False, formatters={c: (lambda v: format_number(v)) for c in df.columns
                                                 if pd.api.types.is_numeric_dtype(df[c])}, na_rep="")


def fit_summary(fit, ci: float = 0.95) -> str:
    """lme4's ``summary(fit)`` of a :class:`~bayeslmm.engines.bayes.BayesFit`: formula, groups, random and
    fixed effects (posterior mean, sd, equal-tailed interval, r_hat, bulk ESS), and the sampler."""
    from bayeslmm.summary.tables import diagnostics, fixed_draws

    tidy = fit.tidy(ci)
    lo, hi = percent((1 - ci) / 2), percent((1 + ci) / 2)
    kind = FAMILY_WORDS.get(fit.formula.family, fit.formula.family) if fit.formula.random else "regression"
    draws = fit.idata["posterior"].sizes
    lines = [f"Bayesian {kind} fitted by bayeslmm ({fit.engine} engine; {draws['chain']} chains x "
             f"{draws['draw']} draws{', from the cache' if fit.cached else ''})",
             f"Formula: {fit.formula.text}",
             f"   Data: {len(fit.data)} rows", ""]
    rp = tidy[tidy["effect"] == "ran_pars"].copy()
    if not rp.empty:
        sds = rp[rp["term"].str.startswith(SD_PREFIX)]
        shown = pd.DataFrame({
            "Groups": sds["group"], "Name": [t.removeprefix(SD_PREFIX) if g != RESIDUAL else ""
                                             for g, t in zip(sds["group"], sds["term"], strict=True)],
            "Std.Dev.": sds["estimate"], "sd": sds["std_error"], lo: sds["conf_low"], hi: sds["conf_high"]})
        lines += [f"Random effects (posterior mean, sd and {percent(ci)} interval of each standard deviation):",
                  _table(shown)]
        cors = rp[~rp["term"].str.startswith(SD_PREFIX)]
        if not cors.empty:
            lines += ["Correlations:", _table(pd.DataFrame({
                "Groups": cors["group"], "Name": cors["term"], "Corr": cors["estimate"], "sd": cors["std_error"],
                lo: cors["conf_low"], hi: cors["conf_high"]}))]
        groups = "; ".join(f"{g}, {n}" for g, n in _levels(fit).items())
        lines += [f"Number of obs: {len(fit.data)}, groups:  {groups}", ""]
    fx = tidy[tidy["effect"] == "fixed"]
    p_pos = [float(np.mean(fixed_draws(fit, t) > 0)) for t in fx["term"]]
    lines += ["Fixed effects:" + (" (link scale)" if fit.formula.is_glmm else ""), _table(pd.DataFrame({
        "": fx["term"], "Mean": fx["estimate"], "Sd": fx["std_error"], lo: fx["conf_low"], hi: fx["conf_high"],
        "P(>0)": p_pos, "r_hat": fx["r_hat"], "ess_bulk": fx["ess_bulk"].round()})), ""]
    d = diagnostics(fit, tidy)
    user = getattr(fit.model, "user_set", ())
    priors = f"set by the user for {', '.join(user)}, Bambi's defaults otherwise" if user else "Bambi's defaults"
    lines.append(f"Sampler: {d['divergences']} divergences; max r_hat {format_number(d['max_r_hat'])}; "
                 f"min bulk ESS {format_number(round(d['min_ess_bulk']))}. Priors: {priors}.")
    return "\n".join(lines)


def _levels(fit) -> dict[str, int]:
    from bayeslmm.model.formula import group_codes

    return {g: len(group_codes(fit.data, g)[0]) for g in fit.formula.grouping_factors}
