"""Linear predictor, fitted values, residuals and predictive draws of a Bayesian fit.

The posterior holds the parameters under Bambi's names, not the linear predictor; these
functions rebuild it draw by draw: ``X @ beta`` (formulae's design of the fixed part, the same
columns Bambi used) plus, for every random term, each row's group effect times its covariate
(:func:`bayeslmm.model.formula.group_codes` for the level of each row). All arrays are numpy, draws
first: ``(draws, rows)``; chains are pooled (chain-major).

``max_draws`` keeps an evenly spaced subset of the draws (every k-th), which is enough for
means and bands and keeps the arrays small.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import special

from bayeslmm.labels import INTERCEPT, RESIDUAL_VARIABLE, SAMPLE_DIMS, RandomColumn, cor_term, sd_term
from bayeslmm.model.formula import (
    RandomTerm,
    fixed_design,
    group_codes,
    materialize,
    offset_values,
    random_values,
    resolve,
)
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.summary.tables import column_draws, cor_draws, nb_size_draws, sd_draws


def n_draws(fit) -> int:
    """Number of posterior draws of a fit (chains times draws per chain)."""
    post = fit.idata["posterior"]
    return int(post.sizes["chain"] * post.sizes["draw"])


def draw_index(fit, max_draws: int | None = None) -> np.ndarray:
    """Indices of the pooled draws to use: all, or ``max_draws`` evenly spaced ones."""
    total = n_draws(fit)
    if max_draws is None or max_draws >= total:
        return np.arange(total)
    if max_draws < 1:
        raise ValueError(f"max_draws must be at least 1, not {max_draws}")
    return np.unique(np.linspace(0, total - 1, int(max_draws)).round().astype(int))


def param_draws(fit, var: str, max_draws: int | None = None) -> np.ndarray:
    """Draws of one posterior variable (Bambi's name), chains pooled: shape ``(draws, ...)``."""
    post = fit.idata["posterior"]
    if var not in post:
        raise KeyError(f"{var!r} is not in the posterior of {fit.name!r}; it holds {', '.join(post.data_vars)}")
    da = post[var]
    extra = [d for d in da.dims if d not in SAMPLE_DIMS]
    arr = np.asarray(da.transpose(*SAMPLE_DIMS, *extra).values, dtype=float)
    arr = arr.reshape(-1, *arr.shape[2:])
    return arr[draw_index(fit, max_draws)]


def response(fit) -> np.ndarray:
    """The observed response of the rows the model used."""
    return np.asarray(fit.data[fit.formula.response], dtype=float)


def fixed_effect_draws(fit, max_draws: int | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """lme4's names of the fixed effects and their draws, shape ``(draws, p)``."""
    design = fixed_design(fit.formula, fit.data)
    idx = draw_index(fit, max_draws)
    post = fit.idata["posterior"]
    draws = [column_draws(post, c)[idx] for c in design.columns]
    return design.names, (np.column_stack(draws) if draws else np.zeros((idx.size, 0)))


def random_terms(fit) -> tuple[RandomTerm, ...]:
    """The fit's random terms resolved against its data (a factor slope's columns ``fA``, ``fB``, ...)."""
    if all(t.columns is not None for t in fit.formula.random):
        return fit.formula.random
    return resolve(fit.formula, fit.data).random


def random_coefs(fit) -> list[tuple[RandomTerm, str]]:
    """Every (random term, coefficient) pair of a fit, in formula order (lme4's coefficient names)."""
    return [(term, coef) for term in random_terms(fit) for coef in term.coefs]


def _find_column(fit, group: str, coef: str) -> RandomColumn:
    for term in random_terms(fit):
        for col in term.columns:
            if term.group == group and col.name == coef:
                return col
    have = ", ".join(f"{c} ({t.group})" for t, c in random_coefs(fit)) or "none"
    raise KeyError(f"{fit.name!r} has no random coefficient {coef!r} for {group!r}; it has: {have}")


def group_effect_draws(fit, group: str, coef: str = INTERCEPT,
                       max_draws: int | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """Levels of a grouping factor and the draws of their effects (deviations from the fixed part).

    Returns
    -------
    levels : tuple of str
        In the posterior's order.
    draws : ndarray, shape (draws, levels)
    """
    col = _find_column(fit, group, coef)
    var = col.variable(group)
    da = fit.idata["posterior"][var]
    if col.dim is not None:  # a factor's column: the variable holds every column along its level dim
        da = da.sel({col.dim: col.level})
    (dim,) = [d for d in da.dims if d not in SAMPLE_DIMS]
    levels = tuple(str(v) for v in da[dim].values)
    arr = np.asarray(da.transpose(*SAMPLE_DIMS, dim).values, dtype=float)
    return levels, _rows(arr.reshape(-1, arr.shape[-1]), draw_index(fit, max_draws))


def _rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[idx]``; when ``idx`` is every row in order, a read-only view instead of a copy (draws of
    24,000 group effects are 768 MB)."""
    if idx.size == values.shape[0] and (idx.size == 0 or (idx[0] == 0 and idx[-1] == idx.size - 1)):
        view = values.view()
        view.flags.writeable = False
        return view
    return values[idx]


def row_labels(df: pd.DataFrame, group: str) -> np.ndarray:
    """Level label of every row for a grouping factor (``a`` or ``a:b``), as in the posterior."""
    levels, codes = group_codes(df, group)
    return np.asarray(levels, dtype=object)[codes]


def covariate_values(df: pd.DataFrame, coef: str) -> np.ndarray:
    """Values of a random coefficient's covariate per row (ones for ``(Intercept)``)."""
    if coef == INTERCEPT:
        return np.ones(len(df))
    if coef not in df.columns:
        from bayeslmm.model.rterms import evaluate

        return np.asarray(next(iter(evaluate(coef, df).values())), dtype=float)
    return np.asarray(df[coef], dtype=float)


def level_positions(levels: tuple[str, ...], labels: np.ndarray, group: str) -> np.ndarray:
    """Position of each row label among ``levels``; ValueError names labels not among them."""
    labels = np.asarray(labels, dtype=object)
    pos = pd.Index(levels, dtype=object).get_indexer(labels)  # one hash lookup per row, in C (480,000 rows: 30 ms)
    if (pos < 0).any():
        unknown = sorted({str(lb) for lb in labels[pos < 0]})
        raise ValueError(f"level(s) {', '.join(unknown[:5])} of {group!r} were not in the fitted data")
    return pos.astype(np.int64)


def _eta(fit, df: pd.DataFrame, newdata: pd.DataFrame | None, idx: np.ndarray,
         groups: Iterable[str] | None, rows: slice = slice(None), mean: bool = False) -> np.ndarray:
    """Linear predictor of the draws ``idx`` at ``rows`` of ``df`` (the fit's data or ``newdata``).

    With ``mean``, its posterior mean over those draws, shape ``(1, rows)``: the predictor is
    linear in the effects, so that is the predictor at the effects' means (no draws x rows array).
    """
    def draws(values: np.ndarray) -> np.ndarray:
        return _rows(values, idx).mean(axis=0, keepdims=True) if mean else _rows(values, idx)

    design = fixed_design(fit.formula, fit.data)
    x = (design.X if newdata is None else design.evaluate(newdata))[rows]
    eta = np.zeros((1 if mean else idx.size, x.shape[0])) + offset_values(fit.formula, df)[rows][None, :]
    post = fit.idata["posterior"]
    for j, column in enumerate(design.columns):
        eta += draws(column_draws(post, column))[:, None] * x[None, :, j]
    keep = None if groups is None else set(groups)
    for term in random_terms(fit):
        if keep is not None and term.group not in keep:
            continue
        values = random_values(term, materialize(fit.formula, df))[rows]
        for j, coef in enumerate(term.coefs):
            levels, u = group_effect_draws(fit, term.group, coef)
            pos = level_positions(levels, row_labels(df, term.group)[rows], term.group)
            eta += draws(u)[:, pos] * values[None, :, j]
    return eta


def linear_predictor(fit, newdata: pd.DataFrame | None = None, *, groups: Iterable[str] | None = None,
                     max_draws: int | None = None) -> np.ndarray:
    """Draws of the linear predictor (the conditional mean of the response).

    Parameters
    ----------
    fit : BayesFit
    newdata : DataFrame, optional
        Rows to predict (the columns the formula uses; the response is not needed). The fit's
        own rows by default.
    groups : iterable of str, optional
        Grouping factors whose effects to include; all by default, ``()`` for the
        population-level prediction (fixed part only).
    max_draws : int, optional
        Use this many evenly spaced draws.

    Returns
    -------
    ndarray, shape (draws, rows)

    Raises
    ------
    ValueError
        If ``newdata`` has a level of an included grouping factor that the fit never saw.
    """
    df = fit.data if newdata is None else newdata
    return _eta(fit, df, newdata, draw_index(fit, max_draws), groups)


def fitted(fit, newdata: pd.DataFrame | None = None, *, groups: Iterable[str] | None = None,
           max_draws: int | None = None) -> np.ndarray:
    """Posterior mean of the linear predictor per row (lme4's ``fitted``/``predict``).

    The linear predictor at the effects' posterior means (it is linear in them): no draws x
    rows array, which is 1.5 GB at 48,000 rows.
    """
    df = fit.data if newdata is None else newdata
    return _eta(fit, df, newdata, draw_index(fit, max_draws), groups, mean=True)[0]


def residuals(fit, max_draws: int | None = None) -> np.ndarray:
    """Observed response minus the posterior-mean fitted value, per row (lme4's ``resid``)."""
    return response(fit) - fitted(fit, max_draws=max_draws)


def inverse_link(family: str, eta: np.ndarray) -> np.ndarray:
    """The mean of a row given its linear predictor: ``eta`` (gaussian, identity link), the probability
    of success ``1 / (1 + exp(-eta))`` (binomial, logit link), the expected count ``exp(eta)`` (poisson and
    negbinomial, log link; an offset is part of ``eta``)."""
    eta = np.asarray(eta, dtype=float)
    if family == "binomial":
        return special.expit(eta)
    if family in COUNT_FAMILIES:
        return np.exp(eta)
    if family == "gaussian":
        return eta
    raise ValueError(f"no inverse link for family {family!r}")


def scale_label(formula) -> str:
    """What the linear predictor (and every effect, sd and interval of the tidy table) measures:
    ``testScore`` (Gaussian), ``log-odds of passed`` (binomial), ``log of the mean birds`` (Poisson, negative
    binomial)."""
    if formula.family == "binomial":
        return f"log-odds of {formula.cbind[0] if formula.cbind else formula.response}"
    if formula.family in COUNT_FAMILIES:
        return f"log of the mean {formula.response}"
    return formula.response


def exposure_label(formula) -> str | None:
    """The exposure a Poisson model's offset stands for: ``hours`` for ``offset(log(hours))``, else
    ``exp(offsets)``; ``None`` without offsets."""
    from bayeslmm.model.rterms import call_of

    if not formula.offsets:
        return None
    call = call_of(formula.offsets[0])
    inner = call_of(call[1][0]) if call is not None and call[0] == "offset" and len(call[1]) == 1 else None
    if len(formula.offsets) == 1 and inner is not None and inner[0] == "log" and len(inner[1]) == 1:
        return inner[1][0]
    return "exp(offsets)"


def response_scale(formula, df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Each row's observed response on the scale a GLMM's predictions are drawn on, and its axis label.

    Gaussian: the response. Binomial: the proportion of successes (``cbind``), or 0 and 1 (a yes/no
    response, 1 the second level in R's order). Poisson: the count, divided by its exposure
    ``exp(offset)`` when the model has offsets (a rate, labelled ``birds / hours``, as its lines with offsets 0).
    """
    from bayeslmm.model.formula import binary_response

    df = materialize(formula, df)
    if formula.family == "binomial":
        if formula.cbind:
            return np.asarray(df[formula.response], dtype=float), f"proportion {formula.cbind[0]}"
        y, levels = binary_response(df[formula.response], formula.response)
        return y, f"{formula.response} ({'1' if levels is None else levels[1]} = 1)"
    y = np.asarray(df[formula.response], dtype=float)
    exposure = exposure_label(formula) if formula.family in COUNT_FAMILIES else None
    if exposure is None:
        return y, formula.response
    return y / np.exp(offset_values(formula, df)), f"{formula.response} / {exposure}"


def without_offsets(formula, newdata: pd.DataFrame) -> pd.DataFrame:
    """``newdata`` with every offset of ``formula`` set to 0 (a Poisson rate per unit of exposure)."""
    return newdata.assign(**{c: 0.0 for c in formula.offset_columns})


def observed(fit) -> tuple[np.ndarray, np.ndarray | None]:
    """The response as the likelihood sees it, and the binomial trials (``None`` for other families).

    Binomial: the successes of ``cbind(s, f)`` (or 0/1) and their trials (ones for a 0/1 response);
    Poisson: the counts; Gaussian: the response (:func:`response`).
    """
    if not fit.formula.is_glmm:
        return response(fit), None
    from bayeslmm.model.formula import model_frame

    frame = model_frame(fit.formula, fit.data)
    return frame.y, frame.trials


def posterior_predictive(fit, n: int = 50, *, seed: int = 0, fresh: Iterable[str] = ()) -> np.ndarray:
    """``n`` replicated data sets from ``n`` random posterior draws: shape ``(n, rows)``.

    Gaussian: each replicate is the linear predictor of one draw plus normal noise with that
    draw's residual sd. Binomial and Poisson: successes (out of the row's trials) and counts drawn
    from the family with that draw's mean (:func:`predictive_draws`).
    """
    if fit.formula.is_glmm:
        return predictive_draws(fit, n, seed=seed, fresh=fresh)[1]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_draws(fit), size=min(n, n_draws(fit)), replace=False))
    mu = _eta(fit, fit.data, None, pick, None)
    sigma = param_draws(fit, RESIDUAL_VARIABLE)[pick]
    return mu + sigma[:, None] * rng.standard_normal(mu.shape)


def population_cholesky(fit, term: RandomTerm, pick: np.ndarray | None = None) -> np.ndarray:
    """Cholesky factor of the covariance of a new level's effects on ``term``'s coefficients, per draw.

    Each posterior draw in ``pick`` (all by default) gives the population the term's levels come
    from: a normal with that draw's sds and (for a correlated term) correlations. Shape
    ``(draws, k, k)``, lower triangular, for the ``k`` coefficients of the term in its order.
    """
    sds, cors = sd_draws(fit), cor_draws(fit)
    pick = np.arange(n_draws(fit)) if pick is None else pick
    coefs = term.coefs
    k = len(coefs)
    cov = np.zeros((pick.size, k, k))
    sd = np.column_stack([sds[(term.group, sd_term(c))][pick] for c in coefs])
    for i in range(k):
        cov[:, i, i] = sd[:, i] ** 2
        for j in range(i + 1, k):
            r = cors.get((term.group, cor_term(coefs[i], coefs[j])))
            if r is not None:
                cov[:, i, j] = cov[:, j, i] = r[pick] * sd[:, i] * sd[:, j]
    return np.linalg.cholesky(cov + 1e-12 * np.eye(k))


def new_level_effects(fit, term: RandomTerm, pick: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's part of the linear predictor from ``term`` with its levels' effects drawn anew.

    For each posterior draw in ``pick``, every level of the term's grouping factor gets a new effect
    from the population the draw describes: a normal with the draw's sds and (for a correlated
    term) correlations. Shape ``(draws, rows)``.
    """
    k = len(term.coefs)
    chol = population_cholesky(fit, term, pick)
    _, codes = group_codes(fit.data, term.group)
    z = rng.standard_normal((pick.size, int(codes.max()) + 1, k))
    u = np.einsum("dij,dlj->dli", chol, z)  # (draws, levels, coefficients)
    values = random_values(term, materialize(fit.formula, fit.data))
    return np.einsum("drj,rj->dr", u[:, codes, :], values)


def predictive_draws(fit, n: int = 250, *, seed: int = 0, fresh: Iterable[str] = (),
                     variance: bool = False) -> tuple[np.ndarray, ...]:
    """Expected responses and replicated responses of a binomial, Poisson or negative binomial fit, ``n`` draws each.

    Each of ``n`` random posterior draws (without replacement; all of them if there are fewer) gives
    the mean of every row (:func:`inverse_link` of the linear predictor, times the trials for a
    binomial) and one replicate drawn from the family with that mean: the posterior predictive
    distribution, conditional on the draw's group effects. The effects of the grouping factors in
    ``fresh`` are drawn anew from their population (:func:`new_level_effects`): all of them for
    the "mixed" predictive distribution of new groups (DHARMa's unconditional simulation), or an
    observation-level effect ``(1|obs)``, whose fitted values would otherwise pull each replicate
    towards its row's own count.

    A negative binomial replicate is drawn with the draw's theta (Bambi's ``alpha``): a gamma-Poisson
    mixture of mean ``mu`` and variance ``mu + mu^2 / theta``.

    Returns
    -------
    expected, replicated : ndarray, shape (n, rows)
        On the scale of :func:`observed` (successes or counts).
    variance : ndarray, shape (n, rows)
        With ``variance=True``: each row's variance under the family at that mean (the Pearson residuals').
    """
    family = fit.formula.family
    if family not in ("binomial", *COUNT_FAMILIES):
        raise ValueError(f"{fit.name!r} is a {family} model; predictive_draws is for binomial and count fits")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_draws(fit), size=min(n, n_draws(fit)), replace=False))
    fresh = set(fresh)
    kept = [g for g in fit.formula.grouping_factors if g not in fresh]
    eta = _eta(fit, fit.data, None, pick, kept)
    for term in random_terms(fit):
        if term.group in fresh:
            eta += new_level_effects(fit, term, pick, rng)
    _, trials = observed(fit)
    mean = inverse_link(family, eta)
    if family == "binomial":
        m = np.broadcast_to(trials.astype(np.int64), mean.shape)
        out = (mean * trials, rng.binomial(m, mean).astype(float))
        return (*out, mean * trials * (1 - mean)) if variance else out
    if family == "negbinomial":
        theta = nb_size_draws(fit)[pick][:, None]
        out = (mean, rng.poisson(rng.gamma(theta, mean / theta)).astype(float))
        return (*out, mean + mean**2 / theta) if variance else out
    out = (mean, rng.poisson(mean).astype(float))
    return (*out, mean) if variance else out
