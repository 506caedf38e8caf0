"""Parse lme4's formula syntax and translate it for Bambi.

Handles ``(1|g)``, ``(x|g)``, ``(1 + x|g)``, ``(0 + x|g)``, ``(x||g)``, ``(1|a/b)`` and
``(1|a:b)`` random terms beside ordinary fixed-effect terms (numeric or factor columns,
interactions, ``I(...)``).  Parsing is pure string work; :func:`model_frame` builds the
arrays (response, fixed-effect matrix, random-effect blocks) that the frequentist and
marginal engines use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeslmm.errors import FormulaError

_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


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
        ``True`` for lme4's ``|`` with more than one coefficient (correlated effects),
        ``False`` for ``||`` or a single coefficient.
    """

    group: str
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool

    @property
    def coefs(self) -> tuple[str, ...]:
        """Coefficient names in lme4's order: ``(Intercept)`` first, then slopes."""
        return (("(Intercept)",) if self.intercept else ()) + self.slopes

    @property
    def group_columns(self) -> tuple[str, ...]:
        """Data columns that make up the grouping factor."""
        return tuple(self.group.split(":"))


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
        Fixed-effect terms other than the intercept, as written (``x``, ``a:b``, ``I(x**2)``).
    random : tuple of RandomTerm
        Random terms after expanding ``a/b`` and splitting ``||``.
    """

    text: str
    response: str
    intercept: bool
    fixed: tuple[str, ...]
    random: tuple[RandomTerm, ...]

    @property
    def is_mixed(self) -> bool:
        """Whether the formula has random terms."""
        return bool(self.random)

    @property
    def fixed_formula(self) -> str:
        """The fixed part alone, in formulae/patsy syntax."""
        rhs = " + ".join(self.fixed) if self.fixed else ""
        if not self.intercept:
            rhs = "0" + (" + " + rhs if rhs else "")
        return f"{self.response} ~ {rhs or '1'}"

    @property
    def variables(self) -> tuple[str, ...]:
        """Every data column the formula uses, response first, without duplicates."""
        names: list[str] = [self.response]
        for term in self.fixed:
            names.extend(_names_in(term))
        for r in self.random:
            names.extend(r.group_columns)
            for s in r.slopes:
                names.extend(_names_in(s))
        return tuple(dict.fromkeys(names))

    @property
    def grouping_factors(self) -> tuple[str, ...]:
        """Distinct grouping factors in order of appearance."""
        return tuple(dict.fromkeys(r.group for r in self.random))


_FUNCS = {"I", "np", "log", "exp", "sqrt", "scale", "center", "C", "abs"}


def _names_in(term: str) -> list[str]:
    """Column names mentioned in a fixed term (skips function names and numbers)."""
    out = []
    for m in _NAME.finditer(term):
        name = m.group(0)
        end = m.end()
        is_call = end < len(term) and term[end] == "("
        is_attr = m.start() > 0 and term[m.start() - 1] == "."
        if not is_call and not is_attr and name not in _FUNCS and not name.startswith("np."):
            out.append(name)
    return out


def _split_top(text: str, sep: str, where: int = 0) -> list[tuple[str, int]]:
    """Split ``text`` on ``sep`` outside parentheses; keep each part's start offset."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' at position {where + i + 1}; remove it")
        elif ch == sep and depth == 0:
            parts.append((text[start:i], where + start))
            start = i + 1
    if depth != 0:
        raise FormulaError("unbalanced '(' in formula; close every random term like (1|group)")
    parts.append((text[start:], where + start))
    return parts


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
                terms.append(RandomTerm(g, True, (), False))
            terms.extend(RandomTerm(g, False, (s,), False) for s in slopes)
        else:
            ncoef = int(intercept) + len(slopes)
            terms.append(RandomTerm(g, intercept, tuple(slopes), ncoef > 1))
    return terms


def parse(text: str) -> Formula:
    """Parse an lmer formula.

    Parameters
    ----------
    text : str
        Formula such as ``"testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)"``.

    Returns
    -------
    Formula

    Raises
    ------
    FormulaError
        If the formula is malformed; the message names the position and the fix.
    """
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
    if not _NAME.fullmatch(response):
        raise FormulaError(f"response {response!r} must be a single column name")
    if not rhs.strip():
        raise FormulaError("formula has nothing after '~'; write y ~ 1 or y ~ x + (1|group)")
    where = len(lhs) + 1
    intercept, fixed, random = True, [], []
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
        elif re.fullmatch(r"[^()]*?\s*-\s*1", term):  # "x - 1" and "x-1" both drop the intercept
            intercept = False
            fixed.append(term.rsplit("-", 1)[0].strip())
        else:
            if term.count("(") != term.count(")"):
                raise FormulaError(f"unbalanced parentheses in term {term!r} at position {pos + 1}")
            if re.search(r"[^A-Za-z0-9_.:*()^ +\-/,\[\]'\"]", term):
                raise FormulaError(f"cannot read term {term!r} at position {pos + 1}")
            fixed.append(term)
    return Formula(text.strip(), response, intercept, tuple(fixed), tuple(random))


def to_bambi(formula: Formula) -> str:
    """Translate to Bambi's formula syntax.

    ``(x||g)`` becomes ``(1|g) + (0 + x|g)``; ``(1|a/b)`` becomes ``(1|a) + (1|a:b)``.
    Bambi estimates no correlation between a group's effects, so ``(x|g)`` is fitted
    with independent intercept and slope (see :func:`correlation_note`).
    """
    parts = [formula.fixed_formula.split("~", 1)[1].strip()]
    for r in formula.random:
        coefs = (["1"] if r.intercept else ["0"]) + list(r.slopes)
        parts.append(f"({' + '.join(coefs)}|{r.group})")
    return f"{formula.response} ~ " + " + ".join(parts)


def correlation_note(formula: Formula) -> str | None:
    """Warning text when the formula asks for correlated random effects, else ``None``."""
    corr = [r for r in formula.random if r.correlated]
    if not corr:
        return None
    terms = ", ".join(f"({' + '.join(r.coefs)}|{r.group})" for r in corr)
    return (
        f"{terms}: the Bayesian fit estimates no correlation between a group's intercept and "
        "slope (lme4 does); results are those of the '||' model"
    )


def bambi_term_name(term: RandomTerm, coef: str) -> str:
    """Bambi's variable name for one coefficient of a random term (``1|g``, ``x|g``)."""
    return f"{'1' if coef == '(Intercept)' else coef}|{term.group}"


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
        Column per coefficient (ones for the intercept, the slope variable otherwise).
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
    """Response, fixed-effect matrix and random-effect blocks of a formula on data."""

    formula: Formula
    y: np.ndarray
    X: np.ndarray
    x_names: tuple[str, ...]
    blocks: tuple[RandomBlock, ...]


def group_codes(df: pd.DataFrame, group: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Levels (sorted like R's factor) and integer codes of a grouping factor (``a`` or ``a:b``)."""
    cols = group.split(":")
    labels = df[cols[0]].astype(str)
    for c in cols[1:]:
        labels = labels + ":" + df[c].astype(str)
    cat = pd.Categorical(labels)
    return tuple(str(x) for x in cat.categories), np.asarray(cat.codes, dtype=np.int64)


def lme4_name(name: str) -> str:
    """formulae's column name to lme4's (``mountainRange[Central]`` -> ``mountainRangeCentral``)."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[([^\]]*)\]", r"\1", name)


def _numeric(df: pd.DataFrame, expr: str) -> np.ndarray:
    if expr in df.columns:
        return np.asarray(df[expr], dtype=float)
    return np.asarray(df.eval(expr), dtype=float)


def model_frame(formula: Formula, df: pd.DataFrame) -> ModelFrame:
    """Build the arrays of ``formula`` on ``df`` (rows with missing values must be gone).

    The fixed-effect matrix comes from formulae, the library Bambi uses, so its columns
    match the Bambi model's; names are converted to lme4's.
    """
    import formulae

    dm = formulae.design_matrices(formula.fixed_formula, df, na_action="error")
    X = np.asarray(dm.common.design_matrix, dtype=float)
    x_names = tuple(lme4_name(str(n)) for n in dm.common.as_dataframe().columns)
    y = np.asarray(df[formula.response], dtype=float)
    blocks = []
    for term in formula.random:
        levels, index = group_codes(df, term.group)
        cols = [np.ones(len(df))] if term.intercept else []
        cols += [_numeric(df, s) for s in term.slopes]
        blocks.append(RandomBlock(term, levels, index, np.column_stack(cols)))
    return ModelFrame(formula, y, X, x_names, tuple(blocks))
