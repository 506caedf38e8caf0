"""The reference engine: a plain PyMC model of the same posterior as the marginal engine.

Bambi cannot fit correlated random effects (bambi#702), so the marginal engine's answer for
``(x|g)`` needs an independent check.  This engine builds the full model in PyMC, random
effects and all, from the marginal engine's :func:`~bayeslmm.engines.marginal.spec` (one source of
truth for the priors, the centred fixed-effect design and the covariance blocks) and samples it
with NUTS (nutpie on PyMC's numba backend)::

    b ~ location priors (Normal/StudentT),  s_k, sigma ~ scale priors,  R ~ LKJ(eta)
    z_l ~ N(0, I) per level l;  u_l = diag(s) chol(R) z_l  (u_l = s z_l when uncorrelated)
    y - offset - shift ~ N(X b + Z u, sigma^2 I)

The random effects are non-centred; ``Z u`` is gathered by each row's level index (no dense
rows x q matrix).  The result has the marginal engine's groups, names, dims and coords
(:func:`bayeslmm.engines.marginal.assemble`), its internal coefficients included, so
:func:`bayeslmm.engines.marginal.log_likelihood` recomputes the pointwise log-likelihood of
either engine's posterior.  It fits exactly the models ``marginal.spec`` reads, slowly: q more
dimensions, several seconds of numba compilation per model, and non-centred effects that mix
slowly where every level has much data (on slopes.csv the correlation's bulk ESS is ~400 of 4000
draws).  ``--engine auto`` never chooses it: it exists to prove the fast engine right.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from bayeslmm.engines import marginal
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.model.formula import ModelFrame
from bayeslmm.model.priors import Priors

#: Names of the PyMC model's variables (the tests address them).
SIGMA = "sigma"
OBSERVED = "y"


def fixed_name(code: int) -> str:
    """The PyMC variable holding the internal coefficients whose prior has family ``code``."""
    return f"beta__{code}"


def sd_name(k: int) -> str:
    """The PyMC variable of ``Spec.random[k]``'s standard deviation."""
    return f"sd__{k}"


def z_name(f: int) -> str:
    """The standard-normal innovations (levels, coefficients) of ``Spec.factors[f]``."""
    return f"z__{f}"


def effects_name(f: int) -> str:
    """The random effects (levels, coefficients) of ``Spec.factors[f]``, a deterministic of z."""
    return f"u__{f}"


def chol_name(i: int) -> str:
    """The Cholesky factor of ``Spec.blocks[i]``'s correlation matrix (PyMC's ``LKJCorr``)."""
    return f"chol_cor__{i}"


def cor_name(i: int) -> str:
    """The correlation matrix of ``Spec.blocks[i]``, a deterministic of its Cholesky factor."""
    return f"cor__{i}"


def _location(name: str, codes: np.ndarray, par: np.ndarray):
    """PyMC prior of the coefficients sharing the location family in ``codes``' first entry."""
    import pymc as pm

    code = int(codes[0])
    if code == ml.NORMAL:
        return pm.Normal(name, mu=par[:, 0], sigma=par[:, 1], shape=len(codes))
    if code == ml.STUDENT_T:
        return pm.StudentT(name, nu=par[:, 2], mu=par[:, 0], sigma=par[:, 1], shape=len(codes))
    raise ValueError(f"unknown location prior code {code}")


def _scale(name: str, code: int, par: np.ndarray):
    """PyMC prior of a standard deviation (PyMC samples its log, as the marginal engine does)."""
    import pymc as pm

    code = int(code)
    if code == ml.HALF_NORMAL:
        return pm.HalfNormal(name, sigma=par[0])
    if code == ml.HALF_STUDENT_T:
        return pm.HalfStudentT(name, nu=par[1], sigma=par[0])
    if code == ml.HALF_CAUCHY:
        return pm.HalfCauchy(name, beta=par[0])
    if code == ml.EXPONENTIAL:
        return pm.Exponential(name, lam=par[0])
    if code == ml.GAMMA:
        return pm.Gamma(name, alpha=par[0], beta=par[1])
    if code == ml.INVERSE_GAMMA:
        return pm.InverseGamma(name, alpha=par[0], beta=par[1])
    raise ValueError(f"unknown scale prior code {code}")


def pymc_model(sp: marginal.Spec):
    """The PyMC model of a :class:`~bayeslmm.engines.marginal.Spec`: same priors, same internal design.

    Parameters
    ----------
    sp : Spec
        From :func:`bayeslmm.engines.marginal.spec`.

    Returns
    -------
    pymc.Model
        Free variables :func:`fixed_name` (one per prior family of the coefficients),
        :func:`sd_name`, ``sigma``, :func:`z_name` and :func:`chol_name`; deterministics
        :func:`effects_name` and :func:`cor_name`; the observed ``y - offset - shift``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    y = sp.y - sp.offset - sp.shift
    p = sp.X.shape[1]
    block_of = {b.cor.start: i for i, b in enumerate(sp.blocks)}
    with pm.Model() as model:
        beta = pt.zeros(p)
        for code in np.unique(sp.bcode):
            idx = np.flatnonzero(sp.bcode == code)
            beta = pt.set_subtensor(beta[idx], _location(fixed_name(int(code)), sp.bcode[idx], sp.bpar[idx]))
        sds = [_scale(sd_name(k), sp.scode[k], sp.spar[k]) for k in range(len(sp.random))]
        sigma = _scale(SIGMA, sp.scode[-1], sp.spar[-1])
        mu = pt.dot(pt.as_tensor(sp.X), beta) if p else pt.zeros(sp.y.size)
        for f, fac in enumerate(sp.factors):
            k = fac.values.shape[1]
            z = pm.Normal(z_name(f), 0.0, 1.0, shape=(fac.n_levels, k))
            columns = []
            for block in fac.covariance_blocks():
                s = pt.stack([sds[fac.components[j]] for j in block.slots])
                zb = z[:, block.slots[0] : block.slots[-1] + 1]
                if block.cor < 0:
                    columns.append(zb * s)
                    continue
                i = block_of[block.cor]
                chol = pm.LKJCorr(chol_name(i), n=len(block.slots), eta=block.eta)
                pm.Deterministic(cor_name(i), chol @ chol.T)
                columns.append(zb @ (s[:, None] * chol).T)  # row l: (diag(s) L z_l)'
            u = pm.Deterministic(effects_name(f), pt.concatenate(columns, axis=1))
            mu = mu + (u[fac.index] * fac.values).sum(axis=1)
        pm.Normal(OBSERVED, mu=mu, sigma=sigma, observed=y)
    return model


def _internal_draws(sp: marginal.Spec, stats: ml.Stats, post: xr.Dataset):
    """Flat draws (chains first) of the internal coefficients, sds, sigma, effects, correlations."""
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    S = chains * draws

    def flat(name):
        return np.asarray(post[name].values, dtype=float).reshape(S, *post[name].shape[2:])

    beta = np.empty((S, sp.X.shape[1]))
    for code in np.unique(sp.bcode):
        beta[:, sp.bcode == code] = flat(fixed_name(int(code)))
    sds = np.column_stack([flat(sd_name(k)) for k in range(len(sp.random))]) if sp.random else np.zeros((S, 0))
    u = np.empty((S, stats.q))
    for f, columns in enumerate(stats.columns):
        u[:, columns] = flat(effects_name(f))
    cors = [flat(cor_name(i)) for i in range(len(sp.blocks))]
    return beta, sds, flat(SIGMA), u, cors


def sample(model, frame: ModelFrame, options, progress: bool = True, log_likelihood: bool = True,
           priors: Priors | None = None) -> xr.DataTree:
    """Sample the full posterior (random effects included) with NUTS on the PyMC model.

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
        Compute the pointwise log-likelihood (draws x rows).
    priors : Priors, optional
        The user's priors (the LKJ shape of correlations); Bambi's model gives the rest.

    Returns
    -------
    xarray.DataTree
        What :func:`bayeslmm.engines.marginal.sample` returns: the same groups, names, dims and coords.

    Raises
    ------
    Unsupported
        When :func:`bayeslmm.engines.marginal.spec` cannot read the model.
    """
    nutpie = marginal.nutpie_module()


    start = time.perf_counter()
    sp = marginal.spec(frame.formula, frame, model, priors)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    compiled = nutpie.compile_pymc_model(pymc_model(sp))
    # The intercept trades off against the mean of the non-centred effects: nutpie's low-rank
    # mass matrix learns that direction (the fixed effects' bulk ESS x10 on slopes.csv).
    trace, sampling_time = marginal.run_nutpie(compiled, options, progress, adaptation="low_rank")
    post = trace["posterior"].to_dataset()
    draws = _internal_draws(sp, stats, post)
    shape = (post.sizes["chain"], post.sizes["draw"])
    tree = marginal.assemble(sp, stats, *draws, trace["sample_stats"].to_dataset(), shape, log_likelihood)
    tree[marginal.ENGINE_GROUP].attrs["description"] = (
        "bayeslmm's reference engine: coefficients of the marginal engine's internal, centred design, sampled "
        "directly; the pointwise log-likelihood is recomputed from these (bayeslmm.engines.bayes.log_likelihood)")
    return marginal.stamp(tree, "bayeslmm.engines.reference", options, sampling_time, time.perf_counter() - start)
