"""What every fit answers, Bayesian or lme4's: one tidy schema and the accessors derived from it.

A fit has a ``name``, a ``formula``, a ``method`` (``bayes``, ``reml``, ``ml``, ``ols``) and a
``tidy(ci)`` table in broom.mixed's schema (:data:`TIDY_COLUMNS`), computed once per interval
mass and kept (pyfixest derives ``coef``/``se``/``pvalue`` from ``tidy()`` the same way). lme4's
accessors -- :func:`fixef_table`, :func:`ranef_table`, :func:`varcorr_table` -- are views of it
with the estimate first.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd

#: broom.mixed's columns (``.`` written as ``_``): Bayesian rows fill ``r_hat`` and the ESS,
#: lme4's fixed effects ``statistic``, ``df`` and ``p_value``; the others are missing.
TIDY_COLUMNS = [
    "model", "method", "effect", "group", "level", "term",
    "estimate", "std_error", "conf_low", "conf_high", "r_hat", "ess_bulk", "ess_tail", "statistic", "df", "p_value",
]
#: Every kind of row, in the order tables list them.
EFFECTS = ("fixed", "ran_pars", "ran_vals")


class Fit(Protocol):
    """What both :class:`~bayeslmm.engines.bayes.BayesFit` and :class:`~bayeslmm.lme4.frequentist.FreqFit` answer."""

    name: str
    method: str

    def tidy(self, ci: float = 0.95, effects: tuple[str, ...] = EFFECTS) -> pd.DataFrame: ...


def conform(table: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """``table`` with exactly :data:`TIDY_COLUMNS` (missing ones empty), then ``extra``, in that order."""
    return table.reindex(columns=[*TIDY_COLUMNS, *extra]).reset_index(drop=True)


def memo(cache: dict, key, compute):
    """``cache[key]``, computing it once (each fit keeps such a cache of its summaries)."""
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _estimate_first(t: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    stats = [c for c in ("estimate", "std_error", "conf_low", "conf_high", "r_hat", "ess_bulk", "ess_tail",
                         "statistic", "df", "p_value") if c in t and t[c].notna().any()]
    return t[[*keys, *stats]]


def fixef_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Fixed effects (lme4's ``fixef``), indexed by term, estimate first."""
    return _estimate_first(tidy[tidy["effect"] == "fixed"], ["term"]).set_index("term")


def varcorr_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Standard deviations and correlations per group, the residual last (lme4's ``VarCorr``)."""
    return _estimate_first(tidy[tidy["effect"] == "ran_pars"], ["group", "term"]).reset_index(drop=True)


def ranef_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Each group level's effect (lme4's ``ranef``)."""
    return _estimate_first(tidy[tidy["effect"] == "ran_vals"], ["group", "level", "term"]).reset_index(drop=True)
