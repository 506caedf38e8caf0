"""What every fit answers, Bayesian or lme4's: one tidy schema and the accessors derived from it.

A fit has a ``name``, a ``formula``, a ``method`` (``bayes``, ``reml``, ``ml``, ``ols``) and a
``tidy(ci)`` table in broom.mixed's schema (:data:`TIDY_COLUMNS`), computed once per interval
mass and kept (pyfixest derives ``coef``/``se``/``pvalue`` from ``tidy()`` the same way). lme4's
accessors -- :func:`fixef_table`, :func:`ranef_table` -- are views of it with the estimate first;
:func:`varcorr_table` lays its standard deviations and correlations out as lme4 prints ``VarCorr``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from bayeslmm.labels import RESIDUAL, RESIDUAL_TERM, SD_PREFIX, cor_term, sd_term

#: broom.mixed's columns (``.`` written as ``_``): Bayesian rows fill ``r_hat`` and the ESS,
#: lme4's fixed effects ``statistic``, ``df`` and ``p_value``; the others are missing.
TIDY_COLUMNS = [
    "model", "method", "effect", "group", "level", "term",
    "estimate", "std_error", "conf_low", "conf_high", "r_hat", "ess_bulk", "ess_tail", "statistic", "df", "p_value",
]
#: Every kind of row, in the order tables list them.
EFFECTS = ("fixed", "ran_pars", "ran_vals")


def latent_residual_variance(family: str, mean_count: float | None = None, theta=None):
    """The residual variance on the link scale that a GLMM's variance shares are taken against.

    Gaussian models have sigma^2; a GLMM has none, so its shares use the distribution-specific
    variance on the latent scale (Nakagawa, Johnson & Schielzeth 2017, J. R. Soc. Interface): pi^2/3
    for the binomial's logit link (the logistic latent variable), ln(1 + 1/lambda) for the
    Poisson's log link (lognormal approximation at the mean count lambda of the data's rows), and
    ln(1 + 1/lambda + 1/theta) for the negative binomial's (their Table 2; ``theta`` a number, or an
    array of posterior draws, which gives one value per draw).
    """
    if family == "binomial":
        return float(np.pi**2 / 3)
    if family in ("poisson", "negbinomial"):
        if mean_count is None or not mean_count > 0:
            raise ValueError(f"a {family} model's latent residual variance needs the mean count (> 0)")
        if family == "poisson":
            return float(np.log1p(1.0 / mean_count))
        if theta is None:
            raise ValueError("a negative binomial model's latent residual variance needs its theta")
        return np.log1p(1.0 / mean_count + 1.0 / np.asarray(theta, dtype=float))
    raise ValueError(f"no latent residual variance for family {family!r}")


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


#: What the estimates of :func:`varcorr_table` are, by the tidy table's ``method``.
VARCORR_OF = {"bayes": "posterior means", "reml": "REML estimates", "ml": "ML estimates", "ols": "OLS estimates",
              "laplace": "Laplace (ML) estimates", "agq": "AGQ (ML) estimates"}


def varcorr_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Standard deviations and correlations per random term, as lme4's ``print(VarCorr(fit))`` lays them out.

    Columns ``Groups``, ``Name``, ``Std.Dev.``, ``Corr`` (and ``Corr.2``, ... for terms of three or
    more coefficients: lme4 prints them under one heading): one row per coefficient of each random
    term, its group named on the term's first row; row p of a correlated term holds its
    correlations with the term's coefficients before it (the lower triangle of the correlation
    matrix), missing elsewhere; the residual last (``Residual``, no name). The values are the
    ``estimate`` column of ``tidy``'s ``ran_pars`` rows of one fit: posterior means for a Bayesian fit
    (the columns' name says which, :data:`VARCORR_OF`), lme4's estimates for its fits. Coefficients
    of one grouping factor joined by a correlation row form one term; ``(x||g)`` shows as two.
    """
    rp = tidy[tidy["effect"] == "ran_pars"]
    value = dict(zip(zip(rp["group"], rp["term"], strict=True), rp["estimate"], strict=True))
    rows: list[dict] = []
    width = 1
    for group in dict.fromkeys(rp["group"]):
        coefs = [t.removeprefix(SD_PREFIX) for g, t in value if g == group and t.startswith(SD_PREFIX)]
        if group == RESIDUAL:  # the residual sd (a negative binomial's theta is not printed, as lme4's VarCorr)
            coefs = [""] if (RESIDUAL, RESIDUAL_TERM) in value else []
        term: list[str] = []
        for c in coefs:
            if not any((group, cor_term(a, c)) in value for a in term):
                term = []  # no correlation with the coefficients before: a new term
            cors = [value.get((group, cor_term(a, c)), np.nan) for a in term]
            rows.append({"Groups": group if not term else "", "Name": c,
                         "Std.Dev.": value[(group, RESIDUAL_TERM if group == RESIDUAL else sd_term(c))],
                         **{_corr_column(i): r for i, r in enumerate(cors)}})
            term.append(c)
            width = max(width, len(term))
    out = pd.DataFrame(rows, columns=["Groups", "Name", "Std.Dev.", *(_corr_column(i) for i in range(width - 1))])
    methods = set(rp["method"]) if "method" in rp else set()
    out.columns.name = VARCORR_OF.get(next(iter(methods)), None) if len(methods) == 1 else None
    return out


def _corr_column(i: int) -> str:
    return "Corr" if i == 0 else f"Corr.{i + 1}"


def ranef_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Each group level's effect (lme4's ``ranef``)."""
    return _estimate_first(tidy[tidy["effect"] == "ran_vals"], ["group", "level", "term"]).reset_index(drop=True)
