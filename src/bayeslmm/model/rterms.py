"""R's formula idioms, evaluated as R evaluates them.

An lme4 user writes ``log(z)``, ``I(x^2)``, ``factor(period)``, ``poly(x, 2)``, ``scale(x)``,
``offset(log(t))`` or a backticked name such as ```x val``` inside a term. bayeslmm evaluates each
such expression once into a data column named as R names the term (``log(z)``, ``I(x^2)``,
``poly(x, 2)1`` ...), so every later stage -- Bambi (which reads backticked names), the lme4
side, the figures -- sees plain columns and R's coefficient names come out by themselves
(formulae's ``factor(period)[2]`` becomes lme4's ``factor(period)2``).

The rules live here and nowhere else: which names are functions, how an expression's text is
normalised into R's term name, and how each function is computed (R's ``scale`` with the n - 1
sd, R's orthogonal ``poly``, R's level order for ``factor``).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError

#: Numeric functions an expression may call, as R names them (``np.*`` is accepted too).
NUMERIC_FUNCS = {
    "log": np.log, "log10": np.log10, "log2": np.log2, "log1p": np.log1p, "exp": np.exp,
    "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos,
}
#: Functions that make a factor from a column.
FACTOR_FUNCS = ("factor", "as.factor", "C")
#: Every function name the parser knows (so its argument, not the name, is a column).
KNOWN_FUNCS = {*NUMERIC_FUNCS, *FACTOR_FUNCS, "I", "scale", "poly", "offset", "np", "center"}

_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_TOKEN = re.compile(r"`[^`]*`|[A-Za-z_.][A-Za-z0-9_.]*|\d+\.?\d*(?:[eE][+-]?\d+)?|\*\*|[-+*/^(),]|\s+|.")


def is_name(expr: str) -> bool:
    """Whether ``expr`` is a bare column name (an R identifier or a backticked name)."""
    expr = expr.strip()
    return bool(_IDENT.fullmatch(expr)) or (len(expr) > 2 and expr[0] == expr[-1] == "`" and "`" not in expr[1:-1])


def unquote(expr: str) -> str:
    """A column name without its backticks."""
    expr = expr.strip()
    return expr[1:-1] if len(expr) > 2 and expr[0] == expr[-1] == "`" else expr


def quote(name: str) -> str:
    """A column name as formulae reads it: backticked unless it is a plain identifier."""
    return name if _IDENT.fullmatch(name) and not name.startswith(".") else f"`{name}`"


class Unbalanced(ValueError):
    """A ``)`` without its ``(``, or a ``(`` never closed, at ``position`` (0-based)."""

    def __init__(self, position: int, closing: bool) -> None:
        super().__init__(f"unbalanced {')' if closing else '('} at {position}")
        self.position, self.closing = position, closing


def split_top(text: str, seps: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Split ``text`` at any character of ``seps`` outside parentheses and backticks.

    Returns the parts with their start offsets, and the separators between them.

    Raises
    ------
    Unbalanced
        At the first ``)`` without its ``(``, or at the end when a ``(`` is never closed.
    """
    parts, ops, depth, start, tick = [], [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            tick = not tick
        elif tick:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise Unbalanced(i, closing=True)
        elif ch in seps and depth == 0:
            parts.append((text[start:i], start))
            ops.append(ch)
            start = i + 1
    if depth != 0:
        raise Unbalanced(len(text), closing=False)
    parts.append((text[start:], start))
    return parts, ops


def _scan(term: str) -> tuple[list[str], list[str]]:
    """Operands of a term and the ``:``/``*`` operators between them."""
    parts, ops = split_top(term, ":*")
    return [p.strip() for p, _ in parts], ops


def split_operands(term: str) -> list[str]:
    """Split a term at ``:`` and ``*`` outside parentheses and backticks: ``log(z):f`` -> ``[log(z), f]``."""
    return _scan(term)[0]


def operators(term: str) -> list[str]:
    """The ``:``/``*`` operators between the operands of :func:`split_operands`, in order."""
    return _scan(term)[1]


def _tokens(expr: str) -> list[str]:
    return [t for t in _TOKEN.findall(expr) if t]


def source_columns(expr: str) -> list[str]:
    """Data columns an expression reads (function names, numbers and keywords left out)."""
    toks = _tokens(expr)
    out = []
    for i, t in enumerate(toks):
        if t.startswith("`"):
            out.append(t[1:-1])
            continue
        if not _IDENT.fullmatch(t):
            continue
        nxt = next((u for u in toks[i + 1:] if not u.isspace()), "")
        prev = next((u for u in reversed(toks[:i]) if not u.isspace()), "")
        if nxt in ("(", "=") or prev == "." or t.startswith("np.") or t in KNOWN_FUNCS or t in ("TRUE", "FALSE"):
            continue
        out.append(t)
    return list(dict.fromkeys(out))


def r_name(expr: str) -> str:
    """R's deparsed name of an expression: ``I(x ^ 2)`` -> ``I(x^2)``, ``poly(x,2)`` -> ``poly(x, 2)``.

    R puts spaces around binary ``+ - * /`` and none around ``^`` or inside parentheses, and one
    space after a comma; a backticked name stands alone without its backticks.
    """
    expr = expr.strip()
    if is_name(expr):
        return unquote(expr)
    out = []
    toks = [t for t in _tokens(expr) if not t.isspace()]
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else ""
        binary = prev not in ("", "(", ",", "+", "-", "*", "/", "^", "**")
        if t in ("+", "-", "*", "/") and binary:
            out.append(f" {t} ")
        elif t == "**":
            out.append("^")
        elif t == ",":
            out.append(", ")
        else:
            out.append(t)
    return "".join(out)


#: Functions whose value at a row depends on the other rows (R's ``scale``, orthogonal ``poly``).
DATA_DEPENDENT_FUNCS = ("scale", "poly", "center")


def data_dependent(expr: str) -> bool:
    """Whether an expression calls a function of the whole column (:data:`DATA_DEPENDENT_FUNCS`), so that
    its value at a row changes when other rows are left out."""
    toks = [t for t in _tokens(expr) if not t.isspace()]
    return any(t in DATA_DEPENDENT_FUNCS and nxt == "(" for t, nxt in zip(toks, [*toks[1:], ""], strict=True))


def call_of(expr: str) -> tuple[str, list[str]] | None:
    """``(function, arguments)`` when ``expr`` is one call ``f(a, b)``, else ``None``."""
    m = re.fullmatch(r"\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\((.*)\)\s*", expr, flags=re.S)
    if not m:
        return None
    try:
        parts, _ = split_top(m.group(2), ",")
    except Unbalanced:
        return None
    return m.group(1), [p.strip() for p, _ in parts]


def poly_degree(expr: str) -> int | None:
    """The degree of ``poly(x, k)``, or ``None`` when ``expr`` is not a poly call."""
    call = call_of(expr)
    if call is None or call[0] != "poly":
        return None
    _fname, args = call
    pos = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    named = {k.strip(): v.strip() for k, v in named.items()}
    if named.get("raw", "FALSE") not in ("FALSE", "F"):
        raise FormulaError(f"{expr!r}: raw polynomials are not supported; write I(x^2) terms instead")
    degree = named.get("degree", pos[1] if len(pos) > 1 else "1")
    if not re.fullmatch(r"\d+", degree) or int(degree) < 1:
        raise FormulaError(f"{expr!r}: the degree of poly() must be a whole number >= 1, like poly(x, 2)")
    return int(degree)


def column_names(expr: str) -> list[str]:
    """The data column(s) an operand becomes: its R name; ``poly(x, k)`` gives ``poly(x, k)1`` ... ``k``."""
    name = r_name(expr)
    k = poly_degree(expr)
    return [f"{name}{j}" for j in range(1, k + 1)] if k else [name]


def r_levels(values: pd.Series) -> list:
    """Levels in R's order: numbers sorted as numbers, everything else sorted as text."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.categories)
    present = pd.unique(values.dropna())
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return sorted(present)
    return sorted(present, key=str)


def as_factor(values: pd.Series) -> pd.Categorical:
    """R's ``factor(x)``: a categorical with levels in R's order, labels as text.

    Levels no row has are dropped (lme4 drops them from grouping factors; a fixed effect's empty
    level would be an all-zero column).
    """
    values = pd.Series(values)
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
    categories = [_label(v) for v in r_levels(values)]
    codes, present = pd.factorize(values)  # each distinct value labelled once (not 480,000 times); NaN: -1
    position = {label: i for i, label in enumerate(categories)}
    at = np.array([position.get(_label(v), -1) for v in present] + [-1], dtype=np.int64)
    return pd.Categorical.from_codes(at[codes], categories=categories)


def _label(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def r_poly(x: np.ndarray, degree: int) -> np.ndarray:
    """R's orthogonal ``poly(x, degree)``: the normalised residuals of x^j on lower powers.

    R takes ``Q diag(R)`` of the QR of ``outer(x - mean(x), 0:degree, "^")`` and scales each
    column to unit length; ``Q_j R_jj`` is the residual of x^j after projecting out the lower
    powers, so it is unique whatever signs the QR routine picks.
    """
    x = np.asarray(x, dtype=float)
    if np.unique(x).size <= degree:
        raise DataError(f"poly(): degree {degree} needs more than {degree} distinct values of the variable")
    xc = x - x.mean()
    q, r = np.linalg.qr(np.vander(xc, degree + 1, increasing=True))
    z = q * np.diag(r)
    z /= np.sqrt((z**2).sum(axis=0))
    return z[:, 1:]


def _numeric_eval(expr: str, df: pd.DataFrame) -> np.ndarray:
    """Evaluate an arithmetic expression of columns with R's functions (``^`` is a power)."""
    env: dict = {"__builtins__": {}}
    pieces = []
    for t in _tokens(expr):
        if t.startswith("`"):
            key = f"_c{len(env)}"
            env[key] = _column(df, t[1:-1], expr)
            pieces.append(key)
        elif t == "^":
            pieces.append("**")
        elif _IDENT.fullmatch(t) and not t.startswith("np."):
            if t in NUMERIC_FUNCS:
                env[t] = NUMERIC_FUNCS[t]
            elif t == "I":
                env["I"] = lambda v: v
            elif t == "scale":
                env["scale"] = _scale
            elif t in ("TRUE", "FALSE"):
                env[t] = t == "TRUE"
            elif t in df.columns:
                key = f"_c{len(env)}"
                env[key] = _column(df, t, expr)
                t = key
            else:
                raise FormulaError(f"cannot evaluate {expr!r}: {t!r} is neither a column nor a function bayeslmm "
                                   f"knows ({', '.join(sorted(NUMERIC_FUNCS))}, I, scale, poly, factor, offset)")
            pieces.append(t)
        elif t.startswith("np."):
            env["np"] = np
            pieces.append(t)
        else:
            pieces.append(t)
    try:
        with np.errstate(all="ignore"):
            value = eval("".join(pieces), env)
    except Exception as exc:  # a malformed expression: say which
        raise FormulaError(f"cannot evaluate {expr!r} ({type(exc).__name__}: {exc})") from exc
    return np.broadcast_to(np.asarray(value, dtype=float), (len(df),)).copy()


def _column(df: pd.DataFrame, name: str, expr: str) -> np.ndarray:
    if name not in df.columns:
        raise FormulaError(f"column {name!r} in {expr!r} is not in the data")
    s = df[name]
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"{expr!r} needs a numeric column, but {name!r} is {s.dtype}")
    return s.to_numpy(dtype=float)


def _scale(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return (v - v.mean()) / v.std(ddof=1)


def evaluate(expr: str, df: pd.DataFrame) -> dict[str, pd.Series]:
    """The column(s) an operand becomes, keyed by R's name; a bare column name is looked up as is.

    Raises
    ------
    DataError
        When a numeric result is infinite or missing where the data are not (``log(0)``).
    """
    expr = expr.strip()
    if is_name(expr):
        name = unquote(expr)
        return {name: df[name]}
    call = call_of(expr)
    if call and call[0] in FACTOR_FUNCS and len(call[1]) == 1:
        inner = call[1][0]
        values = df[unquote(inner)] if is_name(inner) else pd.Series(_numeric_eval(inner, df))
        return {r_name(expr): pd.Series(as_factor(values), index=df.index)}
    degree = poly_degree(expr)
    if degree:
        x = _numeric_eval(call[1][0], df)
        z = r_poly(x, degree)
        return {name: pd.Series(z[:, j], index=df.index) for j, name in enumerate(column_names(expr))}
    inner = call[1][0] if call and call[0] == "offset" and len(call[1]) == 1 else expr
    values = _numeric_eval(inner, df)
    missing = df[[c for c in source_columns(inner) if c in df.columns]].isna().any(axis=1).to_numpy()
    bad = ~np.isfinite(values) & ~missing  # a missing value stays missing; log(0) is a mistake
    if bad.any():
        raise DataError(f"{r_name(expr)!r} is not finite in {int(bad.sum())} row(s) (e.g. log of 0 or a negative "
                        "number); transform differently (log(x + 1)) or remove those rows")
    return {r_name(expr): pd.Series(values, index=df.index)}
