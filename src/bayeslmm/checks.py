"""Checks of a formula against data: errors for what cannot be fitted, warnings that teach.

Errors raise :class:`~bayeslmm.errors.DataError` or :class:`~bayeslmm.errors.FormulaError`
with one line naming the problem and the fix; warnings come back as text for the CLI
(``warning: ...``) and the report.
"""

from __future__ import annotations

import difflib
from typing import Literal, get_args

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError, OptionsError
from bayeslmm.formula import Formula, group_codes

NaAction = Literal["drop", "fail"]
FEW_LEVELS = 5


def check_columns(formula: Formula, df: pd.DataFrame) -> None:
    """Every column the formula names must exist; suggest the closest names otherwise."""
    columns = [str(c) for c in df.columns]
    for name in formula.variables:
        if name not in columns:
            close = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"columns are: {', '.join(columns)}"
            raise FormulaError(f"column {name!r} is not in the data; {hint}")


def drop_missing(formula: Formula, df: pd.DataFrame, na: NaAction = "drop") -> tuple[pd.DataFrame, list[str]]:
    """Drop rows with missing values in the used columns (or refuse them with ``na="fail"``)."""
    if na not in get_args(NaAction):
        raise OptionsError(f"--na must be 'drop' or 'fail', not {na!r}")
    used = list(formula.variables)
    missing = df[used].isna()
    bad_rows = missing.any(axis=1)
    if not bad_rows.any():
        return df, []
    per_col = missing.sum()
    where = ", ".join(f"{c} ({int(n)})" for c, n in per_col.items() if n)
    if na == "fail":
        raise DataError(f"{int(bad_rows.sum())} row(s) have missing values in {where}; "
                        "remove them or use --na drop")
    kept = df.loc[~bad_rows].reset_index(drop=True)
    note = (f"dropped {int(bad_rows.sum())} of {len(df)} rows with missing values in {where} "
            "(use --na fail to refuse them)")
    return kept, [note]


def _numeric_columns(formula: Formula, df: pd.DataFrame) -> list[str]:
    cols = [t for t in formula.fixed if t in df.columns]
    cols += [s for r in formula.random for s in r.slopes if s in df.columns]
    return [c for c in dict.fromkeys(cols) if pd.api.types.is_numeric_dtype(df[c]) and not _is_bool(df[c])]


def _is_bool(s: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(s)


def check_data(formula: Formula, df: pd.DataFrame) -> None:
    """Refuse data the model cannot be fitted to (one-line :class:`DataError`)."""
    y = df[formula.response]
    if not pd.api.types.is_numeric_dtype(y) or _is_bool(y):
        raise DataError(f"response {formula.response!r} is not numeric ({y.dtype}); a Gaussian mixed model needs "
                        "a numeric response")
    for col in [formula.response, *_numeric_columns(formula, df)]:
        values = df[col].to_numpy(dtype=float)
        if np.isinf(values).any():
            raise DataError(f"column {col!r} has {int(np.isinf(values).sum())} infinite value(s); remove or fix them")
    if len(df) == 0:
        raise DataError("no rows left to fit; check the data and missing values")
    if np.ptp(y.to_numpy(dtype=float)) == 0:
        raise DataError(f"response {formula.response!r} is constant; there is nothing to model")
    for col in _numeric_columns(formula, df):
        if np.ptp(df[col].to_numpy(dtype=float)) == 0:
            raise DataError(f"predictor {col!r} is constant; remove it from the formula")
    for r in formula.random:
        levels, _ = group_codes(df, r.group)
        if len(levels) < 2:
            raise DataError(f"grouping factor {r.group!r} has only one level; a random effect needs at least two "
                            f"groups (drop ({' + '.join(r.coefs)}|{r.group}))")
    n_params = _count_parameters(formula, df)
    if len(df) <= n_params:
        raise DataError(f"{len(df)} rows cannot estimate {n_params} parameters; simplify the formula or add data")


def _count_parameters(formula: Formula, df: pd.DataFrame) -> int:
    n = int(formula.intercept) + 1  # + residual sd
    for term in formula.fixed:
        if term in df.columns and not pd.api.types.is_numeric_dtype(df[term]):
            n += max(df[term].nunique() - 1, 1)
        else:
            n += 1
    return n + sum(len(r.coefs) for r in formula.random)


def design_warnings(formula: Formula, df: pd.DataFrame) -> list[str]:
    """Modelling advice from the data: implicit nesting, few levels, confounded terms, scaling."""
    notes: list[str] = []
    groups = formula.grouping_factors
    for g in groups:
        levels, _ = group_codes(df, g)
        if len(levels) < FEW_LEVELS:
            notes.append(f"grouping factor {g!r} has only {len(levels)} levels: its standard deviation will lean on "
                         f"the prior; with fewer than {FEW_LEVELS} levels consider it a fixed effect")
    for a in groups:
        for b in groups:
            if a != b and implicitly_nested(df, inner=b, outer=a, response=formula.response):
                notes.append(
                    f"labels of {b!r} recur within every level of {a!r} and mean different units there (the "
                    f"{b!r} effects differ more between {a!r} levels than between {b!r} labels): the model treats "
                    f"them as crossed. If each {b} belongs to one {a}, nest explicitly: (1|{a}/{b}) or a "
                    f"column {a}:{b}")
    fixed_cols = {t for t in formula.fixed if t in df.columns}
    for g in groups:
        if g in fixed_cols:
            notes.append(f"{g!r} is both a fixed effect and a grouping factor: the two compete for the same "
                         "differences between groups; keep one")
    for r in formula.random:
        for s in r.slopes:
            if s in df.columns and not varies_within(df, s, r.group):
                notes.append(f"{s!r} does not vary within levels of {r.group!r}, so a random slope ({s}|{r.group}) "
                             "cannot be estimated from the data; drop it")
    for col in _numeric_columns(formula, df):
        x = df[col].to_numpy(dtype=float)
        sd = x.std(ddof=1) if len(x) > 1 else 0.0
        if sd > 0 and (abs(x.mean()) > 3 * sd or sd > 10 or sd < 0.1):
            notes.append(f"predictor {col!r} is far from standardised (mean {x.mean():.3g}, sd {sd:.3g}); "
                         "consider a scaled copy (the tutorial's scale(), prepare.scale in a study file) so "
                         "effects and default priors are on a comparable scale")
    return notes


def varies_within(df: pd.DataFrame, col: str, group: str) -> bool:
    """Whether ``col`` takes more than one value inside at least one level of ``group``."""
    _, codes = group_codes(df, group)
    return bool((pd.Series(df[col].to_numpy()).groupby(codes).nunique() > 1).any())


def implicitly_nested(df: pd.DataFrame, inner: str, outer: str, response: str) -> bool:
    """Whether ``inner``'s labels are reused inside levels of ``outer`` for different units.

    Labels recurring across levels of ``outer`` happen in truly crossed designs too (the same
    dragon seen in several ranges). What tells them apart is the response: if the labels are
    the same units, an ``inner`` label has a consistent effect in every ``outer`` level; if they
    are reused names (site "a" of each range), the ``outer:inner`` cells vary about as much
    within a label as between labels. Decided by ANOVA (method-of-moments) variance components
    of the two-way table of cell means: nested when var(outer:inner) > var(inner). Needs
    replicate rows per cell; without them it says no.
    """
    if ":" in inner or ":" in outer:
        return False
    tab = pd.crosstab(df[outer].astype(str), df[inner].astype(str))
    present = tab > 0
    reused = (present.sum(axis=0) >= 2).mean()  # share of inner labels seen in 2+ outer levels
    if reused < 0.5 or tab.to_numpy()[present.to_numpy()].max() < 2:
        return False
    keys = [df[outer].astype(str), df[inner].astype(str)]
    cells = df.groupby(keys, observed=True)[response].agg(["mean", "var", "size"])
    ms_within = float(np.nanmean(cells["var"]))
    n_cell = float(cells["size"].mean())
    means = cells["mean"].unstack()
    a, b = means.shape
    centred = means.sub(means.mean(axis=1), axis=0)
    inner_eff = centred.mean(axis=0)
    interaction = centred.sub(inner_eff, axis=1)
    # ANOVA mean squares of the two-way table of cell means (outer levels as blocks)
    ms_inter = n_cell * float(np.nansum(interaction.to_numpy() ** 2)) / max((a - 1) * (b - 1), 1)
    ms_inner = a * n_cell * float(np.nansum(inner_eff.to_numpy() ** 2)) / max(b - 1, 1)
    var_inter = max((ms_inter - ms_within) / n_cell, 0.0)
    var_inner = max((ms_inner - ms_inter) / (a * n_cell), 0.0)
    return var_inter > var_inner


def sampler_warnings(diag: dict, ess_min: float = 400.0, engine: str = "bambi") -> list[str]:
    """Sampler trouble from :func:`bayeslmm.tables.diagnostics`, each with what to do."""
    notes = []
    if diag["divergences"]:
        fix = ("use --engine marginal (no funnel) or raise --target-accept (e.g. 0.99)" if engine == "bambi" else
               "raise --target-accept (e.g. 0.99), rescale predictors, or drop terms the data cannot identify")
        notes.append(f"{diag['divergences']} divergent transitions: the posterior has regions NUTS cannot explore "
                     f"(often a standard deviation near 0); {fix}")
    if diag["max_r_hat"] > 1.01:
        notes.append(f"r_hat up to {diag['max_r_hat']:.3f} (> 1.01): chains disagree; run more --draws and --tune")
    if diag["min_ess_bulk"] < ess_min or diag["min_ess_tail"] < ess_min:
        notes.append(f"effective sample size as low as {min(diag['min_ess_bulk'], diag['min_ess_tail']):.0f} "
                     f"(< {ess_min:.0f}): intervals are imprecise; run more --draws")
    if diag.get("max_treedepth_hits"):
        notes.append(f"{diag['max_treedepth_hits']} draws hit the maximum tree depth: the sampler is working hard; "
                     "consider rescaling predictors or reparameterising")
    return notes


def validate(formula: Formula, df: pd.DataFrame, na: NaAction = "drop") -> tuple[pd.DataFrame, list[str]]:
    """All checks before a fit: columns, missing values, data errors, design warnings.

    Returns
    -------
    (DataFrame, list of str)
        The rows to fit and the warnings to show.
    """
    from bayeslmm.formula import materialize

    check_columns(formula, df)
    df, notes = drop_missing(formula, df, na)
    df = materialize(formula, df)
    check_data(formula, df)
    return df, notes + design_warnings(formula, df)
