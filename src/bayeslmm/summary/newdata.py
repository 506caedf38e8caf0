"""Predictions for new rows with credible and prediction intervals (lme4's ``predict(newdata)``,
brms's ``posterior_epred``/``posterior_predict``).

Three kinds of group, as the two packages name them:

- ``existing`` (lme4's default ``re.form = NULL``): every group effect the fit estimated; a level the
  fit never saw is an error that names it;
- ``new`` (brms's ``allow_new_levels = TRUE``): seen levels keep their effects, unseen ones get effects
  drawn from the population each posterior draw describes (its sds and correlations);
- ``population`` (lme4's ``re.form = NA``): the fixed part only, an average group.

Every posterior draw gives the mean of each row on the response scale (the credible interval) and one
draw of the response from the family around it (the prediction interval: residual noise for a Gaussian
model, Poisson counts; none for a binomial model, whose new rows have no trials).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd

from bayeslmm.errors import OptionsError
from bayeslmm.labels import RESIDUAL_VARIABLE
from bayeslmm.model.formula import materialize, random_values

ReForm = Literal["existing", "new", "population"]


def check_newdata(formula, newdata: pd.DataFrame, re_form: str) -> pd.DataFrame:
    """``newdata`` if it has every column ``formula`` needs to predict (a one-line error otherwise)."""
    if re_form not in get_args(ReForm):
        raise OptionsError(f"re_form must be one of {', '.join(get_args(ReForm))}, not {re_form!r}")
    response = {formula.response, *(formula.cbind or ())}
    groups = {c for r in formula.random for c in r.group_columns}
    needed = [c for c in formula.variables if c not in response and (re_form != "population" or c not in groups)]
    missing = [c for c in dict.fromkeys(needed) if c not in newdata.columns]
    if missing:
        raise OptionsError(f"new data lacks column(s) {', '.join(missing)} that {formula.text!r} uses")
    return newdata.reset_index(drop=True)


def _effects(fit, term, newdata: pd.DataFrame, idx: np.ndarray, allow_new: bool,
             rng: np.random.Generator) -> np.ndarray:
    """Each new row's part of the linear predictor from ``term``: fitted effects of seen levels, and
    (``allow_new``) effects drawn from the population for unseen ones. Shape ``(draws, rows)``."""
    from bayeslmm.summary.predict import group_effect_draws, population_cholesky, row_labels

    labels = row_labels(newdata, term.group)
    values = random_values(term, materialize(fit.formula, newdata))
    coefs = term.coefs
    levels, _ = group_effect_draws(fit, term.group, coefs[0])
    unseen = sorted({str(lb) for lb in labels if lb not in set(levels)})
    if unseen and not allow_new:
        raise OptionsError(f"level(s) {', '.join(unseen[:5])} of {term.group!r} were not in the fitted data; "
                           "predict with re_form='new' (new groups drawn from the population) or 'population'")
    new_pos = {lv: i for i, lv in enumerate(unseen)}
    u = np.zeros((idx.size, len(labels), len(coefs)))
    where = {lv: i for i, lv in enumerate(levels)}
    seen = np.array([lb in where for lb in labels])
    pos = np.array([where.get(lb, 0) for lb in labels])
    for j, coef in enumerate(coefs):
        _, draws = group_effect_draws(fit, term.group, coef)
        u[:, seen, j] = draws[idx][:, pos[seen]]
    if unseen:  # each draw's population of the term's levels
        chol = population_cholesky(fit, term, idx)
        fresh = np.einsum("dij,dlj->dli", chol, rng.standard_normal((idx.size, len(unseen), len(coefs))))
        rows = np.flatnonzero(~seen)
        u[:, rows, :] = fresh[:, [new_pos[str(labels[r])] for r in rows], :]
    return np.einsum("drj,rj->dr", u, values)


def predict(fit, newdata: pd.DataFrame, re_form: ReForm = "existing", ci: float = 0.95, seed: int = 0,
            max_draws: int | None = 2000) -> pd.DataFrame:
    """Predictions for ``newdata``: the mean response with its credible interval, and a prediction interval.

    Parameters
    ----------
    fit : BayesFit
    newdata : DataFrame
        The columns the formula uses (not the response; offsets' columns for a Poisson model).
    re_form : {"existing", "new", "population"}
        Which group effects to include (module docstring).
    ci : float
        Mass of both intervals.
    seed : int
        Seed of the new groups' effects and the replicated responses.
    max_draws : int, optional
        Use this many evenly spaced posterior draws.

    Returns
    -------
    DataFrame
        ``newdata`` with ``estimate`` (posterior mean of the mean response), ``conf_low``, ``conf_high``
        (its equal-tailed interval), ``pred_low``, ``pred_high`` (of a new response; NaN for binomial
        models) and ``scale``.
    """
    from bayeslmm.summary.predict import _eta, draw_index, inverse_link, param_draws, random_terms

    newdata = check_newdata(fit.formula, newdata, re_form)
    rng = np.random.default_rng(seed)
    idx = draw_index(fit, max_draws)
    eta = _eta(fit, newdata, newdata, idx, ())
    if re_form != "population":
        for term in random_terms(fit):
            eta += _effects(fit, term, newdata, idx, re_form == "new", rng)
    family = fit.formula.family
    mean = eta if family == "gaussian" else inverse_link(family, eta)
    if family == "gaussian":
        replicate = mean + param_draws(fit, RESIDUAL_VARIABLE)[idx][:, None] * rng.standard_normal(mean.shape)
    elif family == "poisson":
        replicate = rng.poisson(mean).astype(float)
    else:
        replicate = None
    lo, hi = (1 - ci) / 2, (1 + ci) / 2
    out = newdata.copy()
    out["estimate"] = mean.mean(axis=0)
    out["conf_low"], out["conf_high"] = np.quantile(mean, [lo, hi], axis=0)
    if replicate is not None:
        out["pred_low"], out["pred_high"] = np.quantile(replicate, [lo, hi], axis=0)
    else:
        out["pred_low"] = out["pred_high"] = np.nan
    out["scale"] = {"binomial": "probability", "poisson": "expected count"}.get(family, fit.formula.response)
    return out


__all__ = ["ReForm", "check_newdata", "predict"]
