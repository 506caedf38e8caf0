"""Every naming rule of the package: Bambi's posterior variables, lme4's terms, formulae's columns.

The same quantity has three names. Bambi (and the marginal engine, which copies it) names the
posterior variables: ``Intercept``, ``bodyLength2``, ``factor(period)`` with a level dimension,
``1|mountainRange`` and ``bodyLength2|mountainRange`` for the group effects, ``1|mountainRange_sigma``
for their standard deviation and ``sigma`` for the residual's. lme4 and broom.mixed's tidy
table say ``(Intercept)``, ``factor(period)2``, term ``sd__(Intercept)`` of group
``mountainRange`` and term ``sd__Observation`` of group ``Residual``. formulae, which builds the
fixed-effect design for Bambi and for lme4's side, names its columns ``factor(period)[2]``,
``x:factor(period)[2]`` or ``f[b]:h[v]``, and a term's levels ``2`` or ``b, v`` (the posterior's
level labels). A factor's random slope ``(0 + f|g)`` is lme4's columns ``fA``, ``fB`` (terms
``sd__fA``, ``cor__fA.fB``) and Bambi's one variable ``f|g`` (``f|g_sigma``) with a column per
level along ``f__expr_dim`` (:class:`RandomColumn`). The functions here turn one name into
another; nothing else in the package builds or parses these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Dimensions of the draws in a posterior (ArviZ's sample dims).
SAMPLE_DIMS = ("chain", "draw")
#: lme4's name of the fixed intercept, and Bambi's.
INTERCEPT, BAMBI_INTERCEPT = "(Intercept)", "Intercept"
#: broom.mixed's group and term of the residual standard deviation, and its posterior variable.
RESIDUAL, RESIDUAL_TERM, RESIDUAL_VARIABLE = "Residual", "sd__Observation", "sigma"
#: The negative binomial's theta (``Var(y) = mu + mu^2 / theta``: lme4's ``glmer.nb`` theta, MASS's, and
#: Bambi's ``alpha``): its tidy row's term (group :data:`RESIDUAL`, effect ``ran_pars``) and its posterior
#: variable. broom.mixed has no row for it (lme4's ``VarCorr`` of a glmer.nb fit has no residual); bayeslmm
#: keeps one so that lme4's theta stands beside the posterior's.
NB_SIZE_TERM, NB_SIZE_VARIABLE = "theta", "alpha"
#: Prefix of a standard deviation's term in broom.mixed (``sd__(Intercept)``).
SD_PREFIX = "sd__"
#: Prefix of a correlation's term in broom.mixed (``cor__(Intercept).Days``).
COR_PREFIX = "cor__"
#: The column holding a binomial response's trials (successes + failures of ``cbind(s, f)``).
TRIALS_COLUMN = "(trials)"


def effect_variable(group: str, coef: str) -> str:
    """Bambi's variable of a group's effects on one coefficient: ``1|g`` or ``x|g``."""
    return f"{'1' if coef == INTERCEPT else coef}|{group}"


def hyper_variable(variable: str, hyper: str = "sigma") -> str:
    """Bambi's variable of a hyperparameter of a group-effect variable (``1|g`` -> ``1|g_sigma``)."""
    return f"{variable}_{hyper}"


def sd_term(coef: str) -> str:
    """broom.mixed's term of the standard deviation of a coefficient's effects (``sd__(Intercept)``)."""
    return f"{SD_PREFIX}{coef}"


def cor_term(a: str, b: str) -> str:
    """broom.mixed's term of the correlation of two coefficients' effects (``cor__(Intercept).Days``).

    ``a`` comes first in the random term (lme4 prints ``cor__(Intercept).Days``, never the reverse).
    """
    return f"{COR_PREFIX}{a}.{b}"


def cor_variable(group: str, a: str, b: str) -> str:
    """The posterior variable of a correlation: its broom.mixed term and group, ``cor__(Intercept).Days|Subject``.

    Bambi has no correlated group effects, so bayeslmm names these itself (both Bayesian engines
    that estimate correlations, the marginal one and the PyMC reference, use this name).
    """
    return f"{cor_term(a, b)}|{group}"


def cor_pairs(coefs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """The coefficient pairs of a correlated block, in lme4's order: ``(a, b)`` for b after a, by column of
    the lower triangle (``(1, x), (1, z), (x, z)``), as ``VarCorr`` and broom.mixed list them."""
    return [(coefs[i], coefs[j]) for i in range(len(coefs)) for j in range(i + 1, len(coefs))]


def sdcor_terms(coefs: tuple[str, ...] | list[str], correlated: bool = True) -> list[str]:
    """broom.mixed's ``ran_pars`` terms of one random term, in the order its tidy lists them.

    broom.mixed reads lme4's ``as.data.frame(VarCorr(fit), order = "lower.tri")``: the lower
    triangle of the term's covariance matrix column by column, each sd followed by its
    correlations with the coefficients after it (the order of theta and of ``confint``):
    ``sd__(Intercept), cor__(Intercept).x, cor__(Intercept).z, sd__x, cor__x.z, sd__z``.
    ``correlated=False`` (``||`` or one coefficient) gives the sds alone.
    """
    out = []
    for i, a in enumerate(coefs):
        out.append(sd_term(a))
        if correlated:
            out += [cor_term(a, b) for b in coefs[i + 1:]]
    return out


def sd_variable(group: str, term: str) -> str:
    """Bambi's variable of a standard deviation (or bayeslmm's of a correlation) given broom.mixed's ``(group, term)``.

    ``("g", "sd__x")`` -> ``x|g_sigma``; ``("Residual", "sd__Observation")`` -> ``sigma``;
    ``("g", "cor__(Intercept).x")`` -> ``cor__(Intercept).x|g``.
    """
    if (group, term) == (RESIDUAL, RESIDUAL_TERM):
        return RESIDUAL_VARIABLE
    if term.startswith(COR_PREFIX):
        return f"{term}|{group}"
    if not term.startswith(SD_PREFIX):
        raise ValueError(f"{term!r} is not the term of a standard deviation (sd__<coefficient>)")
    return hyper_variable(effect_variable(group, term[len(SD_PREFIX):]))


def classify(variable: str, level: str = "") -> tuple[str, str, str]:
    """broom.mixed's ``(effect, group, term)`` of a posterior variable.

    ``sigma`` -> ``("ran_pars", "Residual", "sd__Observation")``;
    ``1|g_sigma`` -> ``("ran_pars", "g", "sd__(Intercept)")``; ``x|g`` -> ``("ran_vals", "g", "x")``;
    ``Intercept`` -> ``("fixed", "", "(Intercept)")``; ``x`` -> ``("fixed", "", "x")``;
    ``cor__(Intercept).x|g`` -> ``("ran_pars", "g", "cor__(Intercept).x")``. A fixed
    variable with levels (``factor(period)``) gets one term per level: see :class:`FixedColumn`.
    A factor's group effects (``f|g``, ``f|g_sigma``) have a column per level along
    :func:`expr_dim`; ``level`` is that label, and names lme4's coefficient:
    ``("f|g_sigma", "A")`` -> ``("ran_pars", "g", "sd__fA")``, ``("f|g", "A")`` -> ``("ran_vals", "g", "fA")``.
    """
    if variable == RESIDUAL_VARIABLE:
        return "ran_pars", RESIDUAL, RESIDUAL_TERM
    if variable.startswith(COR_PREFIX) and "|" in variable:
        term, group = variable.rsplit("|", 1)
        return "ran_pars", group, term
    if "|" in variable:
        expr, group = variable.split("|", 1)
        coef = INTERCEPT if expr == "1" else factor_column(expr, level)
        sd_suffix = hyper_variable("")
        if group.endswith(sd_suffix):
            return "ran_pars", group[: -len(sd_suffix)], sd_term(coef)
        return "ran_vals", group, coef
    return "fixed", "", INTERCEPT if variable == BAMBI_INTERCEPT else variable


def auxiliary_variables(family: str) -> dict[str, tuple[str, str, str]]:
    """broom.mixed's ``(effect, group, term)`` of each posterior variable of a family's own parameters
    (beyond the linear predictor's and the residual sd): the negative binomial's ``alpha`` ->
    ``("ran_pars", "Residual", "theta")``. Only the family knows them: ``alpha`` is a fixed effect's name
    in another model."""
    return {NB_SIZE_VARIABLE: ("ran_pars", RESIDUAL, NB_SIZE_TERM)} if family == "negbinomial" else {}


def lme4_name(column: str) -> str:
    """lme4's name of a formulae design column: ``mountainRange[Central]`` -> ``mountainRangeCentral``,
    ``f[b]:h[v]`` -> ``fb:hv``, ``Intercept`` -> ``(Intercept)``."""
    if column == BAMBI_INTERCEPT:
        return INTERCEPT
    return re.sub(r"\[([^\]]*)\]", r"\1", column)


@dataclass(frozen=True)
class FixedColumn:
    """One column of the fixed-effect design under its three names.

    Attributes
    ----------
    name : str
        lme4's (``factor(period)2``, ``x:factor(period)2``, ``fb:hv``).
    variable : str
        Bambi's posterior variable holding its draws (``factor(period)``, ``f:h``).
    level : str
        Its label along that variable's level dimension (``2``, ``b, v``); ``""`` when the
        variable has none.
    """

    name: str
    variable: str
    level: str = ""


def fixed_columns(term: str, labels: list[str], levels: list[str] | None = None) -> tuple[FixedColumn, ...]:
    """The columns of one formulae term: its name (Bambi's variable), column labels and levels.

    formulae's ``Term.name``, ``Term.labels`` and ``Term.levels`` (``None`` for numeric terms);
    Bambi names the posterior variable after the term and labels its level dimension with the
    term's levels (``0, 1, ...`` for a numeric term of several columns).
    """
    if levels is None:
        if len(labels) == 1:
            return (FixedColumn(lme4_name(labels[0]), term),)
        levels = [str(i) for i in range(len(labels))]
    if len(levels) != len(labels):
        raise ValueError(f"term {term!r} has {len(labels)} columns but {len(levels)} levels")
    return tuple(FixedColumn(lme4_name(label), term, str(level)) for label, level in zip(labels, levels, strict=True))


def bambi_variable(term) -> str:
    """The posterior variable of a Bambi term object (its alias if it has one, else its name)."""
    return term.alias or term.name


def level_dim(variable: str) -> str:
    """Bambi's dimension of a fixed-effect variable's levels (``factor(period)_dim``)."""
    return f"{variable}_dim"


def factor_dim(name: str) -> str:
    """Bambi's dimension of a grouping factor's levels (``mountainRange__factor_dim``)."""
    return f"{name}__factor_dim"


def expr_dim(expr: str) -> str:
    """Bambi's dimension of the columns of a factor's group effects (``f__expr_dim`` of ``f|g``).

    Bambi 0.21 fits ``(0 + f|g)`` as one variable ``f|g`` with dims ``(g__factor_dim, f__expr_dim)``,
    its sds as ``f|g_sigma`` with dim ``f__expr_dim`` (one sd per column, each with its own prior).
    """
    return f"{expr}__expr_dim"


def factor_column(expr: str, level: str) -> str:
    """R's name of a factor's column in a model matrix: the expression followed by the level
    (``fA``, ``factor(x)2``); the expression alone for a numeric column (``level`` empty)."""
    return f"{expr}{level}"


@dataclass(frozen=True)
class RandomColumn:
    """One coefficient of a random term under its names.

    Attributes
    ----------
    name : str
        lme4's (``(Intercept)``, ``x``, ``fA``): the column of ``model.matrix`` of the term.
    expr : str
        The term's expression it comes from (``(Intercept)``, ``x``, ``f``): Bambi's variable is
        ``<expr>|<group>`` (``1|g`` for the intercept).
    level : str
        Its label along the variable's :func:`expr_dim` (the factor's level, ``A``); ``""`` for
        a numeric column.
    """

    name: str
    expr: str
    level: str = ""

    def variable(self, group: str) -> str:
        """Bambi's variable of the group effects holding this column (``1|g``, ``x|g``, ``f|g``)."""
        return effect_variable(group, self.expr)

    def sd_variable(self, group: str) -> str:
        """Bambi's variable of this column's standard deviation (``f|g_sigma``, at :attr:`level`)."""
        return hyper_variable(self.variable(group))

    @property
    def dim(self) -> str | None:
        """The variable's dimension along which this column sits (``f__expr_dim``); ``None`` if numeric."""
        return expr_dim(self.expr) if self.level else None


def random_columns(expr: str, levels: list[str] | tuple[str, ...] | None = None,
                   full: bool = True) -> tuple[RandomColumn, ...]:
    """The columns of one expression of a random term, as R's ``model.matrix`` names them.

    A numeric expression (``levels`` ``None``) is one column named after it; a factor is a
    column per level (``full``, the first factor of a term without intercept) or per level
    after the first (treatment contrasts).
    """
    if levels is None:
        return (RandomColumn(expr, expr),)
    kept = list(levels) if full else list(levels)[1:]
    return tuple(RandomColumn(factor_column(expr, str(lv)), expr, str(lv)) for lv in kept)
