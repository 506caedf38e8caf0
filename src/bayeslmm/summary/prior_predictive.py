"""Data replicated from the priors alone: what a model expects before it sees the response.

Parameters are drawn from the priors the engines read (:func:`bayeslmm.engines.prior_density.spec`,
each prior a scipy distribution by :func:`~bayeslmm.engines.prior_density.distribution`): the fixed
effects (the intercept's prior on the centred intercept, as stated), every sd and the residual sd,
and each correlated block's correlation matrix from its LKJ prior; then each level's group effects
from their normal given those sds and correlations, and the response from the family (Gaussian,
binomial with the rows' trials, Poisson), on the rows of the data (its predictors, offsets and
trials). A prior predictive far wider than the observed response is what weakly informative priors
give; one that misses it is a prior in conflict with the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.prior_density import distribution

#: Most values (replicates x rows) simulated at once; fewer replicates for larger data.
MAX_CELLS = 2_000_000
#: A Poisson rate above this is drawn at it (NumPy refuses rates near 1e19; priors reach them).
MAX_RATE = 1e15


@dataclass(frozen=True)
class PriorPredictive:
    """Replicated responses from the priors beside the observed one, on the likelihood's scale.

    ``draws`` (replicates, rows): the response (Gaussian), the proportion of successes (binomial)
    or the count (Poisson); ``observed`` (rows,) the same of the data; ``scale`` what they are.
    """

    name: str
    draws: np.ndarray
    observed: np.ndarray
    scale: str
    family: str


def lkj_draws(eta: float, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` correlation matrices (n, k, k) from LKJ(eta).

    The canonical partial correlations of the Cholesky factor are independent under LKJ (Lewandowski,
    Kurowicka and Joe 2009, the C-vine): the one of row ``i``, column ``j < i`` is Beta(a, a) on
    (-1, 1) with ``a = eta - 1 + (k - j) / 2``; the engines' transform (:func:`marginal_lik.corr_cholesky`,
    on their ``atanh``) builds the factor.
    """
    nc = k * (k - 1) // 2
    cols = np.array([j for i in range(1, k) for j in range(i)])
    a = eta - 1.0 + (k - cols) / 2.0
    z = 2.0 * rng.beta(a, a, size=(n, nc)) - 1.0
    y = np.arctanh(np.clip(z, -1 + 1e-15, 1 - 1e-15))
    out = np.empty((n, k, k))
    L, dL, dlp = np.zeros((k, k)), np.zeros((max(nc, 1), k, k)), np.zeros(max(nc, 1))
    for s in range(n):
        ml.corr_cholesky(np.ascontiguousarray(y[s]), k, float(eta), L, dL, dlp)
        out[s] = L @ L.T
    return out


def parameter_draws(sp, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                                   dict[int, np.ndarray]]:
    """``n`` draws from the priors of a Spec: internal coefficients (n, p), sds (n, K), the residual sd (n,)
    (``None`` without one), and each correlated block's matrices (n, k, k) keyed by its ``cor`` offset."""
    p, K = sp.X.shape[1], len(sp.random)
    beta = np.column_stack([distribution(sp.bcode[a], sp.bpar[a]).rvs(size=n, random_state=rng) for a in range(p)]
                           ) if p else np.zeros((n, 0))
    sds = np.column_stack([distribution(sp.scode[k], sp.spar[k]).rvs(size=n, random_state=rng) for k in range(K)]
                          ) if K else np.zeros((n, 0))
    sigma = distribution(sp.scode[-1], sp.spar[-1]).rvs(size=n, random_state=rng) if len(sp.scode) > K else None
    cors = {b.cor.start: lkj_draws(b.eta, len(b.coefs), n, rng) for b in sp.blocks}
    return beta, sds, sigma, cors


def linear_predictor(sp, beta, sds, cors, rng: np.random.Generator) -> np.ndarray:
    """``X b + Z u + offset`` (n, rows) with each level's effects drawn from N(0, diag(s) R diag(s))."""
    eta = beta @ sp.X.T + sp.offset
    n = beta.shape[0]
    for fac in sp.factors:
        k = fac.values.shape[1]
        u = np.empty((n, fac.n_levels, k))
        for block in fac.covariance_blocks():
            slots = list(block.slots)
            s = sds[:, [fac.components[j] for j in slots]]  # (n, kb)
            z = rng.standard_normal((n, fac.n_levels, len(slots)))
            if block.cor >= 0:
                L = np.linalg.cholesky(cors[block.cor])  # (n, kb, kb)
                z = np.einsum("nij,nlj->nli", L, z)
            u[:, :, slots] = z * s[:, None, :]
        eta += np.einsum("nrk,rk->nr", u[:, fac.index, :], fac.values)
    return eta


def prior_predictive(fit, replicates: int | None = None, seed: int = 0) -> PriorPredictive:
    """Replicated data sets from a fit's priors (see the module's note) beside its observed response.

    ``replicates``: how many (by default as many as fit :data:`MAX_CELLS` values, between 50 and 500).

    Raises
    ------
    Unsupported
        When the engines cannot read the model's priors.
    """
    from bayeslmm.engines.prior_density import spec

    sp = spec(fit)
    rows = sp.y.size
    n = replicates or int(np.clip(MAX_CELLS // max(rows, 1), 50, 500))
    rng = np.random.default_rng([seed, 13])
    beta, sds, sigma, cors = parameter_draws(sp, n, rng)
    eta = linear_predictor(sp, beta, sds, cors, rng)
    family = fit.formula.family
    if family == "gaussian":
        draws = eta + sp.shift + sigma[:, None] * rng.standard_normal(eta.shape)
        return PriorPredictive(fit.name, draws, sp.y, fit.formula.response, family)
    if family == "binomial":
        trials = sp.trials.astype(np.int64)
        successes = rng.binomial(trials, 1.0 / (1.0 + np.exp(-eta)))
        scale = f"proportion {fit.formula.cbind[0]}" if fit.formula.cbind else f"{fit.formula.response} (1 = success)"
        return PriorPredictive(fit.name, successes / sp.trials, sp.y / sp.trials, scale, family)
    if family in ("poisson", "negbinomial"):
        mean = np.minimum(np.exp(np.minimum(eta, np.log(MAX_RATE))), MAX_RATE)
        if family == "negbinomial":  # a gamma-Poisson mixture with alpha (lme4's theta) from its prior
            alpha = distribution(sp.acode, sp.apar).rvs(size=n, random_state=rng)[:, None]
            mean = rng.gamma(alpha, mean / alpha)
        counts = rng.poisson(np.minimum(mean, MAX_RATE))
        return PriorPredictive(fit.name, counts.astype(float), sp.y, f"{fit.formula.response} (count)", family)
    raise ValueError(f"no prior predictive for the {family} family")
