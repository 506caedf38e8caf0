"""Checks of a formula against data: errors for what cannot be fitted, warnings that teach.

Errors raise :class:`~bayeslmm.errors.DataError` or :class:`~bayeslmm.errors.FormulaError`
with one line naming the problem and the fix; warnings come back as text for the CLI
(``warning: ...``) and the report.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import NamedTuple, get_args

import numpy as np
import pandas as pd
from scipy import sparse, special

from bayeslmm.errors import DataError, FormulaError, OptionsError
from bayeslmm.model import rterms
from bayeslmm.model.formula import Formula, group_codes, resolve
from bayeslmm.model.options import COUNT_FAMILIES, NaAction

FEW_LEVELS = 5
#: A correlated term ``(1 + x|g)`` has k(k+1)/2 covariance parameters (k sds, k(k-1)/2 correlations);
#: with fewer than FEW_LEVELS levels of its grouping factor per parameter (the ratio asked of a
#: single sd) its correlations lean on their prior and lme4's fit is often singular.
LEVELS_PER_COVARIANCE = FEW_LEVELS
#: A non-negative integer response with at least this share of zeros looks like counts ...
COUNT_ZEROS = 0.05
#: ... as does one with 0 among at most this many distinct values.
COUNT_FEW = 10
#: A numeric predictor with 3 to this many integer values gets the factor() hint.
FACTOR_FEW = 6
#: Level of the interaction F test behind the nesting warning: its false-alarm rate on truly
#: crossed designs (exact for normal errors; see :func:`cell_tests` and benchmarks/nesting_check.py).
NESTING_ALPHA = 0.01
#: A factor whose main effect, tested against the interaction, is significant at this level has
#: labels that act as the same units across the other factor.
CONSISTENT_ALPHA = 0.05
#: Pairs of grouping factors that both have more levels than this are not checked for reused
#: labels (the test's cross-product matrix is dense in the smaller factor).
NESTING_MAX_LEVELS = 1000


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


def _check_response(formula: Formula, df: pd.DataFrame) -> np.ndarray:
    """The response as numbers, refused (one line) where its family cannot describe it."""
    from bayeslmm.model.formula import binary_response

    name = formula.response
    if formula.cbind:
        s, f = (np.asarray(df[rterms.r_name(e)], dtype=float) for e in formula.cbind)
        for what, v in (("successes", s), ("failures", f)):
            bad = (v < 0) | (v != np.round(v))
            if bad.any():
                raise DataError(f"{what} of {name!r} must be whole numbers >= 0 (row {int(np.argmax(bad)) + 1} has "
                                f"{v[bad][0]:g})")
        if ((s + f) == 0).any():
            raise DataError(f"{int(((s + f) == 0).sum())} row(s) of {name!r} have no trials (0 successes and 0 "
                            "failures); remove them")
        return s / (s + f)
    y = df[name]
    if formula.family == "binomial":
        return binary_response(y, name)[0]
    if not pd.api.types.is_numeric_dtype(y) or _is_bool(y):
        values = sorted(map(str, y.dropna().unique()))
        if len(values) == 2:
            raise DataError(f"response {name!r} is not numeric: its two values ({values[0]!r}, {values[1]!r}) make "
                            "it a yes/no outcome: fit it with --family binomial (glmer(..., family = binomial); "
                            f"{values[0]!r}, first in R's order, counts as failure)")
        raise DataError(f"response {name!r} is not numeric ({y.dtype}); a {formula.family} mixed model needs "
                        "a numeric response")
    v = y.to_numpy(dtype=float)
    if formula.family in COUNT_FAMILIES and ((v < 0).any() or (v[np.isfinite(v)] != np.round(v[np.isfinite(v)])).any()):
        raise DataError(f"response {name!r} must be counts (whole numbers >= 0) for --family {formula.family}; it "
                        f"has {v[(v < 0) | (v != np.round(v))][0]:g}")
    return v


def check_data(formula: Formula, df: pd.DataFrame) -> None:
    """Refuse data the model cannot be fitted to (one-line :class:`DataError`)."""
    y = pd.Series(_check_response(formula, df))
    for col in [*([] if formula.is_glmm else [formula.response]), *_numeric_columns(formula, df)]:
        values = df[col].to_numpy(dtype=float)
        if np.isinf(values).any():
            raise DataError(f"column {col!r} has {int(np.isinf(values).sum())} infinite value(s); remove or fix them")
    if len(df) == 0:
        raise DataError("no rows left to fit; check the data and missing values")
    if np.ptp(y.to_numpy(dtype=float)) == 0:
        what = {"binomial": "every trial has the same outcome", "poisson": "every count is the same",
                "negbinomial": "every count is the same"}
        raise DataError(f"response {formula.response!r} is constant ({what.get(formula.family, 'one value')}); "
                        "there is nothing to model")
    for col in _numeric_columns(formula, df):
        if np.ptp(df[col].to_numpy(dtype=float)) == 0:
            raise DataError(f"predictor {col!r} is constant; remove it from the formula")
    for r in formula.random:
        levels, _ = group_codes(df, r.group)
        if len(levels) < 2:
            raise DataError(f"grouping factor {r.group!r} has only one level; a random effect needs at least two "
                            f"groups (drop {r.lme4})")
        q = len(levels) * len(r.coefs)
        # lme4's check.nobs.vs.nRE, an error by default; glmer (allow.n = TRUE, no residual to tell apart)
        # stops only below n, so a GLMM may have one effect per row (an observation-level effect)
        if len(df) < q or (len(df) == q and not formula.is_glmm):
            raise DataError(f"{len(df)} rows for {q} random effects of {r.lme4} ({len(levels)} levels x "
                            f"{len(r.coefs)} coefficients): they cannot be told apart from the residual (lme4 stops: "
                            "number of observations <= number of random effects); drop coefficients from the term")
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
    return n + sum(_covariance_parameters(r) for r in resolve(formula, df).random)  # a factor slope: a column per level


def _covariance_parameters(term) -> int:
    """lme4's count for one random term: k sds, and k(k-1)/2 correlations if it is correlated."""
    k = len(term.coefs)
    return k * (k + 1) // 2 if term.correlated else k


def design_warnings(formula: Formula, df: pd.DataFrame) -> list[str]:
    """Modelling advice from the data: response type, few levels, reused labels, confounding, scaling."""
    notes = [n for n in [response_warning(df, formula.response)] if n] if not formula.is_glmm else []
    if formula.is_glmm:  # the advice below reads the response as numbers (a proportion, 0/1, counts)
        df = df.assign(**{formula.response: _check_response(formula, df)})
    groups = formula.grouping_factors
    for g in groups:
        levels, _ = group_codes(df, g)
        if len(levels) < FEW_LEVELS:
            notes.append(f"grouping factor {g!r} has only {len(levels)} levels: its standard deviation will lean on "
                         f"the prior; with fewer than {FEW_LEVELS} levels consider it a fixed effect")
    notes += nesting_warnings(formula, df)
    fixed_cols = {t for t in formula.fixed if t in df.columns}
    for g in groups:
        if g in fixed_cols:
            notes.append(f"{g!r} is both a fixed effect and a grouping factor: the two compete for the same "
                         "differences between groups; keep one")
    for r in formula.random:
        for s in r.slopes:
            if s in df.columns and not varies_within(df, s, r.group):
                corr = " (and its correlations)" if r.correlated else ""
                notes.append(f"{s!r} does not vary within levels of {r.group!r}, so the random slope on it in {r.lme4}"
                             f"{corr} cannot be estimated from the data; drop it")
    notes += [n for n in (covariance_warning(r, df) for r in formula.random) if n]
    if formula.family == "binomial":
        notes += [n for n in [separation_warning(formula, df)] if n]
    notes += [n for n in (integer_predictor_hint(df, t) for t in formula.fixed) if n]
    for col in _numeric_columns(formula, df):
        x = df[col].to_numpy(dtype=float)
        sd = x.std(ddof=1) if len(x) > 1 else 0.0
        if sd > 0 and (abs(x.mean()) > 3 * sd or sd > 10 or sd < 0.1):
            notes.append(f"predictor {col!r} is far from standardised (mean {x.mean():.3g}, sd {sd:.3g}); "
                         "consider a scaled copy (the tutorial's scale(), prepare.scale in a study file) so "
                         "effects and default priors are on a comparable scale")
    return notes


def separating_direction(x: np.ndarray, sign: np.ndarray) -> np.ndarray | None:
    """A direction ``b`` of the coefficients along which the likelihood of a binomial model only rises, or None.

    ``sign`` is +1 for rows with only successes, -1 for rows with only failures, 0 for rows with
    both. Such a ``b`` has ``sign * x'b >= 0`` in every row with one kind of outcome, ``x'b = 0`` in
    rows with both, and ``x'b != 0`` somewhere (complete or quasi-complete separation). Found by a
    linear programme, as R's detectseparation does: maximise the sum of ``sign * x'b`` with
    ``|b_j| <= 1`` (columns scaled to a largest value of 1); separation when the optimum is above 0.
    ``b`` is returned on the scale of the columns of ``x``.
    """
    from scipy.optimize import linprog

    scale = np.abs(x).max(axis=0)
    scale = np.where(scale == 0, 1.0, scale)
    xs = x / scale
    pure, mixed = sign != 0, sign == 0
    res = linprog(-(sign[pure] @ xs[pure]), A_ub=-(sign[pure, None] * xs[pure]), b_ub=np.zeros(int(pure.sum())),
                  A_eq=xs[mixed] if mixed.any() else None, b_eq=np.zeros(int(mixed.sum())) if mixed.any() else None,
                  bounds=[(-1, 1)] * xs.shape[1], method="highs")
    if res.status != 0 or -res.fun <= 1e-7 * max(1.0, float(np.abs(xs[pure]).sum())):
        return None
    return res.x / scale  # on the columns of x


def separation_warning(formula: Formula, df: pd.DataFrame) -> str | None:
    """Complete or quasi-complete separation of a binomial response by the fixed effects, in one line (or None).

    When some direction of the fixed-effect coefficients only raises the likelihood
    (:func:`separating_direction`), their maximum-likelihood estimate runs off to infinity (lme4
    reports huge estimates and SEs, or fails) and a posterior rests on its prior there. The line
    names the columns that separate the outcomes alone (with the intercept), or else those of the
    direction found, and how many rows they predict exactly. Random effects are not in ``x``: a
    group with only failures is what their shrinkage handles.
    """
    from bayeslmm.labels import INTERCEPT
    from bayeslmm.model.formula import binary_response, fixed_design

    try:
        design = fixed_design(formula, df)
    except Exception:  # advice only: building the model for the fit reports the real problem
        return None
    x, names = design.X, list(design.names)
    if formula.cbind:
        s, f = (np.asarray(df[rterms.r_name(e)], dtype=float) for e in formula.cbind)
    else:
        s = binary_response(df[formula.response], formula.response)[0]
        f = 1 - s
    sign = np.where(f == 0, 1.0, np.where(s == 0, -1.0, 0.0))  # 0: rows with both outcomes
    b = separating_direction(x, sign)
    if b is None:
        return None
    base = [names.index(INTERCEPT)] if INTERCEPT in names else []
    alone = [j for j, n in enumerate(names) if n != INTERCEPT and separating_direction(x[:, [*base, j]], sign)
             is not None]
    cols = alone or [j for j, v in enumerate(b) if abs(v) > 1e-6]
    direction = np.zeros(len(names))
    direction[cols] = b[cols] if not alone else 0.0
    if alone:  # the rows the first column alone predicts
        direction[[*base, alone[0]]] = separating_direction(x[:, [*base, alone[0]]], sign)
    eta = sign * (x @ direction)
    rows = int((eta > 1e-9 * max(1.0, float(np.abs(eta).max()))).sum())
    what = ", ".join(names[j] for j in cols)
    one = len(cols) == 1
    return (f"separation (complete or quasi-complete): {what} predict{'s' if one else ''} the outcome of at least "
            f"{rows} of {len(df)} rows exactly, so {'its' if one else 'their'} effect has no finite maximum-likelihood "
            "estimate (lme4's runs off with a huge SE) and the posterior leans on the prior there; merge sparse levels "
            "or drop the term, or read its interval as the prior's")


def covariance_warning(term, df: pd.DataFrame) -> str | None:
    """A warning when a correlated term has more covariance parameters than its groups can support.

    A term of k coefficients has k(k+1)/2 (k sds, k(k-1)/2 correlations), all estimated from the
    levels of one grouping factor; fewer than :data:`LEVELS_PER_COVARIANCE` levels per parameter
    draws the warning (8 levels for ``(1 + x|g)``'s 3 do; 15 do not).
    """
    if not term.correlated:
        return None
    k = len(term.coefs)
    n_par = k * (k + 1) // 2
    levels = len(group_codes(df, term.group)[0])
    if levels >= LEVELS_PER_COVARIANCE * n_par:
        return None
    cors = "correlations" if n_par - k > 1 else "correlation"
    return (f"{term.lme4} has {n_par} covariance parameters ({k} sds, {n_par - k} {cors}) for {levels} levels of "
            f"{term.group!r} (fewer than {LEVELS_PER_COVARIANCE} per parameter): the {cors} will lean on the LKJ "
            f"prior and lme4's fit is often singular; consider {term.lme4.replace('|', '||')} or fewer terms")


def response_warning(df: pd.DataFrame, response: str) -> str | None:
    """A warning if a numeric response looks binary or like counts, which a Gaussian model misdescribes.

    Binary: exactly two distinct values. Counts: non-negative integers with at least
    :data:`COUNT_ZEROS` of them zero, or at most :data:`COUNT_FEW` distinct values including 0
    (a Poisson count of mean 5 has about 12). A continuous response, even rounded to integers,
    has many distinct values and few zeros (the dragons' testScore: none of this).
    """
    if response not in df.columns or not pd.api.types.is_numeric_dtype(df[response]) or _is_bool(df[response]):
        return None
    y = df[response].to_numpy(dtype=float)
    distinct = np.unique(y)
    if distinct.size == 2:
        lo, hi = distinct
        return (f"response {response!r} takes only the values {lo:g} and {hi:g}: a yes/no outcome fitted as "
                f"Gaussian gets predictions outside {lo:g}-{hi:g} and the wrong uncertainty; fit it with --family "
                "binomial (lme4's glmer(..., family = binomial))")
    if distinct.size < 2 or distinct[0] < 0 or not np.all(distinct == np.round(distinct)):
        return None
    zeros = float(np.mean(y == 0))
    if zeros >= COUNT_ZEROS or (distinct[0] == 0 and distinct.size <= COUNT_FEW):
        return (f"response {response!r} looks like counts (non-negative integers: {distinct.size} distinct values, "
                f"{zeros:.0%} zeros): a Gaussian model of counts can predict impossible negative values and assumes "
                "the same spread at every mean; fit counts with --family poisson (lme4's glmer(..., family = "
                "poisson)), or --family negbinomial when they vary more than Poisson's (lme4's glmer.nb), with "
                "offset(log(exposure)) if they were counted over different efforts")
    return None


def integer_predictor_hint(df: pd.DataFrame, term: str) -> str | None:
    """A hint if a numeric fixed effect (a plain column) takes 3 to :data:`FACTOR_FEW` integer values.

    It enters as one linear trend, which may be meant; if the values are categories (periods,
    visits, doses), ``factor(x)`` gives each its own effect. Two values are left alone: for them
    the trend and the factor are the same model.
    """
    if term not in df.columns or not pd.api.types.is_numeric_dtype(df[term]) or _is_bool(df[term]):
        return None
    distinct = np.unique(df[term].to_numpy(dtype=float))
    if not 3 <= distinct.size <= FACTOR_FEW or not np.all(distinct == np.round(distinct)):
        return None
    return (f"predictor {term!r} takes only {distinct.size} integer values ({', '.join(f'{v:g}' for v in distinct)})"
            f": it enters as one straight-line trend across them; if that is meant, keep it, but if the values are "
            f"categories (periods, visits, doses), factor({term}) gives each its own effect")


def _fixed_matrix(formula: Formula, df: pd.DataFrame) -> np.ndarray:
    """The fixed-effect matrix (as :func:`~bayeslmm.model.formula.model_frame` builds it, without the
    random blocks); the intercept alone where it cannot be built (the fit then says why)."""
    from bayeslmm.model.formula import fixed_design

    try:
        return fixed_design(formula, df).X
    except Exception:  # advice only: building the model for the fit reports the real problem
        return np.ones((len(df), 1))


def nesting_warnings(formula: Formula, df: pd.DataFrame) -> list[str]:
    """Advice from :func:`label_reuse` for each pair of the formula's grouping factors."""
    groups = [g for g in formula.grouping_factors if ":" not in g]
    notes: list[str] = []
    fixed = functools.cache(lambda: _fixed_matrix(formula, df))
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            others = tuple(g for g in formula.grouping_factors if g not in (a, b))
            verdict = label_reuse(df, a, b, formula.response, fixed, others)
            if verdict is None:
                continue
            t = verdict.test
            ftest = f"F = {t.f:.2f} on {t.df_num} and {t.df_den} df, p = {t.p:.2g}"
            if verdict.inner is None:
                notes.append(f"{a!r} and {b!r} are crossed and each has consistent effects, but their {a}:{b} cells "
                             f"differ beyond them ({ftest}): consider adding (1|{a}:{b})")
                continue
            outer, inner = verdict.outer, verdict.inner
            where = "every level" if verdict.every_level else "several levels"
            notes.append(
                f"labels of {inner!r} recur within {where} of {outer!r} but do not act as the same units: the "
                f"{outer}:{inner} cells differ beyond (1|{outer}) + (1|{inner}) ({ftest}) while its labels "
                f"have no consistent effect across {outer!r}. If its labels name different units in each {outer}, "
                f"nest them: (1|{outer}/{inner}) (or a column {outer}:{inner} as the grouping factor)")
    return notes


def varies_within(df: pd.DataFrame, col: str, group: str) -> bool:
    """Whether ``col`` takes more than one value inside at least one level of ``group``."""
    _, codes = group_codes(df, group)
    return bool((pd.Series(df[col].to_numpy()).groupby(codes).nunique() > 1).any())


class CellTest(NamedTuple):
    """F tests on the cells of two grouping factors ``a`` and ``b`` (see :func:`cell_tests`).

    Attributes
    ----------
    f, df_num, df_den, p : float, int, int, float
        Interaction F statistic, its degrees of freedom and p-value.
    p_a, p_b : float
        Main effect of ``a`` (given ``b``) and of ``b`` (given ``a``), each tested against the
        interaction mean square (1.0 where the data hold no such contrast).
    """

    f: float
    df_num: int
    df_den: int
    p: float
    p_a: float
    p_b: float


class LabelReuse(NamedTuple):
    """Verdict of :func:`label_reuse`: ``inner``'s labels look reused within ``outer``.

    ``outer`` and ``inner`` are ``None`` when both factors' labels act consistently: a truly
    crossed design whose cells still differ (an interaction).
    """

    outer: str | None
    inner: str | None
    every_level: bool
    test: CellTest


def _demean(v: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Columns of ``v`` minus their group means: the residuals after the group dummies."""
    counts = np.bincount(codes, minlength=n_groups)
    sums = np.stack([np.bincount(codes, col, n_groups) for col in v.T], axis=1)
    return v - (sums / counts[:, None])[codes]


def _rss(gram: np.ndarray, xty: np.ndarray, yty: float) -> tuple[float, int]:
    """Residual sum of squares and rank of a least-squares fit given its cross-products."""
    if gram.size == 0:
        return yty, 0
    w, vec = np.linalg.eigh(gram)
    keep = w > 1e-9 * max(float(w.max()), 1e-300)
    proj = vec[:, keep].T @ xty
    return max(yty - float(proj @ (proj / w[keep])), 0.0), int(keep.sum())


def _absorbed(yx: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[float, int]:
    """RSS and rank of ``y`` on ``[X, dummies of codes]`` (``yx`` = ``[y, X]``)."""
    r = _demean(yx, codes, n_groups)
    y, x = r[:, 0], r[:, 1:]
    rss, rank = _rss(x.T @ x, x.T @ y, float(y @ y))
    return rss, n_groups + rank


def _additive(yx: np.ndarray, a: np.ndarray, na: int, b: np.ndarray, nb: int) -> tuple[float, int]:
    """RSS and rank of ``y`` on ``[X, dummies of a, dummies of b]``: ``a`` absorbed, ``b`` explicit."""
    r = _demean(yx, a, na)
    y, x = r[:, 0], r[:, 1:]
    counts = sparse.csr_matrix((np.ones(a.size), (a, b)), shape=(na, nb))
    dtd = np.diag(np.bincount(b, minlength=nb).astype(float)) - (
        counts.T @ sparse.diags(1.0 / np.bincount(a, minlength=na)) @ counts).toarray()
    dtx = np.stack([np.bincount(b, col, nb) for col in x.T], axis=1).reshape(nb, x.shape[1])
    gram = np.block([[x.T @ x, dtx.T], [dtx, dtd]])
    rss, rank = _rss(gram, np.concatenate([x.T @ y, np.bincount(b, y, nb)]), float(y @ y))
    return rss, na + rank


def cell_tests(y: np.ndarray, X: np.ndarray, a: np.ndarray, b: np.ndarray) -> CellTest | None:
    """F tests of the ``a:b`` cells beyond additive ``a`` and ``b`` effects, given fixed effects ``X``.

    The interaction F compares least-squares fits of ``y`` on ``[X, a, b]`` (dummies) and on
    ``[X, cells]``. Under any additive truth (random or fixed ``a`` and ``b`` effects, either with
    variance 0, balanced or not) it is exactly F-distributed for independent normal errors, so
    the false-alarm rate of ``p < alpha`` is ``alpha``. The main effects (``a`` given ``b`` and
    vice versa) are tested against the interaction mean square, as for random factors.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Fixed-effect matrix.
    a, b : ndarray of int, shape (n,)
        Level codes ``0 .. levels - 1`` of the two factors.

    Returns
    -------
    CellTest or None
        ``None`` when the data hold no interaction contrast or no error degrees of freedom.
    """
    n = y.size
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    if nb > na:  # absorb the factor with more levels, keep the other's dummies explicit
        swapped = cell_tests(y, X, b, a)
        return None if swapped is None else swapped._replace(p_a=swapped.p_b, p_b=swapped.p_a)
    sd = X.std(axis=0)
    yx = np.column_stack([(y - y.mean()) / (y.std() or 1.0), X / np.where(sd > 0, sd, 1.0)])
    cells, cell = np.unique(a * nb + b, return_inverse=True)
    rss_cell, r_cell = _absorbed(yx, cell, cells.size)
    rss_add, r_add = _additive(yx, a, na, b, nb)
    df_num, df_den = r_cell - r_add, n - r_cell
    if df_num <= 0 or df_den <= 0 or rss_cell <= 0:
        return None
    ms_err = rss_cell / df_den
    ms_int = (rss_add - rss_cell) / df_num

    def main_p(rss_without: float, r_without: int) -> float:
        df_main = r_add - r_without
        if df_main <= 0 or ms_int <= 0:
            return 1.0
        return float(special.fdtrc(df_main, df_num, (rss_without - rss_add) / df_main / ms_int))  # F's sf

    f = ms_int / ms_err
    return CellTest(f=float(f), df_num=int(df_num), df_den=int(df_den), p=float(special.fdtrc(df_num, df_den, f)),
                    p_a=main_p(*_absorbed(yx, b, nb)), p_b=main_p(*_absorbed(yx, a, na)))


def _reused_share(inner: np.ndarray, outer: np.ndarray) -> float:
    """Share of ``inner``'s labels that occur in two or more levels of ``outer``."""
    pairs = np.unique(inner * (int(outer.max()) + 1) + outer)
    return float(np.mean(np.bincount(pairs // (int(outer.max()) + 1)) >= 2))


def label_reuse(
    df: pd.DataFrame, a: str, b: str, response: str, X: np.ndarray | Callable[[], np.ndarray] | None = None,
    others: tuple[str, ...] = (),
) -> LabelReuse | None:
    """Whether ``(1|a) + (1|b)`` treats reused labels as the same units.

    Labels recurring across levels of another factor happen in truly crossed designs too (the
    same dragon tested in several ranges). What tells them apart is the response: equal labels
    that are the same units have consistent effects, so the ``a:b`` cells are additive; labels
    reused for different units in each level of the outer factor (site "a" of every range) make
    the cells differ beyond additive effects, while the inner label itself has no consistent
    effect. Decided by :func:`cell_tests`: warn only if the interaction F test has
    ``p < NESTING_ALPHA``, so on crossed designs about 1% of data sets get a false alarm
    (benchmarks/nesting_check.py: 137 of 12,400 seeded crossed data sets, 1.1%, with standard
    deviations of 0, small and large, balanced and not). It catches 95% of Pastes-like data sets
    (10 batches x 3 casks x 2; 2.5% get the other direction) and 76% of the dragons simulator's
    (the rest stay silent: a site sd of 4.5 against a residual 15 is often not detectable).
    The inner factor is the one whose main effect is not significant (``CONSISTENT_ALPHA``)
    while the other's is; if neither is, the one with fewer labels (site a/b/c in 8 ranges). It
    must recur within several outer levels (most of its labels in two or more): labels that each
    lie within one outer level are nested already. If both main effects are significant the
    design is crossed with an interaction (``outer``, ``inner`` = ``None``).

    Parameters
    ----------
    df : DataFrame
    a, b : str
        Two grouping columns.
    response : str
    X : ndarray or callable, optional
        Fixed-effect matrix, or a function returning it (called only if the test runs); default:
        the intercept alone.
    others : tuple of str
        The model's other grouping factors: one equal to the ``a:b`` cells means the interaction
        is modelled already (no verdict); if some are nested within the cells (animals measured
        repeatedly), the test runs on the means of the coarsest of them.
    """
    if ":" in a or ":" in b:
        return None
    levels_a, ca = group_codes(df, a)
    levels_b, cb = group_codes(df, b)
    if min(len(levels_a), len(levels_b)) > NESTING_MAX_LEVELS:
        return None
    can_be_inner = {b: _reused_share(cb, ca) >= 0.5, a: _reused_share(ca, cb) >= 0.5}
    if not any(can_be_inner.values()):
        return None
    cells = np.unique(ca * len(levels_b) + cb, return_inverse=True)[1]
    n_cells = int(cells.max()) + 1
    if n_cells == max(len(levels_a), len(levels_b)) or n_cells >= len(df):
        return None  # the cells are one factor's levels, or hold one row each: no interaction to test
    unit = None
    for g in others:
        _, cg = group_codes(df, g)
        n_g = int(cg.max()) + 1
        within_cells = len(np.unique(cells * n_g + cg)) == n_g
        if within_cells and n_g == n_cells:
            return None  # (1|a:b) is in the model
        if within_cells and (unit is None or n_g < int(unit.max()) + 1):
            unit = cg
    y = df[response].to_numpy(dtype=float)
    X = np.ones((len(df), 1)) if X is None else X() if callable(X) else X
    if unit is not None:  # one row per unit: its mean response and covariates
        size = np.bincount(unit)
        y = np.bincount(unit, y) / size
        X = np.stack([np.bincount(unit, col) / size for col in X.T], axis=1)
        first = np.unique(unit, return_index=True)[1]
        ca, cb = ca[first], cb[first]
    test = cell_tests(y, X, ca, cb)
    if test is None or test.p >= NESTING_ALPHA:
        return None
    consistent_a, consistent_b = test.p_a < CONSISTENT_ALPHA, test.p_b < CONSISTENT_ALPHA
    if consistent_a and consistent_b:
        return LabelReuse(None, None, False, test)
    if consistent_a != consistent_b:
        inner = b if consistent_a else a
    elif len(levels_a) != len(levels_b):
        inner = b if len(levels_b) < len(levels_a) else a
    else:
        inner = b if test.p_b >= test.p_a else a
    if not can_be_inner[inner]:
        return None
    outer = a if inner == b else b
    return LabelReuse(outer, inner, n_cells == len(levels_a) * len(levels_b), test)


def sampler_warnings(diag: dict, ess_min: float = 400.0, engine: str = "bambi", gaussian: bool = True) -> list[str]:
    """Sampler trouble from :func:`bayeslmm.summary.tables.diagnostics`, each with what to do
    (``gaussian``: whether the marginal engine, which has no funnel, could fit the model)."""
    notes = []
    if diag["divergences"]:
        fix = ("use --engine marginal (no funnel) or raise --target-accept (e.g. 0.99)" if engine == "bambi"
               and gaussian else
               "raise --target-accept (e.g. 0.99), rescale predictors, or drop terms the data cannot identify")
        notes.append(f"{diag['divergences']} divergent transitions: the posterior has regions NUTS cannot explore "
                     f"(often a standard deviation near 0 or a correlation near +-1); {fix}")
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
    from bayeslmm.model.formula import materialize

    check_columns(formula, df)
    df, notes = drop_missing(formula, df, na)
    df = materialize(formula, df)
    check_data(formula, df)
    return df, notes + design_warnings(formula, df)
