"""The marginal engine: exact, fast posterior sampling for Gaussian mixed models.

For a Gaussian model with identity link the random effects integrate out exactly:
``y ~ N(X b, sigma^2 I + Z D Z')`` with ``D`` block diagonal (one ``Sigma = diag(s) R diag(s)``
per level of a correlated term, ``s^2`` per level of an uncorrelated one).  NUTS (nutpie) then
samples only the fixed effects, the standard deviations and the correlations -- a few
well-conditioned dimensions, no funnel -- and the random effects are drawn afterwards from
their exact conditional normal given each posterior draw.  The posterior is the Bambi
model's posterior (for ``(x|g)``: Bambi's priors on the sds and fixed effects, and an LKJ
prior on each correlation matrix, which Bambi lacks): the
priors are read from the prior model (:mod:`bayeslmm.model.prior_model`: Bambi's defaults, computed
without Bambi, and the user's), and the fixed-effect design is centred and
the intercept reported exactly as Bambi does it.  The returned ``DataTree`` has Bambi's
variable names, dims and coords, and a pointwise log-likelihood conditional on the random
effects as ``bambi.Model.compute_log_likelihood`` gives it, so LOO compares across engines.

The numerical kernels (sparse Cholesky, selected inverse, gradient) are numba functions
in :mod:`bayeslmm.engines.marginal_lik`, cached across processes.  nutpie samples: its Rust threads
call the C entry point of the kernel directly (nutpie's internal ``CompiledPyMCModel``, as
``nutpie.compile_pymc_model`` builds it; tested with the versions in
:data:`NUTPIE_TESTED`), or, on another nutpie, through its public python-function
interface ``nutpie.compiled_pyfunc.from_pyfunc``.  ``options.sampler`` is ignored.

Public functions: :func:`supports`, :func:`sample` and :func:`log_likelihood` (recomputes the
pointwise log-likelihood from a saved posterior); :func:`spec` raises :class:`Unsupported` with
the reason.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, fields

import numpy as np
import xarray as xr

from bayeslmm.engines import marginal_lik as ml
from bayeslmm.labels import (
    RESIDUAL_VARIABLE,
    cor_pairs,
    cor_variable,
    factor_column,
    hyper_variable,
)
from bayeslmm.model.formula import Formula, ModelFrame
from bayeslmm.model.prior_model import PriorModel, from_bambi
from bayeslmm.model.priors import Priors

_STAT_NAMES = {
    "diverging": "diverging",
    "depth": "tree_depth",
    "maxdepth_reached": "reached_max_treedepth",
    "logp": "lp",
    "energy": "energy",
    "energy_error": "energy_error",
    "step_size": "step_size",
    "step_size_bar": "step_size_bar",
    "n_steps": "n_steps",
    "mean_tree_accept": "acceptance_rate",
    "index_in_trajectory": "index_in_trajectory",
}


#: The group of the engine's internal draws (what the log-likelihood is recomputed from).
ENGINE_GROUP = "marginal_engine"
ENGINE_GROUP_DESCRIPTION = ("bayeslmm's marginal engine: coefficients of its internal, centred design; the pointwise "
                            "log-likelihood is recomputed from these (bayeslmm.engines.bayes.log_likelihood)")


class Unsupported(Exception):
    """The model is outside what the marginal engine handles (the message says why)."""


@dataclass(frozen=True)
class _Fixed:
    name: str
    index: slice  # into the internal coefficient vector
    dims: tuple[str, ...]
    coords: dict


@dataclass(frozen=True)
class _Random:
    name: str  # Bambi's name, e.g. "1|mountainRange"
    sigma_name: str  # e.g. "1|mountainRange_sigma"
    factor: int
    slot: int  # coefficient within the factor
    order: np.ndarray  # frame level index of each of Bambi's groups
    dim: str
    groups: np.ndarray
    # A factor's column (``(0 + f|g)``): Bambi's variables ``f|g`` and ``f|g_sigma`` hold every
    # column of the factor along ``level_dim`` (``f__expr_dim``); this component is at ``level``,
    # position ``position`` there (Bambi orders levels as text, lme4 as R: components and slots
    # follow lme4's order, the posterior Bambi's).
    level_dim: str | None = None
    level: str = ""
    position: int = 0


@dataclass(frozen=True)
class CorBlock:
    """A correlated term ``(1 + x|g)``: its coefficients' sds and an LKJ prior on their correlations."""

    group: str
    coefs: tuple[str, ...]  # lme4's names, in the term's order
    components: tuple[int, ...]  # their sds' positions in Spec.random
    eta: float
    cor: slice  # the correlations' unconstrained values within theta's correlation part
    variables: tuple[str, ...]  # posterior variable of each pair, in labels.cor_pairs order

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Matrix positions ``(row, column)``, row > column, of each variable's correlation."""
        k = len(self.coefs)
        return [(j, i) for i in range(k) for j in range(i + 1, k)]


@dataclass(frozen=True)
class Design:
    """The linear predictor of one parameter of the prior model, read against the model frame.

    What every engine shares (:func:`design`): the fixed-effect design as Bambi builds it
    (``X = [1, centred columns]`` when there is an intercept), the random terms in lme4's layout
    matched to Bambi's variables, and the priors (``bcode``/``bpar`` per internal coefficient, the
    intercept's on the centred intercept; ``scode``/``spar`` per random component's sd).
    """

    response: str
    offset: np.ndarray  # sum of the offsets on the link scale
    X: np.ndarray
    x_mean: np.ndarray
    intercept: str | None
    fixed: tuple[_Fixed, ...]
    random: tuple[_Random, ...]
    factors: tuple[ml.Factor, ...]
    bcode: np.ndarray
    bpar: np.ndarray
    scode: np.ndarray
    spar: np.ndarray
    blocks: tuple[CorBlock, ...] = ()

    @property
    def n_cor(self) -> int:
        """Number of correlation parameters."""
        return sum(len(b.variables) for b in self.blocks)

    def parts(self) -> dict:
        """Its fields by name (shallow): what an engine's Spec is built from."""
        return {f.name: getattr(self, f.name) for f in fields(Design)}


@dataclass(frozen=True, kw_only=True)
class Spec(Design):
    """Everything the marginal engine needs: a :class:`Design` and the Gaussian response.

    ``offset`` is what the engine subtracts from ``y`` (it models y - offset), ``shift`` what it
    subtracts internally (the mean of y when there is an intercept); ``scode``/``spar`` end with the
    residual sd's prior.
    """

    y: np.ndarray  # the observed response
    shift: float

    @property
    def n_dim(self) -> int:
        """Length of theta: coefficients, log sds, log sigma, correlations' unconstrained values."""
        return self.X.shape[1] + len(self.random) + 1 + self.n_cor


# ---------------------------------------------------------------------------------------
# Reading the prior model
# ---------------------------------------------------------------------------------------


def _arg(prior, *names):
    for name in names:
        if name in prior.args:
            return prior.args[name]
    raise Unsupported(f"prior {prior} has none of the arguments {', '.join(names)}")


def _number(value, what: str) -> np.ndarray:
    if hasattr(value, "args"):
        raise Unsupported(f"{what} has a hyperprior; the marginal engine needs fixed prior arguments")
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"{what} has a non-numeric argument {value!r}") from exc


def _location_prior(prior, size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes and parameters (size, 3) of a fixed-effect prior."""
    if not hasattr(prior, "args") or getattr(prior, "dist", None) is not None:
        raise Unsupported(f"prior of {what} ({prior}) is not a named distribution")
    par = np.zeros((size, 3))
    if prior.name == "Normal":
        code = ml.NORMAL
        par[:, 0] = _number(_arg(prior, "mu"), what)
        par[:, 1] = _number(_arg(prior, "sigma"), what)
    elif prior.name == "StudentT":
        code = ml.STUDENT_T
        par[:, 0] = _number(prior.args.get("mu", 0.0), what)
        par[:, 1] = _number(_arg(prior, "sigma"), what)
        par[:, 2] = _number(_arg(prior, "nu"), what)
    elif prior.name == "Cauchy":
        code = ml.STUDENT_T
        par[:, 0] = _number(_arg(prior, "alpha"), what)
        par[:, 1] = _number(_arg(prior, "beta"), what)
        par[:, 2] = 1.0
    else:
        raise Unsupported(f"{prior.name} prior on {what} is not supported by the marginal engine")
    if set(prior.args) - {"mu", "sigma", "nu", "alpha", "beta"}:
        raise Unsupported(f"prior of {what} ({prior}) has arguments the marginal engine does not know")
    if not np.all(np.isfinite(par)) or np.any(par[:, 1] <= 0) or (code == ml.STUDENT_T and np.any(par[:, 2] <= 0)):
        raise Unsupported(f"prior of {what} ({prior}) has invalid arguments")
    return np.full(size, code, dtype=np.int64), par


def _scale_prior(prior, what: str, column: int | None = None) -> tuple[int, np.ndarray]:
    """Code and parameters (3,) of a prior on a standard deviation.

    ``column``: the column of a factor's group effects whose sd this is; Bambi gives each column
    its own prior, a vector argument with an entry per column (``HalfNormal(sigma=[4.7, 5.3])``).
    """
    if not hasattr(prior, "args") or getattr(prior, "dist", None) is not None:
        raise Unsupported(f"prior of {what} ({prior}) is not a named distribution")
    par = np.zeros(3)
    name, args = prior.name, prior.args

    def get(*names):
        v = _number(_arg(prior, *names), what)
        if column is not None and v.ndim == 1 and v.size > column:
            v = v[column]
        if v.size != 1:
            raise Unsupported(f"prior of {what} has a vector argument")
        return float(v.reshape(()))

    if name == "HalfNormal":
        code, par[0] = ml.HALF_NORMAL, get("sigma")
        known = {"sigma"}
    elif name == "HalfStudentT":
        code, par[0], par[1] = ml.HALF_STUDENT_T, get("sigma"), get("nu")
        known = {"sigma", "nu"}
    elif name == "HalfCauchy":
        code, par[0] = ml.HALF_CAUCHY, get("beta")
        known = {"beta"}
    elif name == "Exponential":
        code = ml.EXPONENTIAL
        par[0] = get("lam") if "lam" in args else 1.0 / get("scale")
        known = {"lam", "scale"}
    elif name in ("Gamma", "InverseGamma"):
        code = ml.GAMMA if name == "Gamma" else ml.INVERSE_GAMMA
        par[0], par[1] = get("alpha"), get("beta")
        known = {"alpha", "beta"}
    else:
        raise Unsupported(f"{name} prior on {what} is not supported by the marginal engine")
    if set(args) - known:
        raise Unsupported(f"prior of {what} ({prior}) has arguments the marginal engine does not know")
    if not np.all(np.isfinite(par)) or par[0] <= 0:
        raise Unsupported(f"prior of {what} ({prior}) has invalid arguments")
    return code, par


def prior_model(model) -> PriorModel:
    """The prior model the engines read: ``model`` itself, or read from a built ``bambi.Model``."""
    if isinstance(model, PriorModel):
        return model
    try:
        return from_bambi(model)
    except ValueError as exc:  # a custom distribution
        raise Unsupported(str(exc)) from None


def coding_mismatch(frame: ModelFrame, model) -> str | None:
    """One line saying where Bambi codes a factor slope with other columns than lme4, else ``None``.

    lme4 codes each term on its own (``(0 + f|g)``: a column per level of ``f``); Bambi drops the
    first level of ``f`` when ``g`` has a random intercept in any term (``(1|g) + (0 + f|g)``, and
    ``(f||g)``, which lme4 splits into those two terms), and takes levels in text order, so its
    reference level may not be R's (``factor(k)`` of 2, 3, 10): the two would fit different models.
    The same columns in another order are fine.
    """
    bambi = {term.name: list(term.levels) for term in prior_model(model).group}
    for block in frame.blocks:
        term = block.term
        for expr in dict.fromkeys(c.expr for c in term.columns if c.level):
            ours = [c.level for c in term.columns if c.expr == expr]
            var = next(c for c in term.columns if c.expr == expr).variable(term.group)
            theirs = bambi.get(var, [])
            if set(theirs) == set(ours):
                continue
            where = f"{term.lme4} (from '||', split over the written terms as lme4 splits it)" if term.split \
                else term.lme4
            why, fix = ((f"it drops the first level when {term.group} has a random intercept in another term",
                         f"write (1 + {expr}|{term.group}), or (1|{term.group}) + (1|{term.group}:{expr}) for "
                         "uncorrelated level effects") if len(theirs) < len(ours) else
                        ("it takes the levels in text order, so another reference level",
                         "relabel the levels so that text order is R's order (zero-padded numbers)"))
            return (f"{where}: lme4 codes factor {expr} with the columns "
                    f"{', '.join(factor_column(expr, lv) for lv in ours)}, Bambi with "
                    f"{', '.join(factor_column(expr, lv) for lv in theirs) or 'none'} ({why}), so the Bayesian and "
                    f"lme4 fits would differ; {fix}")
    return None


def spec(formula: Formula, frame: ModelFrame, model, priors: Priors | None = None) -> Spec:
    """Read the engine's inputs from the prior model, the model frame and the user's priors.

    Bambi fits ``(x|g)`` as ``(1|g) + (0 + x|g)``: its model gives the sds' and fixed
    effects' priors; the frame's random terms (resolved against the data) say which
    coefficients are correlated, ``priors`` the LKJ shape of each group's correlations.
    A factor slope ``(0 + f|g)`` is one Bambi variable ``f|g`` with a column per level, each
    with its own sd and sd prior (``f|g_sigma`` along ``f__expr_dim``): each column is a
    component here, in the term's correlated block, so R = I is exactly Bambi's model.

    Raises
    ------
    Unsupported
        With a one-line reason when the marginal engine does not apply.
    """
    pm = prior_model(model)
    if pm.family != "gaussian":
        raise Unsupported(f"non-Gaussian family ({pm.family})")
    if set(pm.aux) != {"sigma"}:
        raise Unsupported(f"auxiliary parameters {sorted(pm.aux)} besides sigma")
    d = design(frame, pm, priors, "mu")
    y = np.asarray(frame.y, dtype=float) + d.offset  # the observed response (the frame holds y - offset)
    response = np.asarray(pm.y, dtype=float).reshape(-1)
    if response.size != y.size or not np.allclose(response, y, rtol=1e-12, atol=0.0):
        raise Unsupported("the prior model and the model frame have different rows")
    y = response
    shift = 0.0
    bpar = d.bpar.copy()
    if d.intercept is not None:
        shift = float((y - d.offset).mean())
        bpar[0, 0] -= shift  # the prior is on the (centred) intercept; y is shifted internally
    sigma_prior = pm.aux["sigma"]
    if isinstance(sigma_prior, int | float):
        raise Unsupported("residual sigma fixed to a constant")
    code, par = _scale_prior(sigma_prior, RESIDUAL_VARIABLE)
    return Spec(**{**d.parts(), "bpar": bpar, "scode": np.append(d.scode, code).astype(np.int64),
                   "spar": np.ascontiguousarray(np.vstack([d.spar.reshape(-1, 3), par]))}, y=y, shift=shift)


def design(frame: ModelFrame, model, priors: Priors | None, parameter: str) -> Design:
    """Read the linear predictor of ``parameter`` (``mu``, ``p``) from the prior model: one source of
    truth for the design and the priors of the fixed effects, the random terms and their sds.

    Raises
    ------
    Unsupported
        With a one-line reason when a term or prior is outside what the engines handle.
    """
    priors = priors or Priors()
    pm = prior_model(model)
    if pm.parameter != parameter:
        raise Unsupported(f"the model's linear predictor is for {pm.parameter}, not {parameter}")
    n = frame.y.size
    offset = np.zeros(n) if frame.offset is None else np.asarray(frame.offset, dtype=float)
    if not np.allclose(pm.offset, offset):
        raise Unsupported("the offsets of the prior model and of the model frame differ")

    # fixed effects, as Bambi builds them (centred when there is an intercept)
    columns, fixed, codes, pars = [], [], [], []
    start = 1 if pm.intercept is not None else 0
    at = start
    for term in pm.common:
        data = np.asarray(term.data, dtype=float).reshape(n, -1)
        k = data.shape[1]
        fixed.append(_Fixed(term.name, slice(at, at + k), tuple(term.coords), dict(term.coords)))
        c, p_ = _location_prior(term.prior, k, term.name)
        codes.append(c)
        pars.append(p_)
        columns.append(data)
        at += k
    Xc = np.column_stack(columns) if columns else np.zeros((n, 0))
    x_mean = np.zeros(Xc.shape[1])
    intercept = None
    if pm.intercept is not None:
        intercept = pm.intercept.name
        if pm.center and columns:
            x_mean = Xc.mean(0)
            Xc = Xc - x_mean
        c, p_ = _location_prior(pm.intercept.prior, 1, intercept)
        codes.insert(0, c)
        pars.insert(0, p_)
        Xc = np.column_stack([np.ones(n), Xc])
    bcode = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    bpar = np.concatenate(pars) if pars else np.zeros((0, 3))

    # random effects: the frame's blocks (lme4's layout), matched to Bambi's terms
    mismatch = coding_mismatch(frame, pm)
    if mismatch:
        raise Unsupported(mismatch)
    blocks = {}  # (Bambi's variable, level along its expr dim) of each frame column
    for block in frame.blocks:
        for j, col in enumerate(block.term.columns):
            blocks[(col.variable(block.term.group), col.level)] = (block, j)
    group_names: list[str] = []
    factor_cols: dict[str, list] = {}
    random, scodes, spars = [], [], []
    for term in pm.group:
        name = term.name
        predictor = np.asarray(term.predictor, dtype=float).reshape(n, -1)
        levels_dim, levels = term.level_dim, list(term.levels)
        if predictor.shape[1] != len(levels):
            raise Unsupported(f"random term {name} has {predictor.shape[1]} columns, not one per level")
        missing = [lv for lv in levels if (name, lv) not in blocks]
        if missing:
            what = f"columns {', '.join(missing)} of " if levels_dim else ""
            raise Unsupported(f"random term {what}{name} not found in the model frame (lme4's coding)")
        for i, lv in enumerate(levels):
            block, j = blocks[(name, lv)]
            if levels_dim and not np.array_equal(predictor[:, i], block.values[:, j]):
                raise Unsupported(f"Bambi codes level {lv} of {name} differently from lme4")
        prior = term.prior
        if prior.name != "Normal" or not hasattr(prior.args.get("sigma"), "args"):
            raise Unsupported(f"prior of {name} ({prior}) is not Normal(0, sigma) with a prior on sigma")
        if np.any(_number(prior.args.get("mu", 0.0), name) != 0):
            raise Unsupported(f"prior of {name} has a non-zero mean")
        if set(prior.args) - {"mu", "sigma"}:
            raise Unsupported(f"prior of {name} ({prior}) has arguments the marginal engine does not know")
        block = blocks[(name, levels[0])][0]
        group = block.term.group
        if group not in factor_cols:
            group_names.append(group)
            factor_cols[group] = []
        level_pos = {lab: i for i, lab in enumerate(block.levels)}
        groups = np.asarray(term.groups)
        if len(groups) != len(block.levels) or any(str(g) not in level_pos for g in groups):
            raise Unsupported(f"levels of {name} differ between Bambi ({len(groups)} groups) and the model frame "
                              f"({len(block.levels)} groups in the data)")
        order = np.array([level_pos[str(g)] for g in groups], dtype=np.int64)
        dim, hyper = term.dim, "sigma"
        for i in sorted(range(len(levels)), key=lambda i: blocks[(name, levels[i])][1]):  # lme4's order
            lv = levels[i]
            code, par = _scale_prior(prior.args["sigma"], hyper_variable(name), i if levels_dim else None)
            block, j = blocks[(name, lv)]
            comp = len(random)
            slot = len(factor_cols[group])
            factor_cols[group].append((block, j, comp))
            random.append(_Random(name, hyper_variable(name, hyper), group_names.index(group), slot, order, dim,
                                  groups, levels_dim, lv, i))
            scodes.append(code)
            spars.append(par)
    keys = [(r.name, r.level) for r in random]
    cor_blocks, ncor = [], 0
    for term in (b.term for b in frame.blocks):
        if not term.correlated:
            continue
        comps = tuple(keys.index((c.variable(term.group), c.level)) for c in term.columns)
        slots = [random[c].slot for c in comps]
        if slots != list(range(slots[0], slots[0] + len(slots))):
            raise Unsupported(f"the coefficients of {term.lme4} are not adjacent in the Bambi model")
        pairs = cor_pairs(term.coefs)
        cor_blocks.append(CorBlock(term.group, term.coefs, comps, priors.lkj_eta(term.group),
                                   slice(ncor, ncor + len(pairs)), tuple(cor_variable(term.group, a, b)
                                                                         for a, b in pairs)))
        ncor += len(pairs)
    factors = []
    for group in group_names:
        entries = factor_cols[group]
        block0 = entries[0][0]
        for block, _, _ in entries:
            if not np.array_equal(block.index, block0.index):
                raise Unsupported(f"random terms on {group} have different levels")
        values = np.column_stack([block.values[:, j] for block, j, _ in entries])
        fblocks = tuple(ml.Block(tuple(random[c].slot for c in b.components), b.cor.start, b.eta)
                        for b in cor_blocks if b.group == group)
        factors.append(ml.Factor(len(block0.levels), block0.index, values, tuple(c for _, _, c in entries), fblocks))
    if len(frame.blocks) and sum(b.values.shape[1] for b in frame.blocks) != len(random):
        raise Unsupported("random terms of the formula and of the Bambi model differ")

    return Design(
        response=pm.response,
        offset=offset,
        X=np.ascontiguousarray(Xc),
        x_mean=x_mean,
        intercept=intercept,
        fixed=tuple(fixed),
        random=tuple(random),
        factors=tuple(factors),
        bcode=np.ascontiguousarray(bcode, dtype=np.int64),
        bpar=np.ascontiguousarray(bpar),
        scode=np.asarray(scodes, dtype=np.int64),
        spar=np.ascontiguousarray(np.vstack(spars) if spars else np.zeros((0, 3))),
        blocks=tuple(cor_blocks),
    )


def supports(formula: Formula, frame: ModelFrame, model) -> str | None:
    """``None`` when the marginal engine applies to this model, else a one-line reason.

    It applies to Gaussian models with identity link, random intercepts and random slopes
    (numeric, or a factor's columns: :func:`coding_mismatch`), correlated or not, nested or
    crossed, with the priors Bambi uses by default
    (Normal/StudentT on fixed effects; HalfNormal, HalfStudentT, HalfCauchy, Exponential,
    Gamma or InverseGamma on standard deviations) and LKJ on correlations.
    """
    try:
        spec(formula, frame, model)
    except Unsupported as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


#: nutpie versions whose compiled-model internals the fast path was tested against.
NUTPIE_TESTED = ("0.16.",)


def compile_model(sp: Spec, stats: ml.Stats, fast: bool = True):
    """The nutpie model of the marginal posterior.

    With ``fast`` (and a nutpie version in :data:`NUTPIE_TESTED`) the log density is the
    numba C function :func:`marginal_lik.c_logp`, called by nutpie's Rust threads without
    Python or the GIL (nutpie's internal ``CompiledPyMCModel``, as
    ``nutpie.compile_pymc_model`` builds it).  Otherwise nutpie's public python-function
    interface ``nutpie.compiled_pyfunc.from_pyfunc`` calls :func:`marginal_lik.logp_grad`
    from Python (same numbers, about 10 microseconds more per gradient).
    """
    ndim = sp.n_dim
    center = initial_point(sp)

    def make_initial_point(seed):
        rng = np.random.default_rng(seed)
        return center + rng.uniform(-1.0, 1.0, ndim)

    if fast:
        model = _compile_fast(sp, stats, make_initial_point)
        if model is not None:
            return model
    from nutpie.compiled_pyfunc import from_pyfunc

    args = (*stats.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar)
    kernel = ml.logp_grad

    def make_logp_fn():
        def logp(x, **_shared):
            grad = np.empty(ndim)
            return kernel(x, grad, *args), grad

        return logp

    def make_expand_fn(seed1, seed2, chain):
        def expand(x, **_shared):
            return {"theta": x}

        return expand

    return from_pyfunc(
        ndim=ndim,
        make_logp_fn=make_logp_fn,
        make_expand_fn=make_expand_fn,
        expanded_dtypes=[np.dtype("float64")],
        expanded_shapes=[(ndim,)],
        expanded_names=["theta"],
        make_initial_point_fn=make_initial_point,
    )


_FAST_FIELDS = {
    "dims", "compiled_logp_func", "compiled_expand_func", "initial_point_func", "shared_data",
    "shared_var_keys", "user_data", "n_expanded", "shape_info", "logp_func", "expand_func",
    "_n_dim", "_shapes", "_coords",
}  # fmt: skip


def _compile_fast(sp: Spec, stats: ml.Stats, make_initial_point):
    """nutpie's ``CompiledPyMCModel`` around the C kernels, or ``None`` if nutpie differs."""
    return _compile_c(sp.n_dim, ml.pack(stats, sp.bcode, sp.bpar, sp.scode, sp.spar), ml.c_logp, make_initial_point)


def nutpie_module():
    """nutpie, imported without ArviZ's plotting stack.

    ``nutpie.sample`` does ``import arviz`` only to call ``from_dict`` and ``dict_to_dataset``, which
    are arviz-base's (``arviz`` re-exports them); importing the ``arviz`` package also imports
    arviz-stats and arviz-plots with matplotlib, about a second of a short fit. So while nutpie is
    first imported, ``arviz`` names arviz-base; the real package is imported wherever bayeslmm asks for it.
    """
    import sys

    if "nutpie" in sys.modules or "arviz" in sys.modules:
        import nutpie

        return nutpie
    import arviz_base

    sys.modules["arviz"] = arviz_base
    try:
        import nutpie
    finally:
        if sys.modules.get("arviz") is arviz_base:
            del sys.modules["arviz"]
    return nutpie


def _compile_c(ndim: int, buffer: np.ndarray, c_logp, make_initial_point):
    """nutpie's ``CompiledPyMCModel`` around a numba C log density reading ``buffer``, or ``None`` if
    nutpie is not a version whose internals this was tested with (:data:`NUTPIE_TESTED`)."""
    import dataclasses

    nutpie = nutpie_module()
    try:
        from nutpie.compile_pymc import CompiledPyMCModel
    except ImportError:
        return None
    if not nutpie.__version__.startswith(NUTPIE_TESTED):
        return None
    if not _FAST_FIELDS <= {f.name for f in dataclasses.fields(CompiledPyMCModel)}:
        return None
    buffer.flags.writeable = False
    return CompiledPyMCModel(
        dims={},
        _n_dim=ndim,
        _coords={},
        _shapes={"theta": (ndim,)},
        compiled_logp_func=c_logp,
        compiled_expand_func=ml.c_expand,
        initial_point_func=make_initial_point,
        shared_data={},
        shared_var_keys={},
        user_data=buffer,  # nutpie passes user_data.ctypes.data to both C functions
        n_expanded=ndim,
        shape_info=(["theta"], [slice(0, ndim)], [(ndim,)]),
        logp_func=None,
        expand_func=None,
    )


def initial_point(sp: Spec) -> np.ndarray:
    """Centre of the initial points: prior means of the coefficients, sds at half sd(y)."""
    p = sp.X.shape[1]
    sd_y = float(np.std(sp.y)) or 1.0
    theta = np.empty(sp.n_dim)
    theta[:p] = sp.bpar[:, 0]
    theta[p : p + len(sp.random) + 1] = np.log(0.5 * sd_y)  # the sds and sigma
    theta[p + len(sp.random) + 1 :] = 0.0  # correlations at 0
    return theta


def sample(model, frame: ModelFrame, options, progress: bool = True, log_likelihood: bool = True,
           priors: Priors | None = None) -> xr.DataTree:
    """Sample the posterior of a Gaussian mixed model with the random effects integrated out.

    Parameters
    ----------
    model : PriorModel
        The formula's terms, names and priors (:mod:`bayeslmm.model.prior_model`; a built
        ``bambi.Model`` is read the same way).
    frame : ModelFrame
        :func:`bayeslmm.model.formula.model_frame` of the same formula on the same data.
    options : SamplerOptions
        ``draws``, ``tune``, ``chains``, ``seed`` and ``target_accept`` are used.
    progress : bool
        Show nutpie's progress bar (on stderr, and only when it is a terminal).
    log_likelihood : bool
        Compute the pointwise log-likelihood (draws x rows: needed for LOO, large for big data).
    priors : Priors, optional
        The user's priors (the LKJ shape of correlations); Bambi's model gives the rest.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``log_likelihood`` (if asked for) and
        ``observed_data`` with Bambi's variable names and dims.

    Raises
    ------
    Unsupported
        If :func:`supports` would return a reason.
    """
    start = time.perf_counter()
    sp = spec(frame.formula, frame, model, priors)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    enough = None
    if options.target_ess is not None:
        def enough(theta):
            return good_enough(reported(sp, stats, theta), options.target_ess)
    with _one_blas_thread(stats):
        trace, sampling_time = run_nutpie(compile_model(sp, stats), options, progress, enough)
        theta = np.asarray(trace["posterior"]["theta"].values, dtype=float)
        stats_ds = trace["sample_stats"].to_dataset()
        tree = _to_datatree(sp, stats, theta, stats_ds, options, log_likelihood)
    kept = int(tree["posterior"].sizes["draw"])
    extra = {"stopped_at_draw": kept} if kept < options.draws else {}
    return stamp(tree, "bayeslmm.engines.marginal", options, sampling_time, time.perf_counter() - start, **extra)


def _one_blas_thread(stats: ml.Stats):
    """One BLAS thread while the kernels call LAPACK (a dense block), so each chain keeps to its core."""
    import contextlib

    if ml.dense_start(stats.Lp, ml.DENSE_MIN) == stats.q:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def reported(sp: Spec, stats: ml.Stats, theta: np.ndarray) -> np.ndarray:
    """Every fixed effect, sd (sigma last) and correlation as the posterior reports them, from the
    sampler's draws ``theta`` (chains, draws, dim): (chains, draws, quantities)."""
    chains, draws, ndim = theta.shape
    flat = np.ascontiguousarray(theta.reshape(chains * draws, ndim))
    p, K = sp.X.shape[1], len(sp.random)
    beta = flat[:, :p].copy()
    if sp.intercept is not None:
        beta[:, 0] += sp.shift - beta[:, 1:] @ sp.x_mean
    parts = [beta, np.exp(flat[:, p : p + K + 1])]
    if sp.blocks:
        corr = ml.correlations(flat, p, K, *stats.blocks()[:4])
        for block in sp.blocks:
            c = corr[:, _block_type(stats, block)]
            parts.append(np.stack([c[:, a, b] for a, b in block.pairs], axis=1))
    return np.concatenate(parts, axis=1).reshape(chains, draws, -1)


def good_enough(values: np.ndarray, target_ess: float, max_rhat: float = 1.01) -> bool:
    """Whether every quantity of ``values`` (chains, draws, quantities) has bulk and tail ESS >= ``target_ess``
    and r_hat <= ``max_rhat``: the estimates the fit's summary computes (:mod:`bayeslmm.convergence`), so
    the fit then reports what was checked here."""
    from bayeslmm import convergence

    return bool(np.all(convergence.ess_bulk(values) >= target_ess)
                and np.all(convergence.ess_tail(values, 0.9) >= target_ess)
                and np.all(convergence.rhat(values) <= max_rhat))


#: Cost of one gradient (:func:`marginal_lik.gradient_flops`) from which a design is large: its default run
#: (4 chains x 2000 steps, about 7 gradients each) would take minutes.  InstEval's crossed students x
#: lecturers cost 1.5e9 (0.06 s a gradient on the project's machine); dragons and every nested design ~1e3-1e6.
LARGE_FLOPS = 1e8
#: Random effects from which a design is large however cheap its gradient: the default run keeps 4,000 draws of
#: every level's effect (8,000 ranges x 3 sites: 32,000 effects, 1 GB of draws, 45 s of sampling and drawing,
#: and the report's per-level summaries, figures and posterior file read all of them).
LARGE_EFFECTS = 10_000
#: How a large design is sampled when the sampler options are left at their defaults: its posterior has a few
#: dimensions, so 2 chains after 150 tuning steps at target_accept 0.8, stopped
#: at the first 100 draws per chain where every fixed effect, sd and correlation has bulk and tail ESS >= 400
#: and r_hat <= 1.01 (what the fit's diagnostics then warn about), at most 1000 draws each: on InstEval's
#: shape a fifth to a tenth of the default's gradients (``benchmarks/insteval.py``).
LARGE_PLAN = {"chains": 2, "draws": 1000, "tune": 150, "target_accept": 0.8, "target_ess": 400}


def large_design(stats: ml.Stats) -> bool:
    """Whether a gradient costs at least :data:`LARGE_FLOPS` or the design has :data:`LARGE_EFFECTS` random
    effects."""
    return ml.gradient_flops(stats.Lp) >= LARGE_FLOPS or stats.q >= LARGE_EFFECTS


def plan(frame: ModelFrame, model, options, priors: Priors | None = None):
    """The sampler options for this design and a note for the engine's line (``""`` when as given).

    A large design (:func:`large_design`) whose draws, tuning steps, chains and target_accept are all
    the defaults is sampled as :data:`LARGE_PLAN` says; the note says so, and how to choose.
    """
    from dataclasses import replace

    from bayeslmm.model.options import SamplerOptions

    sp = spec(frame.formula, frame, model, priors)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    if not large_design(stats):
        return options, ""
    if ml.gradient_flops(stats.Lp) >= LARGE_FLOPS:
        nt = stats.q - int(ml.dense_start(stats.Lp, ml.DENSE_MIN))
        size = f"large design ({nt} crossed random effects factored as one dense block)"
    else:
        size = f"large design ({stats.q:,} random effects)"
    defaults = SamplerOptions()
    if any(getattr(options, name) != getattr(defaults, name) for name in LARGE_PLAN):
        return options, f"; {size}: sampled as asked"
    planned = replace(options, **LARGE_PLAN)
    return planned, (f"; {size}: {planned.chains} chains after {planned.tune} tuning steps at target_accept "
                     f"{planned.target_accept}, stopped at the first {CHECK_EVERY} draws per chain where every "
                     f"fixed effect, sd and correlation has bulk and tail ESS >= {planned.target_ess} and r_hat "
                     f"<= 1.01 (at most {planned.draws}); set --draws, --tune, --chains or --target-accept to choose")


def run_nutpie(compiled, options, progress: bool, enough=None, **settings):
    """nutpie's NUTS on a compiled model with the run's options (every engine samples through this).

    ``settings`` are passed on (``adaptation="low_rank"``). Returns the trace and the seconds spent sampling.
    ``enough(theta)``, given the first ``k`` draws of every chain (chains, k, dim) for k = 100, 200, ...
    as they arrive, may stop sampling there by returning True; the trace then holds those k draws per
    chain (the same draws whenever it is run: each chain's draws are fixed by the seed).
    """
    nutpie = nutpie_module()

    from bayeslmm.notices import progress_shown

    shown = progress_shown(progress)
    t0 = time.perf_counter()
    run = dict(draws=options.draws, tune=options.tune, chains=options.chains,
               cores=min(options.chains, os.cpu_count() or 1), seed=int(options.seed),
               target_accept=float(options.target_accept), progress_bar=shown, save_warmup=False, **settings)
    if enough is None:
        trace = nutpie.sample(compiled, **run)
    else:
        trace = _sample_until(nutpie.sample(compiled, blocking=False, **run), options.draws, enough)
    if shown:  # nutpie leaves the cursor at the end of its last bar
        print(file=sys.stderr, flush=True)
    return trace, time.perf_counter() - t0


#: Draws per chain between two looks at a run that may stop early (:func:`run_nutpie`'s ``enough``).
CHECK_EVERY = 100


def _sample_until(sampler, draws: int, enough, poll: float = 1.0):
    """Wait for nutpie's background ``sampler``, asking ``enough`` at every :data:`CHECK_EVERY` draws per chain.

    A look at the trace costs a core ~0.07 s, so the next is timed for when the slowest chain should reach
    the next hundred draws (at least ``poll`` seconds apart; while tuning, 1, 2, 4, 8 x ``poll``).
    """
    import warnings

    checked, wait, last = 0, poll, None
    try:
        while True:
            with warnings.catch_warnings():  # ArviZ's "chain dimension longer than draw" while draws are few
                warnings.simplefilter("ignore")
                trace = sampler.inspect()
            now = time.perf_counter()
            theta = np.asarray(trace["posterior"]["theta"].values, dtype=float) if "posterior" in trace else None
            done = int(np.isfinite(theta[..., 0]).sum(axis=1).min()) if theta is not None and theta.size else 0
            while checked + CHECK_EVERY <= min(done, draws - 1):
                checked += CHECK_EVERY
                if enough(theta[:, :checked]):
                    return sampler.abort().isel(draw=slice(0, checked))
            if done >= draws:
                return sampler.wait()
            if done == 0:
                wait = min(2 * wait, 8 * poll)
            elif last is not None and done > last[1]:
                rate = (done - last[1]) / max(now - last[0], 1e-9)
                wait = min(max((min(checked + CHECK_EVERY, draws) - done) / rate, poll), 30 * poll)
            else:
                wait = poll
            last = (now, done)
            time.sleep(wait)
    except BaseException:
        sampler.cancel()
        raise


def stamp(tree: xr.DataTree, interface: str, options, sampling_time: float, fit_time: float,
          **extra) -> xr.DataTree:
    """Record on every group of ``tree`` who sampled it and how long it took (ArviZ's attribute names)."""
    nutpie = nutpie_module()

    for group in tree.children:
        tree[group].attrs.update({
            "inference_library": "nutpie", "inference_library_version": nutpie.__version__,
            "modeling_interface": interface, "sampling_time": sampling_time, "fit_time": fit_time,
            "tuning_steps": options.tune, **extra,
        })  # fmt: skip
    return tree


def _to_datatree(sp: Spec, stats: ml.Stats, theta: np.ndarray, stats_ds, options,
                 with_loglik: bool = True) -> xr.DataTree:
    chains, draws, ndim = theta.shape
    S = chains * draws
    flat = np.ascontiguousarray(theta.reshape(S, ndim))
    p = sp.X.shape[1]
    K = len(sp.random)
    beta = np.ascontiguousarray(flat[:, :p])
    sds = np.exp(flat[:, p : p + K])
    sigma = np.exp(flat[:, p + K])

    rng = np.random.default_rng([int(options.seed), 7])
    z = rng.standard_normal((S, stats.q))
    u = _draw_effects(flat, K, z, stats)
    corr = ml.correlations(flat, p, K, *stats.blocks()[:4]) if sp.blocks else None
    cors = [corr[:, _block_type(stats, block)] for block in sp.blocks]
    return assemble(sp, stats, beta, sds, sigma, u, cors, stats_ds, (chains, draws), with_loglik)


def _draw_effects(flat: np.ndarray, K: int, z: np.ndarray, stats: ml.Stats) -> np.ndarray:
    """:func:`marginal_lik.draw_effects` of every draw, split over the cores when a draw is dear (the same
    numbers: each draw is computed alone)."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import pairwise

    def run(rows):
        return ml.draw_effects(flat[rows], K, z[rows], stats.Zty, stats.ZtX, stats.Lp, stats.Li, stats.Ax, stats.Rp,
                               stats.Rk, stats.Rpos, *stats.blocks())  # fmt: skip

    workers = min(os.cpu_count() or 1, flat.shape[0])
    if workers < 2 or ml.gradient_flops(stats.Lp) * flat.shape[0] < 1e9:
        return run(slice(None))
    bounds = np.linspace(0, flat.shape[0], workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:  # the kernel releases the GIL
        parts = list(pool.map(run, [slice(a, b) for a, b in pairwise(bounds)]))
    return np.concatenate(parts)


def assemble(sp: Spec, stats: ml.Stats, beta, sds, sigma, u, cors, stats_ds, shape: tuple[int, int],
             with_loglik: bool = True, loglik: np.ndarray | None = None) -> xr.DataTree:
    """The engines' common ``DataTree`` from flat draws (one row per draw, chains first).

    ``beta`` (S, p) internal coefficients, ``sds`` (S, K), ``sigma`` (S,) (``None``: no residual sd,
    a binomial or Poisson model), ``u`` (S, q) the random effects in ``stats``' column layout (only
    ``stats.columns`` is read, so a :class:`marginal_lik.Layout` will do), ``cors`` one (S, k, k)
    correlation matrix per ``sp.blocks``; ``stats_ds`` nutpie's sample statistics; ``loglik`` (S, n)
    the pointwise log-likelihood when not the Gaussian one.  Bambi's names, dims and coords.
    """
    chains, draws = shape
    p = sp.X.shape[1]
    n = sp.y.size
    cd = ("chain", "draw")
    coords: dict = {"chain": np.arange(chains), "draw": np.arange(draws)}
    post: dict = {} if sigma is None else {RESIDUAL_VARIABLE: (cd, sigma.reshape(chains, draws))}
    start = 0
    if sp.intercept is not None:
        b_rest = beta[:, 1:]
        icpt = beta[:, 0] + sp.shift - b_rest @ sp.x_mean
        post[sp.intercept] = (cd, icpt.reshape(chains, draws))
        start = 1
    for f in sp.fixed:
        vals = beta[:, f.index]
        coords.update(f.coords)
        if f.dims:
            post[f.name] = (cd + f.dims, vals.reshape(chains, draws, -1))
        else:
            post[f.name] = (cd, vals[:, 0].reshape(chains, draws))
    assert start + sum(f.index.stop - f.index.start for f in sp.fixed) == p
    variables = _variables(sp)
    for ks in variables.values():
        r = sp.random[ks[0]]
        if r.level_dim is None:
            post[r.sigma_name] = (cd, sds[:, ks[0]].reshape(chains, draws))
        else:  # a factor's sds: one variable along its columns, as Bambi has it
            coords[r.level_dim] = np.array([sp.random[k].level for k in ks])
            post[r.sigma_name] = ((*cd, r.level_dim), sds[:, ks].reshape(chains, draws, len(ks)))
    for block, corr in zip(sp.blocks, cors, strict=True):
        for var, (a, b) in zip(block.variables, block.pairs, strict=True):
            post[var] = (cd, corr[:, a, b].reshape(chains, draws))
    for ks in variables.values():
        r = sp.random[ks[0]]
        coords[r.dim] = r.groups
        effects = np.stack([u[:, stats.columns[sp.random[k].factor][sp.random[k].order, sp.random[k].slot]]
                            for k in ks], axis=-1)  # (S, groups, columns)
        if r.level_dim is None:
            post[r.name] = ((*cd, r.dim), effects[..., 0].reshape(chains, draws, -1))
        else:
            post[r.name] = ((*cd, r.dim, r.level_dim), effects.reshape(chains, draws, -1, len(ks)))
    coords["__obs__"] = np.arange(n)
    posterior = xr.Dataset(post, coords=coords)

    ss = {}
    for old, new in _STAT_NAMES.items():
        if old in stats_ds:
            values = np.asarray(stats_ds[old].values).reshape(chains, draws)
            if values.dtype.kind == "u":
                values = values.astype(np.int64)
            ss[new] = (cd, values)
    sample_stats = xr.Dataset(ss, coords={"chain": coords["chain"], "draw": coords["draw"]})
    obs = {"__obs__": np.arange(n)}
    # The internal coefficients (centred design): the posterior's intercept is derived from them
    # and cannot be turned back bit for bit, and the log-likelihood is recomputed from them.
    internal = xr.Dataset({"beta": ((*cd, "__coef__"), beta.reshape(chains, draws, p))},
                          coords={"chain": coords["chain"], "draw": coords["draw"]})
    internal.attrs["description"] = ENGINE_GROUP_DESCRIPTION
    groups = {"posterior": posterior, "sample_stats": sample_stats, ENGINE_GROUP: internal}
    if with_loglik:
        loglik = _pointwise(sp, stats, beta, u, sigma, slice(None)) if loglik is None else loglik
        groups["log_likelihood"] = xr.Dataset(
            {sp.response: ((*cd, "__obs__"), loglik.reshape(chains, draws, n))},
            coords={"chain": coords["chain"], "draw": coords["draw"], **obs},
        )
    groups["observed_data"] = xr.Dataset({sp.response: (("__obs__",), sp.y)}, coords=obs)
    return xr.DataTree.from_dict(groups)


def _variables(sp: Spec) -> dict[str, list[int]]:
    """The components of each of Bambi's group-effect variables (a factor's columns share one, in Bambi's
    order of its levels)."""
    out: dict[str, list[int]] = {}
    for k, r in enumerate(sp.random):
        out.setdefault(r.name, []).append(k)
    return {name: sorted(ks, key=lambda k: sp.random[k].position) for name, ks in out.items()}


def _block_type(stats: ml.Stats, block: CorBlock) -> int:
    """The kernel's block type of a correlated term (the one holding its first correlation)."""
    return int(np.flatnonzero(stats.tcor == block.cor.start)[0])


def _pointwise(sp: Spec, stats: ml.Stats, beta, u, sigma, rows: slice | np.ndarray) -> np.ndarray:
    """Log-likelihood (draws, rows) of ``rows`` (a slice or row numbers): one kernel for the fit and the
    recomputation."""
    y = (sp.y - sp.offset - sp.shift)[rows]
    return ml.pointwise_loglik(y, sp.X[rows], beta, stats.cols[rows], stats.vals[rows], u, sigma)


def effects_from_posterior(random: tuple[_Random, ...], columns: tuple[np.ndarray, ...], q: int,
                           post: xr.Dataset, draws: slice = slice(None)) -> np.ndarray:
    """The random effects (draws, q) in the engine's column layout, read from Bambi's posterior variables
    (``draws``: a range of the chains' draws one after another, all by default).

    Raises
    ------
    ValueError
        When the posterior lacks some of the model's effects.
    """
    S = post.sizes["chain"] * post.sizes["draw"]
    u = np.empty((len(range(*draws.indices(S))), q))
    filled = np.zeros(q, dtype=bool)
    for r in random:
        cols = columns[r.factor][r.order, r.slot]
        da = post[r.name] if r.level_dim is None else post[r.name].sel({r.level_dim: r.level})
        u[:, cols] = da.transpose("chain", "draw", r.dim).values.reshape(S, -1)[draws]
        filled[cols] = True
    if not filled.all():
        raise ValueError("the saved posterior does not match the model: refit it")
    return u


def log_likelihood(model, frame: ModelFrame, tree: xr.DataTree, rows: slice | np.ndarray = slice(None),
                   priors: Priors | None = None) -> xr.DataArray:
    """The pointwise log-likelihood of ``rows`` of the data, recomputed from a saved posterior.

    Bit for bit what :func:`sample` computes (same kernel, same draws): the fixed effects come
    from the internal coefficients kept in the ``ENGINE_GROUP`` group, the random effects and
    ``sigma`` from the posterior.

    Parameters
    ----------
    model : PriorModel
        As for :func:`sample`.
    frame : ModelFrame
        The model frame of the same formula on the same data.
    tree : xarray.DataTree
        What :func:`sample` returned (or its saved copy).
    rows : slice or ndarray of int
        Which rows (all by default).

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw, __obs__)``, ``__obs__`` numbered as the rows of the data.
    """
    return next(log_likelihood_blocks(model, frame, tree, [rows], priors))


def _saved_draws(model, frame: ModelFrame, tree: xr.DataTree, priors: Priors | None, effects: bool = True):
    """The spec, the data's statistics and a saved posterior's draws ``beta (S, p)``, ``sigma (S,)``, ``u (S, q)``
    (``None`` without ``effects``)."""
    sp = spec(frame.formula, frame, model, priors)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    post = tree["posterior"]
    S = post.sizes["chain"] * post.sizes["draw"]
    beta = np.ascontiguousarray(tree[ENGINE_GROUP]["beta"].values.reshape(S, -1), dtype=float)
    sigma = np.ascontiguousarray(post[RESIDUAL_VARIABLE].values.reshape(S), dtype=float)
    u = effects_from_posterior(sp.random, stats.columns, stats.q, post) if effects else None
    if beta.shape[1] != sp.X.shape[1]:
        raise ValueError("the saved posterior does not match the model: refit it")
    return sp, stats, beta, sigma, u


def summed_log_likelihood(model, frame: ModelFrame, tree: xr.DataTree, priors: Priors | None = None,
                          block: int = 256) -> np.ndarray:
    """Each draw's log-likelihood of all the rows, shape ``(chain, draw)``: :func:`log_likelihood` summed over rows.

    From the data's cross-products instead of a draws x rows pass: with ``r`` the response less the
    offsets and the engine's shift and ``W = [X Z]``, a draw's residual sum of squares is
    ``r'r - 2 theta'W'r + theta'W'W theta`` for its ``theta = (beta, u)``, so the cost grows with the
    random effects, not the rows (480,000 rows: 35 s before). ``block`` draws are taken at a time.
    """
    import scipy.sparse as sparse

    sp, stats, beta, sigma, _ = _saved_draws(model, frame, tree, priors, effects=False)
    n, K = stats.cols.shape
    Z = sparse.csr_matrix((stats.vals.ravel(), (np.repeat(np.arange(n), K), stats.cols.ravel())), shape=(n, stats.q))
    ZtZ = (Z.T @ Z).tocsr()
    rss = np.empty(beta.shape[0])
    for a in range(0, beta.shape[0], block):  # the effects a block of draws at a time: (draws, q) is 1 GB at 32,000
        b = beta[a:a + block]
        v = effects_from_posterior(sp.random, stats.columns, stats.q, tree["posterior"], slice(a, a + block))
        rss[a:a + block] = (stats.yy - 2 * (b @ stats.Xty + v @ stats.Zty) + np.einsum("sp,sp->s", b @ stats.XtX, b)
                            + 2 * np.einsum("sq,sq->s", b @ stats.ZtX.T, v)
                            + np.einsum("qs,sq->s", ZtZ @ v.T, v))  # fmt: skip
    post = tree["posterior"]
    ll = -n * (np.log(sigma) + 0.5 * np.log(2 * np.pi)) - 0.5 * rss / sigma**2
    return ll.reshape(post.sizes["chain"], post.sizes["draw"])


def log_likelihood_blocks(model, frame: ModelFrame, tree: xr.DataTree, blocks, priors: Priors | None = None):
    """:func:`log_likelihood` of each of ``blocks`` of rows in turn, the posterior and the data read once."""
    sp, stats, beta, sigma, u = _saved_draws(model, frame, tree, priors)
    post = tree["posterior"]
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    for rows in blocks:
        index = np.arange(sp.y.size)[rows]
        ll = _pointwise(sp, stats, beta, u, sigma, rows)
        yield xr.DataArray(ll.reshape(chains, draws, index.size), dims=("chain", "draw", "__obs__"),
                           coords={"chain": post["chain"].values, "draw": post["draw"].values, "__obs__": index},
                           name=sp.response)
