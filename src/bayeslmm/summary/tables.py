"""Tidy tables of posterior summaries in broom.mixed's schema, and sampler diagnostics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.intervals import eti
from bayeslmm.labels import (
    COR_PREFIX,
    INTERCEPT,
    NB_SIZE_VARIABLE,
    RESIDUAL,
    RESIDUAL_TERM,
    SAMPLE_DIMS,
    SD_PREFIX,
    FixedColumn,
    auxiliary_variables,
    classify,
    expr_dim,
    sd_term,
    sdcor_terms,
)
from bayeslmm.model.formula import fixed_design
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.numbers import DIGITS, format_number
from bayeslmm.results import conform, latent_residual_variance

#: Largest block of draws :func:`_summarise` holds at once (parameters x draws x 8 bytes); its sorts and ranks
#: need a few times that (32,000 group levels x 4,000 draws at once took 7.7 GB).
SUMMARY_BLOCK_BYTES = 2**26


def _summarise(draws: np.ndarray, ci: float, block_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Mean, sd, equal-tailed interval, r_hat and ESS over (chain, draw) of ``draws``, a block of parameters at a
    time (:data:`SUMMARY_BLOCK_BYTES`), blocks on every core (NumPy's sorts and the compiled diagnostics release
    the GIL); every number is its parameter's own, so blocks change none of them."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    block_bytes = SUMMARY_BLOCK_BYTES if block_bytes is None else block_bytes
    shape = draws.shape[2:]
    cols = draws.reshape(*draws.shape[:2], -1)
    step = max(1, block_bytes // (8 * max(1, draws.shape[0] * draws.shape[1])))
    starts = range(0, cols.shape[2], step)
    with ThreadPoolExecutor(max(1, min(len(starts), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(lambda a: _summarise_block(cols[:, :, a:a + step], ci), starts))
    return {k: np.concatenate([p[k] for p in parts]).reshape(shape) if parts else np.empty(shape)
            for k in ("median", "estimate", "std_error", "conf_low", "conf_high", "r_hat", "ess_bulk", "ess_tail")}


def _summarise_block(draws: np.ndarray, ci: float) -> dict[str, np.ndarray]:
    """:func:`_summarise` of draws (chain, draw, parameters)."""
    from bayeslmm import convergence

    flat = draws.reshape(-1, draws.shape[2])
    lo, hi = eti(flat, ci)
    single_chain = draws.shape[0] < 2 or draws.shape[1] < 4
    nan = np.full(flat.shape[1:], np.nan)
    r_hat, ess_bulk, ess_tail = (nan, nan, nan) if single_chain else convergence.diagnostics(draws, 0.9)
    return {
        "median": np.median(flat, axis=0),
        "estimate": flat.mean(axis=0),
        "std_error": flat.std(axis=0, ddof=1),
        "conf_low": lo,
        "conf_high": hi,
        "r_hat": r_hat,
        "ess_bulk": ess_bulk,
        "ess_tail": ess_tail,
    }


def tidy_posterior(posterior, model: str, ci: float = 0.95, median: bool = False,
                   effects: tuple[str, ...] = ("fixed", "ran_pars", "ran_vals"),
                   fixed_terms: dict[tuple[str, str], str] | None = None,
                   ran_pars: list[tuple[str, str]] | None = None,
                   auxiliary: dict[str, tuple[str, str, str]] | None = None) -> pd.DataFrame:
    """Tidy summary of a posterior Dataset with Bambi's variable names.

    Parameters
    ----------
    posterior : xarray.Dataset or DataTree node
        Draws with dims ``(chain, draw, ...)``.
    model : str
        Value of the ``model`` column.
    ci : float
        Mass of the equal-tailed credible interval.
    median : bool
        Add a ``median`` column after broom.mixed's.
    effects : tuple of str
        Which rows to summarise (leaving out ``ran_vals`` saves most of the time on designs
        with thousands of group levels).
    fixed_terms : dict, optional
        lme4's name of each fixed-effect column keyed by its posterior ``(variable, level)``
        (:func:`fixed_terms`); needed when a fixed effect has levels (a factor).
    ran_pars : list of (group, term), optional
        The order of the ``ran_pars`` rows (:func:`ran_pars_order`); the posterior's order by default.
    auxiliary : dict, optional
        ``(effect, group, term)`` of the family's own variables (:func:`~bayeslmm.labels.auxiliary_variables`:
        a negative binomial's ``alpha``), which their names alone do not tell.

    Returns
    -------
    DataFrame
        broom.mixed's columns (:data:`bayeslmm.results.TIDY_COLUMNS`); ``method`` is ``bayes``,
        ``estimate`` the posterior mean, ``std_error`` the posterior sd.
    """
    rows = []
    order = {"fixed": 0, "ran_pars": 1, "ran_vals": 2}
    for var in posterior.data_vars:
        da = posterior[var]
        if var in ("mu",) or not set(SAMPLE_DIMS) <= set(da.dims):
            continue
        effect, group, term = (auxiliary or {}).get(str(var)) or classify(str(var))
        if effect not in effects:
            continue
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        columns = [d for d in extra if d.endswith(expr_dim(""))]
        if columns:  # a factor's group effects or sds: a term per column (sd__fA, fA)
            rows += _factor_rows(da, str(var), columns[0], [d for d in extra if d != columns[0]], ci)
            continue
        if len(extra) > 1:
            da = da.stack(__level__=extra)
            extra = ["__level__"]
        arr = np.asarray(da.transpose(*SAMPLE_DIMS, *extra).values, dtype=float)
        stats = _summarise(arr, ci)
        labels = [""] if not extra else [_label(v) for v in da[extra[0]].values]
        for i, label in enumerate(labels):
            idx = () if not extra else (i,)
            row = {k: float(np.asarray(v)[idx]) for k, v in stats.items()}
            if effect == "fixed" and label:
                row.update(effect=effect, group="", level="", term=_fixed_term(fixed_terms, str(var), label))
            else:
                row.update(effect=effect, group=group, level=label, term=term)
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return conform(pd.DataFrame(), ("median",) if median else ())
    out.insert(0, "model", model)
    out.insert(1, "method", "bayes")
    out["_o"] = out["effect"].map(order)
    if ran_pars is not None:
        rank = {key: i for i, key in enumerate(ran_pars)}
        keys = zip(out["group"], out["term"], strict=True)
        out["_r"] = [rank.get(k, len(rank)) if e == "ran_pars" else 0 for e, k in zip(out["effect"], keys, strict=True)]
        out = out.sort_values(["_o", "_r"], kind="stable").drop(columns="_r")
    out = out.sort_values("_o", kind="stable").drop(columns="_o")
    return conform(out, ("median",) if median else ())


def _factor_rows(da, var: str, column_dim: str, others: list[str], ci: float) -> list[dict]:
    """Rows of a variable with a column per level of a factor (Bambi's ``f|g``, ``f|g_sigma``): each column
    its own term, lme4's name (:func:`~bayeslmm.labels.classify` with the level)."""
    if len(others) > 1:
        raise ValueError(f"{var!r} has dims {others} besides its columns; expected at most the group's levels")
    arr = np.asarray(da.transpose(*SAMPLE_DIMS, *others, column_dim).values, dtype=float)
    levels = [""] if not others else [_label(v) for v in da[others[0]].values]
    rows = []
    for j, column in enumerate(da[column_dim].values):
        effect, group, term = classify(var, _label(column))
        stats = _summarise(arr[..., j], ci)
        for i, level in enumerate(levels):
            idx = () if not others else (i,)
            rows.append({**{k: float(np.asarray(v)[idx]) for k, v in stats.items()},
                         "effect": effect, "group": group, "level": level, "term": term})
    return rows


def _fixed_term(fixed_terms: dict[tuple[str, str], str] | None, variable: str, level: str) -> str:
    if fixed_terms is None:
        raise ValueError(f"the fixed effect {variable!r} has levels: lme4's names of its columns come from the fit's "
                         "design; pass fixed_terms (tables.fixed_terms(fit))")
    return fixed_terms[(variable, level)]


def fixed_terms(fit) -> dict[tuple[str, str], str]:
    """lme4's name of each fixed-effect column of a fit, keyed by its posterior ``(variable, level)``."""
    return fixed_design(fit.formula, fit.data).terms()


def ran_pars_order(formula) -> list[tuple[str, str]]:
    """``(group, term)`` of every ``ran_pars`` row of a formula, in the order tidy tables list them.

    Grouping factors in formula order; within one, its random terms in formula order, each with
    its sds and correlations in broom.mixed's order (:func:`~bayeslmm.labels.sdcor_terms`: for
    ``(1 + x|g)``, ``sd__(Intercept)``, ``cor__(Intercept).x``, ``sd__x``); the residual last (and a
    family's own parameters, :func:`~bayeslmm.labels.auxiliary_variables`: a negative binomial's theta).
    """
    out = [(g, term) for g in formula.grouping_factors for r in formula.random if r.group == g
           for term in sdcor_terms(r.coefs, r.correlated)]
    aux = [(group, term) for _, group, term in auxiliary_variables(formula.family).values()]
    return [*out, (RESIDUAL, RESIDUAL_TERM), *aux]


def _label(value) -> str:
    if isinstance(value, tuple):
        return ":".join(map(str, value))
    return str(value)


def sd_draws(fit) -> dict[tuple[str, str], np.ndarray]:
    """Posterior draws (chains pooled) of every standard deviation, keyed ``(group, term)``.

    Group sds first, in :func:`ran_pars_order` (``("mountainRange", "sd__(Intercept)")``), then the
    residual ``("Residual", "sd__Observation")``. Correlations are not here: :func:`cor_draws`.
    """
    return _ran_pars_draws(fit, SD_PREFIX)


def cor_draws(fit) -> dict[tuple[str, str], np.ndarray]:
    """Posterior draws (chains pooled) of every correlation, keyed ``(group, term)`` as in the tidy table
    (``("subject", "cor__(Intercept).day")``), in :func:`ran_pars_order`; empty for a model without any."""
    return _ran_pars_draws(fit, COR_PREFIX)


def _ran_pars_draws(fit, prefix: str) -> dict[tuple[str, str], np.ndarray]:
    post = fit.idata["posterior"]
    out = {}
    for var in post.data_vars:
        effect, group, term = classify(str(var))
        if effect != "ran_pars":
            continue
        da = post[var]
        columns = [d for d in da.dims if d.endswith(expr_dim(""))]
        if columns:  # a factor's sds: one per column (sd__fA, sd__fB, ...)
            for column in da[columns[0]].values:
                _, group, term = classify(str(var), _label(column))
                if term.startswith(prefix):
                    out[(group, term)] = np.asarray(da.sel({columns[0]: column}).values, dtype=float).reshape(-1)
        elif term.startswith(prefix):
            out[(group, term)] = np.asarray(da.values, dtype=float).reshape(-1)
    rank = {key: i for i, key in enumerate(ran_pars_order(fit.formula))}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def variance_partition_draws(fit) -> dict[str, np.ndarray]:
    """Posterior draws of each grouping factor's share of the variance, in :func:`sd_draws`' order.

    share_g = s_g^2 / (sum_k s_k^2 + sigma^2) over the random intercepts (the tutorial's
    339.7 / (339.7 + 223.8) for ``mixed.lmer``; slopes are left out, as their variance
    depends on the predictor's value; for one grouping factor the share is the intraclass
    correlation; correlations do not enter). The residual's share is under ``"Residual"``, last.
    A GLMM has no residual sd: its shares are on the latent scale, against
    :func:`~bayeslmm.results.latent_residual_variance` (pi^2/3 for the logit link; a negative binomial's
    depends on its theta, draw by draw).
    """
    keep = (sd_term(INTERCEPT), RESIDUAL_TERM)
    parts = {g: s**2 for (g, term), s in sd_draws(fit).items() if term in keep}
    if fit.formula.is_glmm:
        family = fit.formula.family
        mean = float(np.mean(fit.data[fit.formula.response])) if family in COUNT_FAMILIES else None
        theta = nb_size_draws(fit) if family == "negbinomial" else None
        parts[RESIDUAL] = np.broadcast_to(latent_residual_variance(family, mean, theta),
                                          next(iter(parts.values())).shape if parts else (1,))
    total = sum(parts.values())
    return {g: v / total for g, v in parts.items()}


def nb_size_draws(fit) -> np.ndarray:
    """Posterior draws (chains pooled) of a negative binomial model's theta (Bambi's ``alpha``)."""
    return np.asarray(fit.idata["posterior"][NB_SIZE_VARIABLE].values, dtype=float).reshape(-1)


def diagnostics(fit, tidy: pd.DataFrame | None = None) -> dict[str, float]:
    """Sampler diagnostics of a fit.

    Returns
    -------
    dict
        ``divergences``, ``max_treedepth_hits``, ``max_r_hat``, ``min_ess_bulk`` and
        ``min_ess_tail`` over fixed effects, standard deviations and correlations (every
        ``fixed`` and ``ran_pars`` row), ``draws`` and ``chains``.
    """
    stats = fit.idata["sample_stats"]
    if tidy is None:
        tidy = fit.tidy(effects=("fixed", "ran_pars"))
    core = tidy[tidy["effect"].isin(["fixed", "ran_pars"])]
    post = fit.idata["posterior"]
    treedepth = int(stats["reached_max_treedepth"].sum()) if "reached_max_treedepth" in stats else 0
    return {
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
        "max_treedepth_hits": treedepth,
        "max_r_hat": float(core["r_hat"].max()),
        "min_ess_bulk": float(core["ess_bulk"].min()),
        "min_ess_tail": float(core["ess_tail"].min()),
        "chains": int(post.sizes["chain"]),
        "draws": int(post.sizes["draw"]),
    }


def fixed_draws(fit, term: str) -> np.ndarray:
    """All posterior draws (chains pooled) of one fixed-effect term in lme4's naming."""
    return column_draws(fit.idata["posterior"], fixed_design(fit.formula, fit.data).column(term))


def column_draws(posterior, column: FixedColumn) -> np.ndarray:
    """All posterior draws (chains pooled) of one column of the fixed-effect design."""
    da = posterior[column.variable]
    if column.level:
        (dim,) = [d for d in da.dims if d not in SAMPLE_DIMS]
        da = da.isel({dim: [str(v) for v in da[dim].values].index(column.level)})
    return np.asarray(da.transpose(*SAMPLE_DIMS).values, dtype=float).reshape(-1)


def format_table(df: pd.DataFrame, digits: int = DIGITS) -> str:
    """Plain-text rendering for the console: no index, numbers by :func:`~bayeslmm.numbers.format_number`."""
    return df.to_string(index=False, formatters={c: lambda v: format_number(v, digits) for c in df.columns}, na_rep="")
