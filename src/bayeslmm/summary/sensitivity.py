"""Power-scaling sensitivity: which numbers are the data speaking and which the prior.

Kallioinen, Paananen, Bürkner and Vehtari (2024), "Detecting and diagnosing prior and likelihood
sensitivity with power-scaling", Stat Comput 34, 57 (priorsense; arviz-stats ``psense``): raise the
prior (or the likelihood) to a power near 1, reweight the posterior draws by Pareto-smoothed
importance sampling, and measure how far each parameter's posterior moves (the derivative of the
cumulative Jensen-Shannon distance at power 1). A sensitivity of at least :data:`THRESHOLD` counts
as sensitive; the diagnosis is priorsense's: sensitive to the prior and the likelihood alike is a
prior-data conflict, to the prior but not the likelihood a strong prior or weak likelihood.

The prior is the density of the constrained parameters (fixed effects, sds, residual sd, LKJ on the
correlations: :func:`bayeslmm.engines.prior_density.log_prior`), the likelihood the pointwise
log-likelihood given the random effects (:func:`bayeslmm.engines.bayes.log_likelihood`, what LOO
uses), summed per draw.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.labels import RESIDUAL, SAMPLE_DIMS, auxiliary_variables
from bayeslmm.results import memo

#: Sensitivity at or above this counts (priorsense's and arviz-stats' default).
THRESHOLD = 0.05
#: Diagnoses, in priorsense's words.
CONFLICT, WEAK = "prior-data conflict", "strong prior / weak likelihood"
#: arviz-stats' words for them.
_ARVIZ = {"potential prior-data conflict": CONFLICT, "potential strong prior / weak likelihood": WEAK, "✓": ""}
COLUMNS = ["effect", "group", "term", "prior_sensitivity", "likelihood_sensitivity", "diagnosis"]
#: Rows of the log-likelihood summed at a time (draws x rows x 8 bytes each).
_CHUNK_CELLS = 2_000_000


def draws_by_row(fit) -> dict[tuple[str, str, str], np.ndarray]:
    """Draws (chain, draw) of every fixed effect, sd and correlation, keyed ``(effect, group, term)``
    as the tidy table's rows."""
    from bayeslmm.summary.tables import cor_draws, fixed_draws, sd_draws

    post = fit.idata["posterior"]
    shape = (post.sizes["chain"], post.sizes["draw"])
    rows = fit.tidy(effects=("fixed", "ran_pars"))
    sds = {**sd_draws(fit), **cor_draws(fit)}
    # a family's own parameters (the negative binomial's theta, Bambi's alpha)
    sds.update({(g, t): post[v].transpose(*SAMPLE_DIMS).values.reshape(-1)
                for v, (_, g, t) in auxiliary_variables(fit.formula.family).items() if v in post})
    out = {}
    for _, r in rows.iterrows():
        key = (r["effect"], r["group"], r["term"])
        flat = fixed_draws(fit, r["term"]) if r["effect"] == "fixed" else sds[(r["group"], r["term"])]
        out[key] = flat.reshape(shape)
    return out


def power_scaling(fit) -> pd.DataFrame:
    """Prior and likelihood power-scaling sensitivity of every fixed effect, sd and correlation of a fit.

    Computed once per fit and kept (on disk too, where its posterior is cached: ``fit.store``). A
    fit whose log prior cannot be computed (Bambi's engine) gets no rows: :func:`unavailable` says why.

    Returns
    -------
    DataFrame
        :data:`COLUMNS`: the tidy table's ``effect, group, term``, the two sensitivities and the
        diagnosis (:data:`CONFLICT`, :data:`WEAK` or ``""``).
    """
    if unavailable(fit):
        return pd.DataFrame(columns=COLUMNS)
    return memo(fit._summaries, ("power_scaling",),
                lambda: fit.store.get("psense", (fit.key,), lambda: _power_scaling(fit)))


def unavailable(fit) -> str | None:
    """Why a fit has no sensitivity diagnostics (``None`` when it has them)."""
    from bayeslmm.engines.marginal import ENGINE_GROUP

    if not hasattr(fit, "idata"):
        return "it has no posterior draws"
    if ENGINE_GROUP not in fit.idata.children:
        return f"the {fit.engine} engine's posterior lacks the internal draws the log prior is computed from"
    return None


def _power_scaling(fit) -> pd.DataFrame:
    from arviz_stats import psense_summary

    from bayeslmm.engines.bayes import log_prior, summed_log_likelihood

    draws = draws_by_row(fit)
    keys = list(draws)
    post = fit.idata["posterior"]
    coords = {d: post[d].values for d in SAMPLE_DIMS}
    tree = xr.DataTree.from_dict({
        "posterior": xr.Dataset({f"v{i}": (SAMPLE_DIMS, draws[k]) for i, k in enumerate(keys)}, coords=coords),
        "log_prior": xr.Dataset({"prior": log_prior(fit)}),
        "log_likelihood": xr.Dataset({"y": (SAMPLE_DIMS, summed_log_likelihood(fit, _CHUNK_CELLS))}, coords=coords),
    })  # fmt: skip
    log = logging.getLogger("arviz_stats.psense")
    level = log.level
    log.setLevel(logging.ERROR)  # its advice to read the paper: the report explains instead
    try:
        table = psense_summary(tree, threshold=THRESHOLD, round_to=12)
    finally:
        log.setLevel(level)
    rows = []
    for i, (effect, group, term) in enumerate(keys):
        r = table.loc[f"v{i}"]
        rows.append({"effect": effect, "group": group, "term": term, "prior_sensitivity": float(r["prior"]),
                     "likelihood_sensitivity": float(r["likelihood"]),
                     "diagnosis": _ARVIZ.get(str(r["diagnosis"]), str(r["diagnosis"]))})
    return pd.DataFrame(rows, columns=COLUMNS)


def conflicts(fits: dict) -> list[str]:
    """One line per parameter in prior-data conflict, over the fits (``--strict-prior`` fails on these)."""
    out = []
    names: dict[str, list[str]] = {}
    for name, fit in fits.items():
        names.setdefault(fit.key, []).append(name)
    for same in names.values():  # models sharing a posterior are checked once
        table = power_scaling(fits[same[0]])
        for _, r in table[table["diagnosis"] == CONFLICT].iterrows():
            who = f"{' = '.join(same)}: " if len(fits) > 1 else ""
            out.append(f"{who}{parameter_name(r['effect'], r['group'], r['term'])}: prior-data conflict (power-scaling "
                       f"sensitivity to the prior {r['prior_sensitivity']:.3f}, to the likelihood "
                       f"{r['likelihood_sensitivity']:.3f}, both >= {THRESHOLD}): the prior and the data pull it "
                       "different ways; check the prior")
    return out


def parameter_name(effect: str, group: str, term: str) -> str:
    """A parameter in words: ``bodyLength2``, ``sd of site (Intercept)``, ``residual sd``,
    ``correlation (Intercept).day of subject``."""
    from bayeslmm.labels import COR_PREFIX, SD_PREFIX

    if effect == "fixed":
        return term
    if group == RESIDUAL:
        return "residual sd"
    if term.startswith(COR_PREFIX):
        return f"correlation {term.removeprefix(COR_PREFIX)} of {group}"
    return f"sd of {group} {term.removeprefix(SD_PREFIX)}"


def findings(table: pd.DataFrame, ngroups: dict[str, int] | None = None) -> list[str]:
    """One line per prior-sensitive parameter of one posterior (prior sensitivity >= :data:`THRESHOLD`),
    saying why: for a group's sd or correlation, the number of levels (tied to the few-levels advice of
    :func:`bayeslmm.model.checks.design_warnings`).

    ``table``: :func:`power_scaling`'s rows; ``ngroups``: levels per grouping factor.
    """
    from bayeslmm.labels import COR_PREFIX, INTERCEPT, SD_PREFIX
    from bayeslmm.model.checks import FEW_LEVELS
    from bayeslmm.numbers import format_number

    out = []
    for _, r in table[table["prior_sensitivity"] >= THRESHOLD].iterrows():
        how = (f"{format_number(r['prior_sensitivity'], 2)} to the prior, "
               f"{format_number(r['likelihood_sensitivity'], 2)} to the likelihood")
        if r["diagnosis"] == CONFLICT:
            how += f"; priorsense's '{CONFLICT}': the prior and the likelihood pull it different ways"
        elif r["diagnosis"] == WEAK:
            how += f"; priorsense's '{WEAK}'"
        group, term = r["group"], r["term"]
        n = (ngroups or {}).get(group)
        levels = f"{group}: {n} levels; " if n else f"{group}: "
        if r["effect"] == "fixed":
            out.append(f"{term} is prior-sensitive ({how}): its prior is informative against what the data say; "
                       "check the prior of this effect")
        elif group == RESIDUAL:
            out.append(f"the residual sd is prior-sensitive ({how}): check its prior")
        elif term.startswith(COR_PREFIX):
            out.append(f"{levels}the correlation {term.removeprefix(COR_PREFIX)} is prior-sensitive ({how}): the "
                       "levels say little about a correlation, so its LKJ prior shapes the posterior")
        else:
            coef = term.removeprefix(SD_PREFIX)
            what = "its sd" if coef == INTERCEPT else f"the sd of its {coef} effects"
            advice = (f" (fewer than {FEW_LEVELS} levels: consider {group} a fixed effect)"
                      if n and n < FEW_LEVELS else "")
            out.append(f"{levels}{what} is prior-sensitive ({how}): the data cannot pin it down{advice}")
    return out
