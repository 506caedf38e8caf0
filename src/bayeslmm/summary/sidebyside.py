"""lme4's answer beside the posterior, parameter by parameter, saying where they disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.intervals import eti

SIDE_COLUMNS = [
    "model", "effect", "group", "term", "lme4_method", "lme4_estimate", "lme4_std_error", "lme4_conf_low",
    "lme4_conf_high", "lme4_ci", "post_mean", "post_median", "post_sd", "post_conf_low", "post_conf_high", "agreement",
    "ci",
]
#: A posterior mean this many posterior sds from lme4's estimate is reported as a difference.
SHIFT_SD = 0.5
#: A posterior interval this many times wider than lme4's (profile) interval is reported.
WIDER = 1.5


def side_by_side(bayes_rows: pd.DataFrame, freq_rows: pd.DataFrame, ngroups: dict[str, int] | None = None,
                 ci_kind: pd.Series | None = None, ci: float = 0.95,
                 boundary: list[tuple[str, str]] | None = None) -> pd.DataFrame:
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
        Standard deviations lme4 put at 0 (a singular fit, :meth:`FreqFit.boundary_terms`).

    Returns
    -------
    DataFrame
        ``SIDE_COLUMNS``; fixed effects and standard deviations only (group levels are many).
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
    out = b.merge(f, on=keys, how="left")
    at_zero = set(boundary or ())
    out["agreement"] = [agreement(r, (ngroups or {}).get(r["group"]), (r["group"], r["term"]) in at_zero)
                        for _, r in out.iterrows()]
    out["ci"] = ci
    return out[SIDE_COLUMNS].reset_index(drop=True)


def agreement(row: pd.Series, ngroups: int | None = None, at_boundary: bool = False) -> str:
    """Where lme4 and the posterior disagree materially, in words; ``"agree"`` otherwise.

    An sd that lme4 put at 0 (``at_boundary``: a singular fit) is said to be so, rather than
    "outside the posterior interval": a posterior of an sd never reaches exactly 0.
    """
    notes = []
    est, mean, sd = row["lme4_estimate"], row["post_mean"], row["post_sd"]
    if not np.isfinite(est):
        return "no lme4 value"
    if at_boundary:
        return (f"lme4 at the boundary (singular fit: sd = 0); the posterior puts it between "
                f"{row['post_conf_low']:.3g} and {row['post_conf_high']:.3g}")
    z = abs(mean - est) / sd if sd > 0 else 0.0
    if z > SHIFT_SD:
        notes.append(f"posterior mean {z:.1f} sd from lme4's estimate")
    lo, hi = row["lme4_conf_low"], row["lme4_conf_high"]
    plo, phi = row["post_conf_low"], row["post_conf_high"]
    if row["effect"] == "fixed" and np.isfinite(lo) and np.isfinite(hi):
        if (lo > 0 or hi < 0) != (plo > 0 or phi < 0):
            side = "lme4's CI" if (lo > 0 or hi < 0) else "the posterior interval"
            notes.append(f"only {side} excludes 0")
    if row["effect"] == "ran_pars":
        if not plo <= est <= phi:
            notes.append("lme4's estimate lies outside the posterior interval")
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo and (phi - plo) > WIDER * (hi - lo):
            why = f" (only {ngroups} groups)" if ngroups and ngroups < 20 else ""
            notes.append(f"posterior interval {(phi - plo) / (hi - lo):.1f}x wider than lme4's{why}")
        elif ngroups is not None and ngroups < 10 and row["post_mean"] > 1.1 * row["post_median"]:
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
