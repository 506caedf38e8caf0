"""Parse lme4's formula syntax and translate it for Bambi.

Handles ``(1|g)``, ``(x|g)``, ``(1 + x|g)``, ``(0 + x|g)``, ``(x||g)``, ``(1|a/b)`` and
``(1|a:b)`` random terms beside ordinary fixed-effect terms: columns, interactions, and R's
idioms (``factor(x)``, ``I(x^2)``, ``log/exp/sqrt/scale/poly``, backticked names, ``offset()``,
a transformed response), which :func:`materialize` evaluates into columns named as R names the
terms (:mod:`bayeslmm.model.rterms`). Parsing is pure string work; :func:`fixed_design` builds the
fixed-effect matrix with every column's names (formulae's, as Bambi builds it), :func:`model_frame`
the arrays (response, fixed-effect matrix, random-effect blocks) that the frequentist and
marginal engines use; :func:`drop_aliased` drops collinear terms as lme4 does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError
from bayeslmm.labels import INTERCEPT, TRIALS_COLUMN, FixedColumn, RandomColumn, fixed_columns, random_columns
from bayeslmm.model import rterms


@dataclass(frozen=True)
class RandomTerm:
    """One random-effect term ``(expr | group)``.

    Attributes
    ----------
    group : str
        Grouping factor; ``a:b`` for an interaction of two columns.
    intercept : bool
        Whether the term has a random intercept.
    slopes : tuple of str
        Variables with random slopes.
    correlated : bool
        Whether the term is a correlated block: lme4's ``|`` term with more than one coefficient.
        A factor's columns are known from the data only: :func:`resolve_term` sets it then.
    split : bool
        A piece of an ``(x || g)`` term, split as lme4 splits it (over the written terms only).
    columns : tuple of RandomColumn, optional
        The coefficients' columns, from the data (:func:`resolve_term`; a factor slope is a column
        per level, ``fA``, ``fB``); ``None`` until the term meets the data.
    """

    group: str
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool
    split: bool = False
    columns: tuple[RandomColumn, ...] | None = None

    @property
    def coefs(self) -> tuple[str, ...]:
        """Coefficient names in lme4's order: ``(Intercept)`` first, then the slopes' columns.

        Resolved against the data (:attr:`columns`), a factor ``f`` gives a name per column
        (``fA``, ``fB``, ...); before that, each slope's own name.
        """
        if self.columns is not None:
            return tuple(c.name for c in self.columns)
        return (("(Intercept)",) if self.intercept else ()) + tuple(
            c for s in self.slopes for c in rterms.column_names(s))

    @property
    def may_correlate(self) -> bool:
        """Whether the data may make the term a correlated block (a slope that may be a factor)."""
        return self.correlated or (self.columns is None and any(_may_be_factor(s) for s in self.slopes))

    @property
    def group_columns(self) -> tuple[str, ...]:
        """Data columns that make up the grouping factor."""
        return tuple(self.group.split(":"))

    @property
    def lme4(self) -> str:
        """The term in lme4's syntax: ``(1 + Days|Subject)``, ``(0 + x|g)``, ``(1|g)``."""
        slopes = [rterms.r_name(s) for s in self.slopes]
        return f"({' + '.join(['1' if self.intercept else '0', *slopes])}|{self.group})"


def _may_be_factor(slope: str) -> bool:
    """Whether a slope may be a factor: a column (the data says) or a ``factor()`` call."""
    call = rterms.call_of(slope)
    return rterms.is_name(slope) or (call is not None and call[0] in rterms.FACTOR_FUNCS)


@dataclass(frozen=True)
class Formula:
    """A parsed lmer formula.

    Attributes
    ----------
    text : str
        The formula as the user wrote it.
    response : str
        Response column.
    intercept : bool
        Whether the fixed part has an intercept.
    fixed : tuple of str
        Fixed-effect terms other than the intercept and offsets, as written (``x``, ``a:b``,
        ``I(x^2)``, ``factor(period)``, ``poly(x, 2)``).
    random : tuple of RandomTerm
        Random terms after expanding ``a/b`` and splitting ``||``.
    offsets : tuple of str
        ``offset(...)`` terms, as written.
    response_expr : str
        The response as written (``log(y)``, ``cbind(sick, size - sick)``); ``response`` is its
        column name (R's name; for ``cbind`` the column :func:`materialize` fills with the
        observed proportion of successes).
    family : {"gaussian", "binomial", "poisson"}
        The response distribution, lme4's ``glmer(family = )`` (gaussian: ``lmer``).
    """

    text: str
    response: str
    intercept: bool
    fixed: tuple[str, ...]
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()
    response_expr: str = ""
    family: str = "gaussian"

    @property
    def cbind(self) -> tuple[str, str] | None:
        """The two expressions of a ``cbind(successes, failures)`` response, else ``None``."""
        call = rterms.call_of(self.response_expr) if self.response_expr else None
        return (call[1][0], call[1][1]) if call is not None and call[0] == "cbind" else None

    @property
    def is_glmm(self) -> bool:
        """Whether the response is not Gaussian (a generalised linear (mixed) model, lme4's glmer)."""
        return self.family != "gaussian"

    @property
    def is_mixed(self) -> bool:
        """Whether the formula has random terms."""
        return bool(self.random)

    @property
    def fixed_formula(self) -> str:
        """The fixed part alone in formulae's syntax, on the columns :func:`materialize` makes."""
        rhs = " + ".join(_formulae_term(t) for t in self.fixed) if self.fixed else ""
        if not self.intercept:
            rhs = "0" + (" + " + rhs if rhs else "")
        return f"{rterms.quote(self.response)} ~ {rhs or '1'}"

    @property
    def variables(self) -> tuple[str, ...]:
        """Every data column the formula reads, response first, without duplicates."""
        names: list[str] = rterms.source_columns(self.response_expr or self.response)
        for term in (*self.fixed, *self.offsets):
            names.extend(rterms.source_columns(term))
        for r in self.random:
            names.extend(r.group_columns)
            for s in r.slopes:
                names.extend(rterms.source_columns(s))
        return tuple(dict.fromkeys(names))

    @property
    def derived(self) -> tuple[str, ...]:
        """Expressions that :func:`materialize` evaluates into columns (``log(z)``, ``factor(p)``)."""
        exprs = list(self.cbind) if self.cbind else [self.response_expr or self.response]
        for term in self.fixed:
            exprs.extend(rterms.split_operands(term))
        exprs += [*self.offsets, *(s for r in self.random for s in r.slopes)]
        return tuple(dict.fromkeys(e for e in exprs if not rterms.is_name(e)))

    @property
    def offset_columns(self) -> tuple[str, ...]:
        """Column names of the offsets (R's names, ``offset(log(hours))``)."""
        return tuple(rterms.r_name(o) for o in self.offsets)

    @property
    def grouping_factors(self) -> tuple[str, ...]:
        """Distinct grouping factors in order of appearance."""
        return tuple(dict.fromkeys(r.group for r in self.random))


def _formulae_term(term: str) -> str:
    """A fixed term on the materialized columns, as formulae reads it (backticked names)."""
    ops = rterms.operators(term)
    parts = []
    for operand in rterms.split_operands(term):
        cols = [rterms.quote(c) for c in rterms.column_names(operand)]
        parts.append(cols[0] if len(cols) == 1 else f"({' + '.join(cols)})")
    out = parts[0]
    for op, part in zip(ops, parts[1:], strict=True):
        out += f"{op}{part}"
    return out


def _split_top(text: str, sep: str, where: int = 0) -> list[tuple[str, int]]:
    """Split ``text`` on ``sep`` outside parentheses; keep each part's start offset (``where`` added)."""
    try:
        parts, _ = rterms.split_top(text, sep)
    except rterms.Unbalanced as exc:
        if exc.closing:
            raise FormulaError(f"unbalanced ')' at position {where + exc.position + 1}; remove it") from None
        raise FormulaError("unbalanced '(' in formula; close every random term like (1|group)") from None
    return [(part, where + at) for part, at in parts]


def _parse_random(inner: str, pos: int) -> list[RandomTerm]:
    """Parse the inside of ``( expr | group )`` into one or more RandomTerms."""
    double = "||" in inner
    expr, _, group = inner.partition("||" if double else "|")
    group = group.strip().replace(" ", "")
    if not group:
        raise FormulaError(f"random term at position {pos + 1} has no grouping factor; write (1|group)")
    if not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*([:/][A-Za-z_.][A-Za-z0-9_.]*)*", group):
        raise FormulaError(
            f"cannot read grouping factor {group!r} at position {pos + 1}; use a column name, a:b or a/b"
        )
    intercept, slopes = True, []
    for part, _ in _split_top(expr, "+"):
        t = part.strip()
        if t in ("1", ""):
            if t == "" and expr.strip():
                raise FormulaError(f"empty term inside random term at position {pos + 1}")
            continue
        if t in ("0", "-1"):
            intercept = False
            continue
        if t.endswith("-1") or t.endswith("- 1"):
            intercept = False
            t = t.rsplit("-", 1)[0].strip()
        slopes.append(t)
    if not expr.strip():
        raise FormulaError(f"random term at position {pos + 1} has nothing before '|'; write (1|group)")
    if not intercept and not slopes:
        raise FormulaError(f"random term at position {pos + 1} has no coefficients")
    # a/b expands to a + a:b (lme4's nesting shorthand); a/b/c to a + a:b + a:b:c.
    groups = [group]
    if "/" in group:
        levels = group.split("/")
        groups = [":".join(levels[: i + 1]) for i in range(len(levels))]
    terms = []
    for g in groups:
        if double:
            if intercept:
                terms.append(RandomTerm(g, True, (), False, split=True))
            terms.extend(RandomTerm(g, False, (s,), len(rterms.column_names(s)) > 1, split=True) for s in slopes)
        else:
            ncoef = int(intercept) + sum(len(rterms.column_names(s)) for s in slopes)
            terms.append(RandomTerm(g, intercept, tuple(slopes), ncoef > 1))
    return terms


def parse(text: str, family: str = "gaussian") -> Formula:
    """Parse an lmer (or glmer) formula.

    Parameters
    ----------
    text : str
        Formula such as ``"testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)"``.
    family : {"gaussian", "binomial", "poisson"}
        The response distribution (glmer's ``family``); ``cbind(s, f)`` responses need binomial.

    Returns
    -------
    Formula

    Raises
    ------
    FormulaError
        If the formula is malformed; the message names the position and the fix.
    """
    from bayeslmm.model.options import check_family

    check_family(family)
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("empty formula; write it like lme4: y ~ x + (1|group)")
    if text.count("~") != 1:
        raise FormulaError(
            f"formula {text!r} needs exactly one '~' between response and predictors (y ~ x + (1|g))"
        )
    lhs, rhs = text.split("~")
    response = lhs.strip()
    if not response:
        raise FormulaError("formula has no response before '~'; write y ~ x + (1|group)")
    call = rterms.call_of(response)
    if call is not None and call[0] == "cbind":
        if len(call[1]) != 2:
            raise FormulaError(f"response {response!r}: cbind() takes two columns, successes and failures "
                               "(cbind(sick, size - sick))")
        if family != "binomial":
            raise FormulaError(f"response {response!r} is a binomial response (successes, failures): fit it with "
                               "--family binomial (family = \"binomial\" in a study file), as glmer(family = binomial)")
    elif not (rterms.is_name(response) or (call is not None and call[0] in {*rterms.NUMERIC_FUNCS, "I", "scale"})):
        raise FormulaError(f"response {response!r} must be a column name or a transformation of one "
                           "(log(y), sqrt(y), I(y/100))")
    if not rhs.strip():
        raise FormulaError("formula has nothing after '~'; write y ~ 1 or y ~ x + (1|group)")
    where = len(lhs) + 1
    intercept, fixed, random, offsets = True, [], [], []
    for raw, pos in _split_top(rhs, "+", where):
        term = raw.strip()
        pos += len(raw) - len(raw.lstrip())
        if not term:
            raise FormulaError(f"empty term at position {pos + 1}; remove the extra '+'")
        if term.startswith("(") and term.endswith(")") and "|" in term:
            random.extend(_parse_random(term[1:-1], pos))
        elif "|" in term:
            raise FormulaError(f"random term at position {pos + 1} must be in parentheses: ({term})")
        elif term == "1":
            continue
        elif term in ("0", "-1"):
            intercept = False
        elif re.fullmatch(r"[^()`]*?\s*-\s*1", term):  # "x - 1" and "x-1" both drop the intercept
            intercept = False
            fixed.append(term.rsplit("-", 1)[0].strip())
        else:
            if term.count("(") != term.count(")") or term.count("`") % 2:
                raise FormulaError(f"unbalanced parentheses or backticks in term {term!r} at position {pos + 1}")
            if re.search(r"[^A-Za-z0-9_.:*()^ +\-/,=]", re.sub(r"`[^`]*`", "x", term)):
                raise FormulaError(f"cannot read term {term!r} at position {pos + 1}")
            call = rterms.call_of(term)
            if call is not None and call[0] == "offset":
                offsets.append(term)
            else:
                fixed.append(term)
    for term in fixed:
        for operand in rterms.split_operands(term):
            rterms.poly_degree(operand)  # a malformed poly() is a formula error, found now
    return Formula(text.strip(), rterms.r_name(response), intercept, tuple(fixed), tuple(random), tuple(offsets),
                   response, family)


def to_bambi(formula: Formula) -> str:
    """Translate to Bambi's formula syntax.

    ``(x||g)`` becomes ``(1|g) + (0 + x|g)``; ``(1|a/b)`` becomes ``(1|a) + (1|a:b)``.
    Bambi estimates no correlation between a group's effects, so ``(x|g)`` is fitted
    with independent intercept and slope (see :func:`correlation_note`).
    """
    parts = [formula.fixed_formula.split("~", 1)[1].strip()]
    parts += [f"offset({rterms.quote(c)})" for c in formula.offset_columns]
    for r in formula.random:
        coefs = (["1"] if r.intercept else ["0"]) + [rterms.quote(c) for s in r.slopes for c in rterms.column_names(s)]
        parts.append(f"({' + '.join(coefs)}|{r.group})")
    lhs = rterms.quote(formula.response)
    if formula.cbind:  # Bambi's binomial response: p(successes, trials)
        lhs = f"p({rterms.quote(rterms.r_name(formula.cbind[0]))}, {rterms.quote(TRIALS_COLUMN)})"
    return f"{lhs} ~ " + " + ".join(parts)


def correlation_note(formula: Formula) -> str | None:
    """Warning text for a fit by Bambi's engine, which drops the correlations of correlated terms; else ``None``."""
    corr = [r for r in formula.random if r.correlated]
    if not corr:
        return None
    terms = ", ".join(r.lme4 for r in corr)
    return (
        f"{terms}: Bambi's engine estimates no correlation between a group's effects (intercept, slopes, "
        "a factor's levels; lme4 and the marginal engine do); results are those of uncorrelated effects"
    )


# ---------------------------------------------------------------------------------------
# Arrays: the model frame shared by the frequentist and marginal engines
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomBlock:
    """Random-effect design of one term, in lme4's ``reTrms`` layout.

    Attributes
    ----------
    term : RandomTerm
    levels : tuple of str
        Levels of the grouping factor (sorted, as R's ``factor()`` and Bambi order them).
    index : ndarray of int, shape (n,)
        Level code of every row.
    values : ndarray, shape (n, k)
        Column per coefficient (ones for the intercept, the slope variable, or the 0/1 indicator
        of a factor's level), as ``term.coefs`` names them (the term is resolved: :func:`resolve_term`).
    """

    term: RandomTerm
    levels: tuple[str, ...]
    index: np.ndarray
    values: np.ndarray

    def z_matrix(self) -> np.ndarray:
        """Dense Z, shape (n, n_levels * k), level-major like lme4 (all coefs of level 1 first)."""
        n, k = self.values.shape
        z = np.zeros((n, len(self.levels) * k))
        for j in range(k):
            z[np.arange(n), self.index * k + j] = self.values[:, j]
        return z


@dataclass(frozen=True)
class ModelFrame:
    """Response, fixed-effect matrix and random-effect blocks of a formula on data.

    Gaussian: ``y`` is the response minus the offsets (all a Gaussian model with identity link
    sees of them). Binomial: ``y`` the successes and ``trials`` their trials (ones for a 0/1
    response). Poisson: ``y`` the counts. ``offset`` keeps the offsets' sum on the link scale
    (zeros without offsets); ``family`` is the formula's.
    """

    formula: Formula
    y: np.ndarray
    X: np.ndarray
    x_names: tuple[str, ...]
    blocks: tuple[RandomBlock, ...]
    offset: np.ndarray | None = None
    trials: np.ndarray | None = None

    @property
    def family(self) -> str:
        """The response distribution (the formula's)."""
        return self.formula.family


def binary_response(values, name: str = "response") -> tuple[np.ndarray, tuple[str, str] | None]:
    """A yes/no response as 0/1, as glmer reads it: numbers 0 and 1 (or True/False) as they are; a
    factor or text with two levels in R's order, the first level a failure (0) and the second a
    success (1), as R's ``factor("no", "yes")``. Returns the 0/1 values and the two levels (None for
    numbers).

    Raises
    ------
    DataError
        For numbers other than 0 and 1 (use cbind(successes, failures) for counts out of trials), or
        a factor without exactly two levels.
    """
    series = pd.Series(values)
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float).to_numpy(), None
    if pd.api.types.is_numeric_dtype(series):
        y = series.to_numpy(dtype=float)
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise DataError(f"binomial response {name!r} has values other than 0 and 1 (e.g. {y[bad][0]:g}); for "
                            "successes out of trials write cbind(successes, failures) as the response")
        return y, None
    cat = rterms.as_factor(series)
    levels = tuple(str(c) for c in cat.categories)
    if len(levels) != 2:
        raise DataError(f"binomial response {name!r} has {len(levels)} levels ({', '.join(levels[:5])}); a yes/no "
                        "response needs exactly two (the first, in R's order, counts as failure)")
    return np.asarray(cat.codes, dtype=float), (levels[0], levels[1])


def combined_codes(parts: list[tuple[np.ndarray, Sequence]]) -> np.ndarray:
    """One integer per row for its combination of values over several columns, from each column's
    ``pd.factorize`` (codes, distinct values; -1 for a missing value, a value of its own here): the
    combination so far renumbered column by column, so the key never overflows and no row tuples are sorted
    (NumPy's ``unique(axis=0)`` of 480,000 rows of 4 columns took 0.8 s; factorizing them, this and the
    ``unique`` of the key 0.1 s)."""
    key = np.zeros(len(parts[0][0]), dtype=np.int64)
    for codes, values in parts:
        key = pd.factorize(key * (len(values) + 1) + codes + 1)[0]
    return key


def group_codes(df: pd.DataFrame, group: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Levels (in R's order) and integer codes of a grouping factor (``a`` or ``a:b``).

    One column: R's ``factor()`` order (numbers as numbers, so ids 1, 2, ..., 10 and not
    1, 10, 2). An interaction ``a:b``: its labels sorted as text.
    """
    cols = group.split(":")
    if len(cols) == 1:
        cat = rterms.as_factor(df[cols[0]])
    else:  # each distinct combination labelled once ("a:b", as R pastes them), then sorted as text; NA: -1
        parts = [pd.factorize(df[c]) for c in cols]
        _, first, inverse = np.unique(combined_codes(parts), return_index=True, return_inverse=True)
        text = [[str(v) for v in values] for _, values in parts]
        labels = [None if any(codes[r] < 0 for codes, _ in parts)
                  else ":".join(t[codes[r]] for t, (codes, _) in zip(text, parts, strict=True)) for r in first.tolist()]
        cat = pd.Categorical(labels)
        return tuple(str(x) for x in cat.categories), np.asarray(cat.codes, dtype=np.int64)[inverse.reshape(-1)]
    return tuple(str(x) for x in cat.categories), np.asarray(cat.codes, dtype=np.int64)


def materialize(formula: Formula, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a column for each of the formula's R expressions, named as R names the term.

    ``log(z)``, ``I(x^2)``, ``factor(period)``, ``poly(x, 2)`` (two columns ``poly(x, 2)1`` and
    ``2``), ``offset(...)`` and a transformed response become columns, so Bambi, the lme4 side
    and the figures all read plain columns (:mod:`bayeslmm.model.rterms`). Existing columns are kept.
    A ``cbind(s, f)`` response adds its trials (``s + f``, :data:`~bayeslmm.labels.TRIALS_COLUMN`) and
    the observed proportion ``s / (s + f)`` under the response's name.
    """
    new: dict[str, pd.Series] = {}
    for expr in formula.derived:
        if all(c in df.columns for c in rterms.column_names(expr)):
            continue  # already made (model_frame, predictions and offsets call this on fitted data)
        for name, values in rterms.evaluate(expr, df).items():
            if name not in df.columns:
                new[name] = values
    if formula.cbind and formula.response not in df.columns:
        s, f = (np.asarray((new[c] if c in new else df[c]), dtype=float)
                for c in (rterms.r_name(e) for e in formula.cbind))
        trials = s + f
        with np.errstate(invalid="ignore", divide="ignore"):
            new[TRIALS_COLUMN] = pd.Series(trials, index=df.index)
            new[formula.response] = pd.Series(np.where(trials > 0, s / trials, np.nan), index=df.index)
    return df.assign(**new) if new else df


@dataclass(frozen=True)
class FixedDesign:
    """The fixed-effect design of a formula on data, as formulae builds it for Bambi.

    Attributes
    ----------
    formula : Formula
    X : ndarray, shape (n, p)
    columns : tuple of FixedColumn
        Each column's lme4 name, posterior variable and level (:mod:`bayeslmm.labels`).
    common : formulae.matrices.CommonEffectsMatrix
        formulae's design (its ``slices`` per term; it encodes new data).
    """

    formula: Formula
    X: np.ndarray
    columns: tuple[FixedColumn, ...]
    common: object

    @property
    def names(self) -> tuple[str, ...]:
        """lme4's names of the columns."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> FixedColumn:
        """The column lme4 calls ``name``; KeyError names the columns there are."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"no fixed effect {name!r}; the fixed effects are {', '.join(self.names) or 'none'}")

    def terms(self) -> dict[tuple[str, str], str]:
        """lme4's name of each column keyed by its posterior ``(variable, level)``."""
        return {(c.variable, c.level): c.name for c in self.columns}

    def evaluate(self, newdata: pd.DataFrame) -> np.ndarray:
        """The design of new rows, encoded as the fitted data was (same dummy columns for factors)."""
        return np.asarray(self.common.evaluate_new_data(materialize(self.formula, newdata))).astype(float)


def fixed_design(formula: Formula, df: pd.DataFrame) -> FixedDesign:
    """formulae's fixed-effect design of ``formula`` on ``df`` (the library Bambi uses, so its
    columns are the Bambi model's), each column under lme4's and Bambi's names."""
    import formulae

    dm = formulae.design_matrices(formula.fixed_formula, materialize(formula, df), na_action="error")
    columns = [c for name, term in dm.common.terms.items()
               for c in fixed_columns(name, term.labels, getattr(term, "levels", None))]
    return FixedDesign(formula, np.asarray(dm.common.design_matrix, dtype=float), tuple(columns), dm.common)


def offset_values(formula: Formula, df: pd.DataFrame) -> np.ndarray:
    """Sum of the formula's offsets per row of (materialized) ``df``; zeros without offsets."""
    df = materialize(formula, df)
    out = np.zeros(len(df))
    for col in formula.offset_columns:
        out += np.asarray(df[col], dtype=float)
    return out


def _is_factor(values: pd.Series) -> bool:
    """Whether a column is a factor to R's ``model.matrix``: categorical or text (a logical column
    stays one 0/1 column, as formulae codes it for Bambi and the fixed part)."""
    return isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values)


def resolve_term(term: RandomTerm, df: pd.DataFrame) -> RandomTerm:
    """The term with its columns read from the (materialized) data, named as lme4 names them.

    A factor slope is coded as R's ``model.matrix`` codes it, levels in R's order
    (:func:`~bayeslmm.model.rterms.as_factor`): every level when it is the first factor of a term
    without intercept (``(0 + f|g)``: ``fA``, ``fB``, ``fC``), treatment contrasts otherwise
    (``(1 + f|g)``: ``(Intercept)``, ``fB``, ``fC``). A term with more than one column is a
    correlated block, also a piece of ``(f||g)``: lme4 splits ``||`` over the written terms, never
    over a factor's columns (:func:`split_notes`).

    Raises
    ------
    FormulaError
        For two factors in a term without intercept, which lme4 and Bambi code differently.
    """
    cols = [RandomColumn(INTERCEPT, INTERCEPT)] if term.intercept else []
    factors = []
    for slope in term.slopes:
        for name in rterms.column_names(slope):
            values = df[name]
            if not _is_factor(values):
                cols += random_columns(name)
                continue
            levels = [str(v) for v in rterms.as_factor(values).categories]
            if "" in levels:
                raise DataError(f"factor {name!r} (a random slope of {term.lme4}) has an empty label; recode it")
            cols += random_columns(name, levels, full=not term.intercept and not factors)
            factors.append(name)
    if len(factors) > 1 and not term.intercept:
        with_one = term.lme4.replace("(0 + ", "(1 + ", 1)
        raise FormulaError(f"{term.lme4} has the factors {' and '.join(factors)} and no intercept, which lme4 codes "
                           "with every level of the first and contrasts of the others, and Bambi with every level of "
                           f"each; add the intercept, {with_one}, or write a term per factor")
    return replace(term, columns=tuple(cols), correlated=len(cols) > 1)


def resolve(formula: Formula, df: pd.DataFrame) -> Formula:
    """The formula with every random term resolved against ``df`` (:func:`resolve_term`)."""
    df = materialize(formula, df)
    return replace(formula, random=tuple(resolve_term(t, df) for t in formula.random))


def random_values(term: RandomTerm, df: pd.DataFrame) -> np.ndarray:
    """The columns of a resolved term on the (materialized) rows ``df``, shape (n, k), as ``term.coefs``
    names them: ones, a numeric slope's values, or the 0/1 indicator of a factor's level (new data
    is coded with the term's own levels)."""
    if term.columns is None:
        raise ValueError(f"{term.lme4} is not resolved against data; call resolve_term first")
    out = np.empty((len(df), len(term.columns)))
    labels: dict[str, np.ndarray] = {}
    for j, col in enumerate(term.columns):
        if col.expr == INTERCEPT:
            out[:, j] = 1.0
        elif col.level:
            if col.expr not in labels:
                labels[col.expr] = np.asarray(rterms.as_factor(df[col.expr]).astype(object))
            out[:, j] = labels[col.expr] == col.level
        else:
            out[:, j] = np.asarray(df[col.expr], dtype=float)
    return out


def split_notes(formula: Formula) -> list[str]:
    """A warning for each factor of an ``(f||g)`` term, which lme4 keeps as one correlated block.

    lme4 expands ``(1 + f||g)`` to ``(1|g) + (0 + f|g)`` (``expandDoubleVerts``, its default
    "split" method): the factor's columns stay correlated, which surprises users who wrote
    ``||`` to drop correlations. bayeslmm fits what lme4 fits, and says so.
    """
    notes = []
    for term in formula.random:
        if not (term.split and term.columns and term.correlated):
            continue
        for expr in dict.fromkeys(c.expr for c in term.columns if c.level):
            names = [c.name for c in term.columns if c.expr == expr]
            notes.append(f"{term.lme4} from '||': lme4 splits '||' over the written terms only, so the "
                         f"{len(names)} columns of factor {expr} ({', '.join(names)}) stay one correlated block, "
                         f"as lme4 fits it; for uncorrelated effects of its levels (one shared sd) write "
                         f"(1|{term.group}) + (1|{term.group}:{expr})")
    return notes


def model_frame(formula: Formula, df: pd.DataFrame) -> ModelFrame:
    """Build the arrays of ``formula`` on ``df`` (rows with missing values must be gone).

    The fixed-effect matrix is :func:`fixed_design`'s, with lme4's names. The frame's formula and
    blocks hold the random terms resolved against ``df`` (:func:`resolve_term`: a factor slope's
    columns and their names).
    """
    df = materialize(formula, df)
    design = fixed_design(formula, df)
    X, x_names = design.X, design.names
    offset = offset_values(formula, df)
    trials = None
    if formula.family == "gaussian":
        y = np.asarray(df[formula.response], dtype=float) - offset
    elif formula.cbind:
        y = np.asarray(df[rterms.r_name(formula.cbind[0])], dtype=float)
        trials = np.asarray(df[TRIALS_COLUMN], dtype=float)
    elif formula.family == "binomial":
        y, _ = binary_response(df[formula.response], formula.response)
        trials = np.ones_like(y)
    else:
        y = np.asarray(df[formula.response], dtype=float)
    blocks = []
    for term in formula.random:
        term = resolve_term(term, df)
        levels, index = group_codes(df, term.group)
        blocks.append(RandomBlock(term, levels, index, random_values(term, df)))
    formula = replace(formula, random=tuple(b.term for b in blocks))
    return ModelFrame(formula, y, X, x_names, tuple(blocks), offset, trials)


#: A column whose residual on the columns before it is below this share of its own norm is aliased
#: (lme4's ``chkRank.drop.cols`` uses ``qr(X, tol = 1e-7)``).
ALIAS_TOL = 1e-7


def aliased_columns(X: np.ndarray, tol: float = ALIAS_TOL) -> list[int]:
    """Columns of ``X`` that are linear combinations of the columns before them.

    As R's ``qr()`` (LINPACK's ``dqrdc2``, limited pivoting) decides rank: columns are taken in
    order and one whose residual on the kept columns is tiny is moved out, so the later column
    of a collinear set is the one dropped, as lme4 drops it.
    """
    kept: list[int] = []
    out: list[int] = []
    q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        col = X[:, j]
        norm = np.linalg.norm(col)
        resid = col - q @ (q.T @ col)
        resid = resid - q @ (q.T @ resid)  # twice is enough (Gram-Schmidt, Kahan-Parlett)
        rn = np.linalg.norm(resid)
        if norm == 0 or rn <= tol * norm:
            out.append(j)
            continue
        kept.append(j)
        q = np.column_stack([q, resid / rn])
    return out


def drop_aliased(formula: Formula, df: pd.DataFrame) -> tuple[Formula, list[str]]:
    """Drop fixed terms whose columns are linear combinations of earlier ones, as lme4 does.

    lme4 says "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient"
    and fits without it; so does bayeslmm, before any fit and for both methods, and says which.
    A written term can only go whole: when only some columns of a term are aliased (one level of
    a factor, one column of an interaction), the error names them and asks for a recode.

    Returns
    -------
    (Formula, list of str)
        The formula without the aliased terms (its text as written) and the warnings.

    Raises
    ------
    DataError
        When aliased columns are part of a term that cannot be dropped whole.
    """
    design = fixed_design(formula, df)
    X, names = design.X, design.names
    bad = set(aliased_columns(X))
    if not bad:
        return formula, []
    slices = design.common.slices
    drop, notes = [], []
    for term in formula.fixed:
        ops = rterms.split_operands(term)
        keys = rterms.column_names(ops[0]) if len(ops) == 1 else []
        cols = [i for k in keys if k in slices for i in range(*slices[k].indices(X.shape[1]))]
        if cols and set(cols) <= bad:
            drop.append(term)
            bad -= set(cols)
    if bad:
        which = ", ".join(names[i] for i in sorted(bad))
        raise DataError(f"fixed-effect columns are linearly dependent: {which} is a combination of the others; "
                        "lme4 would drop it, but it is part of a larger term here: remove or recode that term")
    for term in drop:
        notes.append(f"fixed-effect model matrix is rank deficient: {rterms.r_name(term)} is a linear combination of "
                     "the other fixed effects, so it is dropped from both fits (lme4 drops the same column); "
                     "remove it from the formula")
    fixed = tuple(t for t in formula.fixed if t not in drop)
    if not fixed and not formula.intercept:
        raise DataError("every fixed-effect column is aliased; check the predictors")
    return replace(formula, fixed=fixed), notes
