"""The prior model: every term of a formula with its data, Bambi's names and its prior.

One source of truth for the priors every engine uses. :func:`default_model` builds it from the
model frame with Bambi 0.21's default, data-scaled priors (``bambi.priors.PriorScaler``'s rules,
written out below and checked against Bambi by ``tests/test_prior_model.py``) without building a
Bambi model: Bambi's model holds a dense rows x levels matrix per random term and its import
alone costs a second. :func:`from_bambi` reads the same structure from a built Bambi model (the
check, and callers that hold one); :func:`bambi_priors` hands the priors back to Bambi, so
Bambi's engine samples exactly these priors too.

Bambi's default priors (``auto_scale``), with ``s_y`` the response's sd (1 for a non-Gaussian
family) and ``sd(x)`` a column's sd (both ``ddof = 0``):

- a slope: ``Normal(0, 2.5 s_y / sd(x))``; with a logit link (binomial) ``Normal(0, 1 / sd(x))``,
  or ``Normal(0, 1)`` for a factor's columns (and interactions of factors only);
- the intercept: ``Normal(mean(y), sqrt((2.5 s_y)^2 + sum_j sigma_j^2 mean(x_j)^2))`` over the
  slopes' priors (mean 0 for a non-Gaussian family); ``Normal(0, 1.5)`` with a logit link;
- a group's effects: ``Normal(0, sd)``, ``sd ~ HalfNormal`` of the intercept's sigma (a random
  intercept) or of ``2.5 s_y / sd(x)`` (a slope; per column for a factor's columns);
- the residual sd: ``HalfStudentT(nu = 4, sigma = s_y)``; a negative binomial's ``alpha``:
  ``HalfCauchy(1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeslmm.errors import OptionsError
from bayeslmm.labels import TRIALS_COLUMN, bambi_variable, expr_dim, factor_column, factor_dim, level_dim
from bayeslmm.model.formula import Formula, ModelFrame, fixed_design
from bayeslmm.model.priors import DISTRIBUTIONS, Priors
from bayeslmm.model.rterms import r_name

#: Bambi's prior scaling multiplier (``PriorScaler.STD``).
STD = 2.5
#: Bambi's family of each bayeslmm family, and the link of its mean.
LINKS = {"gaussian": "identity", "binomial": "logit", "bernoulli": "logit", "poisson": "log",
         "negativebinomial": "log"}
#: The likelihood's parameter the linear predictor models, per Bambi family.
PARENTS = {"gaussian": "mu", "binomial": "p", "bernoulli": "p", "poisson": "mu", "negativebinomial": "mu"}


@dataclass(frozen=True)
class Dist:
    """A prior: a PyMC distribution's name and arguments (numbers, arrays, or a :class:`Dist`)."""

    name: str
    args: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """``Normal(mu=0, sigma=2.5)``: numbers in 4 significant digits, equal entries once."""
        return prior_text(self)


@dataclass(frozen=True)
class FixedTerm:
    """A fixed-effect term (one variable of the posterior): its columns, Bambi's name and dims, prior."""

    name: str
    data: np.ndarray  # (n, k), uncentred
    coords: dict  # {dim: labels} for a term of several columns (a factor's levels), else {}
    prior: Dist
    names: tuple[str, ...] = ()  # lme4's name of each column


@dataclass(frozen=True)
class GroupTerm:
    """A group-specific term as Bambi fits it: ``1|g``, ``x|g``, or a factor's columns ``f|g``.

    ``groups`` are the grouping factor's levels in Bambi's order (as text, sorted); ``levels`` the
    factor's columns along ``level_dim`` (``(None, ("",))`` for a numeric expression).
    """

    name: str
    group: str
    predictor: np.ndarray  # (n, len(levels))
    groups: tuple[str, ...]
    level_dim: str | None
    levels: tuple[str, ...]
    prior: Dist  # Normal(mu=0, sigma=Dist(<sd prior>))
    coefs: tuple[str, ...] = ()  # lme4's name of each column (``(Intercept)``, ``x``, ``fB``)

    @property
    def dim(self) -> str:
        """The dimension of the group's levels (``g__factor_dim``)."""
        return factor_dim(self.group)


@dataclass(frozen=True)
class PriorModel:
    """Every term of one formula on one data set, named as Bambi names it, with its prior."""

    family: str  # Bambi's family
    response: str  # Bambi's name of the response variable
    y: np.ndarray  # the response as Bambi holds it: (n,), or (n, 2) successes and trials
    offset: np.ndarray
    intercept: FixedTerm | None
    common: tuple[FixedTerm, ...]
    group: tuple[GroupTerm, ...]
    aux: dict  # {"sigma": Dist} (Gaussian), {"alpha": Dist} (negative binomial)
    center: bool = True  # slopes centred when there is an intercept (Bambi's center_predictors)
    user_set: tuple[str, ...] = ()  # the variables whose prior a user's statement set (:func:`apply_priors`)

    @property
    def link(self) -> str:
        """The link of the mean (Bambi's default for the family)."""
        return LINKS.get(self.family, "")

    @property
    def parameter(self) -> str:
        """The likelihood's parameter of the linear predictor (``mu``; ``p`` for binomial families)."""
        return PARENTS.get(self.family, "mu")

    def texts(self) -> dict[str, str]:
        """Each parameter's prior as text, keyed by Bambi's variable (``Intercept``, ``1|g``, ``sigma``)."""
        out = {t.name: t.prior.text for t in (*((self.intercept,) if self.intercept else ()), *self.common)}
        # Bambi lists the intercept after the slopes
        if self.intercept is not None:
            out = {**{k: v for k, v in out.items() if k != self.intercept.name}, self.intercept.name:
                   self.intercept.prior.text}
        out.update({t.name: t.prior.text for t in self.group})
        out.update({k: d.text for k, d in self.aux.items()})
        return out


def prior_text(prior) -> str:
    """A prior (a :class:`Dist` or Bambi's ``Prior``) as text, numbers with 4 significant digits."""
    from bayeslmm.numbers import format_number

    if not hasattr(prior, "args"):
        return str(prior)
    args = []
    for k, v in prior.args.items():
        if hasattr(v, "args"):
            v = prior_text(v)
        elif isinstance(v, np.ndarray):
            flat = [format_number(x) for x in np.ravel(v)]
            v = flat[0] if flat and len(set(flat)) == 1 else f"[{', '.join(flat)}]"
        else:
            v = format_number(v)
        args.append(f"{k}={v}")
    return f"{prior.name}({', '.join(args)})"


def bambi_family(formula: Formula) -> str:
    """Bambi's family of a formula: ``binomial`` for ``cbind`` responses, ``bernoulli`` for 0/1 ones."""
    if formula.family == "binomial":
        return "binomial" if formula.cbind else "bernoulli"
    return {"negbinomial": "negativebinomial"}.get(formula.family, formula.family)


def response_name(formula: Formula) -> str:
    """Bambi's name of the response variable (``reaction``; ``p(sick, (trials))`` for ``cbind``)."""
    if formula.cbind:
        return f"p({r_name(formula.cbind[0])}, {TRIALS_COLUMN})"
    return formula.response


def bambi_groups(levels) -> tuple[str, ...]:
    """Bambi's order of a grouping factor's levels: as text, sorted (``1, 10, 2``; R's is ``1, 2, 10``)."""
    return tuple(sorted(str(v) for v in levels))


# ---------------------------------------------------------------------------------------
# Bambi's default priors, from the model frame
# ---------------------------------------------------------------------------------------


def default_model(frame: ModelFrame, data: pd.DataFrame) -> PriorModel:
    """The prior model of a frame's formula with Bambi's default priors, without Bambi.

    Parameters
    ----------
    frame : ModelFrame
        :func:`~bayeslmm.model.formula.model_frame` of the formula on ``data``.
    data : DataFrame
        The model's data (:func:`bayeslmm.engines.bayes.model_data`).
    """
    formula = frame.formula
    family = bambi_family(formula)
    logit = LINKS[family] == "logit"
    n = frame.y.size
    offset = np.zeros(n) if frame.offset is None else np.asarray(frame.offset, dtype=float)
    if family == "binomial":
        y = np.column_stack([frame.y, frame.trials]).astype(float)
    elif family == "gaussian":
        y = np.asarray(frame.y, dtype=float) + offset  # the frame holds y - offset
    else:
        y = np.asarray(frame.y, dtype=float)
    gaussian = family == "gaussian"
    y_mean, y_sd = (float(np.mean(y)), float(np.std(y))) if gaussian else (0.0, 1.0)

    design = fixed_design(formula, data)
    common: list[FixedTerm] = []
    slope_sigmas, slope_means = [], []
    has_intercept = False
    for name, term in design.common.terms.items():
        cols = np.asarray(design.X[:, design.common.slices[name]], dtype=float).reshape(n, -1)
        if term.kind == "intercept":
            has_intercept = True
            continue
        kinds = [c.kind for c in getattr(term, "components", ())]
        all_categoric = term.kind == "categoric" or (term.kind == "interaction" and set(kinds) == {"categoric"})
        k = cols.shape[1]
        if logit:
            if all_categoric:
                sigma = np.ones(k)
            elif k == 1:
                sigma = 1.0 / np.std(cols, axis=0)
            else:  # Bambi takes the sd of the row sums of a numeric-by-factor interaction
                sigma = np.full(k, 1.0 / np.std(cols.sum(axis=1)))
        else:
            sigma = STD * y_sd / np.std(cols, axis=0)
        slope_sigmas.append(sigma)
        slope_means.append(cols.mean(axis=0))
        levels = getattr(term, "levels", None)
        coords = {}
        if k > 1 or levels is not None:
            labels = levels if levels is not None else [str(i) for i in range(k)]
            coords = {level_dim(name): np.asarray([str(v) for v in labels])}
        # a term of one column (a two-level factor too) has scalar arguments, as in Bambi
        prior = Dist("Normal", {"mu": np.zeros(k), "sigma": np.asarray(sigma, dtype=float)} if k > 1 else
                     {"mu": 0.0, "sigma": float(np.ravel(sigma)[0])})
        names = tuple(c.name for c in design.columns if c.variable == name)
        common.append(FixedTerm(name, cols, coords, prior, names))

    # the intercept's sigma widens by each slope's prior sigma times its column's mean
    int_sigma = STD * y_sd
    if slope_sigmas:
        s, m = np.concatenate([np.ravel(v) for v in slope_sigmas]), np.concatenate(slope_means)
        int_sigma = float(np.sqrt(int_sigma ** 2 + np.dot(s ** 2, m ** 2)))
    intercept = None
    if has_intercept:
        mu, sigma = (0.0, 1.5) if logit else (y_mean, int_sigma)
        intercept = FixedTerm("Intercept", np.ones((n, 1)), {}, Dist("Normal", {"mu": mu, "sigma": sigma}))

    group = _group_terms(frame, data, int_sigma, y_sd)
    aux = {}
    if gaussian:
        aux["sigma"] = Dist("HalfStudentT", {"nu": 4.0, "sigma": y_sd})
    elif family == "negativebinomial":
        aux["alpha"] = Dist("HalfCauchy", {"beta": 1.0})
    return PriorModel(family, response_name(formula), y, offset, intercept, tuple(common), group, aux)


def _group_terms(frame: ModelFrame, data: pd.DataFrame, int_sigma: float, y_sd: float) -> tuple[GroupTerm, ...]:
    """Bambi's group-specific terms, in its order: per written term, ``1|g`` then each expression.

    A factor expression ``f|g`` has a column per level of ``f`` in text order, less the first when
    ``g`` has a random intercept in any term (Bambi's coding, which
    :func:`bayeslmm.engines.marginal.coding_mismatch` compares with lme4's).
    """
    intercepts = {b.term.group for b in frame.blocks if b.term.intercept}
    out: dict[str, GroupTerm] = {}
    for block in frame.blocks:
        term = block.term
        groups = bambi_groups(block.levels)
        exprs: dict[str, list[int]] = {}
        for j, c in enumerate(term.columns):
            exprs.setdefault(c.variable(term.group), []).append(j)
        for name, js in exprs.items():
            if name in out:
                continue
            col = term.columns[js[0]]
            if not col.level:  # the intercept or a numeric slope
                x = block.values[:, js[0]]
                sd = int_sigma if col.name == "(Intercept)" else STD * y_sd / np.std(x)
                out[name] = GroupTerm(name, term.group, x.reshape(-1, 1), groups, None, ("",),
                                      Dist("Normal", {"mu": 0.0, "sigma": Dist("HalfNormal", {"sigma": float(sd)})}),
                                      (col.name,))
                continue
            values = _factor_values(data, col.expr)
            labels = sorted(values)
            if term.group in intercepts:
                labels = labels[1:]
            x = np.column_stack([values[lv] for lv in labels])
            sd = STD * y_sd / np.std(x, axis=0)
            out[name] = GroupTerm(name, term.group, x, groups, expr_dim(col.expr), tuple(labels),
                                  Dist("Normal", {"mu": 0.0, "sigma": Dist("HalfNormal", {"sigma": sd})}),
                                  tuple(factor_column(col.expr, lv) for lv in labels))
    return tuple(out.values())


def _factor_values(data: pd.DataFrame, expr: str) -> dict[str, np.ndarray]:
    """Indicator column of each level of a factor expression present in the data, keyed by its label."""
    from bayeslmm.model.rterms import as_factor

    values = as_factor(data[expr])
    return {str(lv): np.asarray(values == lv, dtype=float) for lv in values.categories}


# ---------------------------------------------------------------------------------------
# The user's priors
# ---------------------------------------------------------------------------------------


def apply_priors(pm: PriorModel, priors: Priors) -> PriorModel:
    """``pm`` with the priors the user set (:mod:`bayeslmm.model.priors`) in place of Bambi's defaults.

    Raises
    ------
    OptionsError
        One line naming a statement that reaches no parameter of this model, and what exists.
    """
    from dataclasses import replace

    if not priors.statements:
        return pm
    _check_reach(pm, priors)
    common = []
    for term in pm.common:
        dists = [_user(priors.chosen("b", coef=c, term=term.name)) for c in term.names]
        common.append(replace(term, prior=_combine(dists, term.prior, f"b({term.name})")))
    intercept = pm.intercept
    if intercept is not None and priors.chosen("Intercept") is not None:
        intercept = replace(intercept, prior=_user(priors.chosen("Intercept")))
    group = []
    for term in pm.group:
        dists = [_user(priors.chosen("sd", term.group, c)) for c in term.coefs]
        sd = _combine(dists, term.prior.args["sigma"], f"sd({term.group})")
        group.append(replace(term, prior=Dist("Normal", {**term.prior.args, "sigma": sd})))
    aux = dict(pm.aux)
    if priors.chosen("sigma") is not None:
        aux["sigma"] = _user(priors.chosen("sigma"))
    if priors.chosen("shape") is not None:  # brms's shape: the negative binomial's alpha (lme4's theta)
        aux["alpha"] = _user(priors.chosen("shape"))
    new = replace(pm, common=tuple(common), intercept=intercept, group=tuple(group), aux=aux)
    before, after = pm.texts(), new.texts()
    cors = [f"cor({g})" for g in dict.fromkeys(t.group for t in pm.group) if priors.chosen("cor", g)]
    return replace(new, user_set=(*(k for k in after if after[k] != before.get(k)), *cors))


def pin_priors(pm: PriorModel, full: PriorModel) -> PriorModel:
    """``pm`` (a model of some of the rows) with the priors of ``full`` (the same formula on all of them).

    A refit for cross-validation must keep the posterior's prior: Bambi's default priors are scaled to
    the data, so recomputing them from the rows a refit keeps would change the model being validated
    (brms keeps a fit's priors when ``kfold`` refits it). Terms ``full`` lacks, or whose columns
    differ (a level no kept row has), keep ``pm``'s.
    """
    from dataclasses import replace

    def columns(t) -> int:
        return np.shape(t.data if isinstance(t, FixedTerm) else t.predictor)[1]

    def same(a, b) -> bool:
        return b is not None and columns(a) == columns(b)

    fixed = {t.name: t for t in full.common}
    groups = {t.name: t for t in full.group}
    common = tuple(replace(t, prior=fixed[t.name].prior) if same(t, fixed.get(t.name)) else t for t in pm.common)
    group = tuple(replace(t, prior=groups[t.name].prior) if same(t, groups.get(t.name)) else t for t in pm.group)
    intercept = pm.intercept
    if intercept is not None and full.intercept is not None:
        intercept = replace(intercept, prior=full.intercept.prior)
    aux = {k: full.aux.get(k, d) for k, d in pm.aux.items()}
    return replace(pm, common=common, group=group, intercept=intercept, aux=aux, user_set=full.user_set)


def _user(statement) -> Dist | None:
    return None if statement is None else Dist(statement.dist, statement.kwargs)


def _combine(dists: list[Dist | None], default, where: str):
    """One prior for a term's columns: the default where no statement reaches a column.

    A factor's columns are one variable (one distribution, vector arguments): a statement may set
    some of them only when the distribution is the default's, whose arguments it replaces there.
    """
    if all(d is None for d in dists):
        return default
    if len(dists) == 1:
        return dists[0]
    names = {d.name for d in dists if d is not None}
    if len(names) > 1 or (None in dists and names != {default.name}):
        raise OptionsError(f"priors of {where}: the columns of one factor term share one distribution; set it for "
                           f"the whole term or use {default.name} for each column")
    name = names.pop()
    args = {}
    for key in DISTRIBUTIONS[name][0]:
        args[key] = np.array([float(d.args[key]) if d is not None else
                              float(np.broadcast_to(default.args[key], len(dists))[i])
                              for i, d in enumerate(dists)])
    return Dist(name, args)


def _check_reach(pm: PriorModel, priors: Priors) -> None:
    """Refuse a statement that sets nothing in this model, naming what it could set."""
    slopes = [c for t in pm.common for c in t.names]
    terms = {t.name for t in pm.common}
    coefs = {}
    for t in pm.group:
        coefs.setdefault(t.group, []).extend(t.coefs)
    for s in priors.statements:
        if s.cls == "b":
            if not slopes:
                raise OptionsError(f"prior {s.text!r}: the model has no fixed-effect slopes")
            if s.coef and s.coef not in slopes and s.coef not in terms:
                raise OptionsError(f"prior {s.text!r}: no fixed effect {s.coef!r}; the fixed effects are "
                                   f"{', '.join(slopes)}")
        elif s.cls == "Intercept" and pm.intercept is None:
            raise OptionsError(f"prior {s.text!r}: the model has no intercept")
        elif s.cls == "sd":
            if not coefs:
                raise OptionsError(f"prior {s.text!r}: the model has no random effects")
            if s.group and s.group not in coefs:
                raise OptionsError(f"prior {s.text!r}: the formula has no grouping factor {s.group!r}; its grouping "
                                   f"factors are {', '.join(coefs)}")
            if s.coef and s.coef not in coefs[s.group]:
                raise OptionsError(f"prior {s.text!r}: {s.group} has no random coefficient {s.coef!r}; its "
                                   f"coefficients are {', '.join(coefs[s.group])}")
        elif s.cls == "sigma" and "sigma" not in pm.aux:
            raise OptionsError(f"prior {s.text!r}: a {pm.family} model has no residual sd")
        elif s.cls == "shape" and "alpha" not in pm.aux:
            raise OptionsError(f"prior {s.text!r}: only a negative binomial model has a shape (theta)")


# ---------------------------------------------------------------------------------------
# The same, read from a built Bambi model; and handed back to Bambi
# ---------------------------------------------------------------------------------------


def from_bambi(model) -> PriorModel:
    """The prior model of a built ``bambi.Model`` (its terms, names, dims and priors)."""
    parent = model.family.likelihood.parent
    if set(model.conditional_parameters) != {parent}:
        raise ValueError(f"distributional sub-models (a formula for {', '.join(model.conditional_parameters)})")
    link = model.family.link[parent].name
    if model.family.name in LINKS and LINKS[model.family.name] != link:
        raise ValueError(f"{model.family.name} family with a {link} link")
    if getattr(model.conditional_parameters[parent], "hsgp_terms", None):
        raise ValueError("HSGP terms")
    comp = model.conditional_parameters[parent]
    n = np.asarray(model.response_term.data).shape[0]
    offset = sum((np.asarray(t.data, dtype=float).reshape(-1) for t in comp.offset_terms.values()), np.zeros(n))
    common = []
    for term in comp.common_terms.values():
        coords = {d: np.asarray([str(v) for v in c]) for d, c in term.coords.items()}
        common.append(FixedTerm(bambi_variable(term), np.asarray(term.data, dtype=float).reshape(n, -1), coords,
                                _dist(term.prior)))
    intercept = None
    if comp.intercept_term is not None:
        intercept = FixedTerm(bambi_variable(comp.intercept_term), np.ones((n, 1)), {},
                              _dist(comp.intercept_term.prior))
    group = []
    for term in comp.group_specific_terms.values():
        name = bambi_variable(term)
        group_name = name.split("|", 1)[1]
        if term.categorical:
            dims = [d for d in term.coords if not d.endswith(factor_dim(""))]
            level_dim_, levels = dims[0], tuple(str(v) for v in term.coords[dims[0]])
        else:
            level_dim_, levels = None, ("",)
        group.append(GroupTerm(name, group_name, np.asarray(term.predictor, dtype=float).reshape(n, -1),
                               tuple(str(g) for g in term.groups), level_dim_, levels, _dist(term.prior)))
    aux = {k: _dist(c.prior) for k, c in model.marginal_parameters.items()}
    return PriorModel(model.family.name, bambi_variable(model.response_term),
                      np.asarray(model.response_term.data, dtype=float), offset, intercept, tuple(common),
                      tuple(group), aux, bool(model.center_predictors))


def _dist(prior) -> Dist:
    """A Bambi ``Prior`` as a :class:`Dist` (a constant stays a number)."""
    if not hasattr(prior, "args"):
        return prior
    if getattr(prior, "dist", None) is not None:
        raise ValueError(f"prior {prior} is a custom distribution")
    args = {k: _dist(v) if hasattr(v, "args") else (np.asarray(v, dtype=float) if np.ndim(v) else float(v))
            for k, v in prior.args.items()}
    return Dist(prior.name, args)


def bambi_priors(pm: PriorModel) -> dict:
    """The priors of ``pm`` as ``bambi.Model(priors=...)`` takes them, keyed by Bambi's term names."""
    import bambi as bmb

    def prior(d: Dist):
        return bmb.Prior(d.name, **{k: prior(v) if isinstance(v, Dist) else v for k, v in d.args.items()})

    terms = (*((pm.intercept,) if pm.intercept else ()), *pm.common, *pm.group)
    return {**{t.name: prior(t.prior) for t in terms}, **{k: prior(d) for k, d in pm.aux.items()}}


__all__ = ["Dist", "FixedTerm", "GroupTerm", "PriorModel", "apply_priors", "bambi_family", "bambi_groups",
           "bambi_priors", "default_model", "from_bambi", "pin_priors", "prior_text", "response_name"]
