"""Parametric-bootstrap likelihood-ratio test of nested linear mixed models (pbkrtest's ``PBmodcomp``).

The LRT of a variance component is at the boundary of its parameter space (an sd of 0), where the
chi-square reference is conservative; the tutorial suggests "MCMC or parametric bootstrap". Here:
simulate ``nsim`` responses from the smaller model's ML fit (fixed effects, random effects drawn from
its covariance, residuals), refit both models by ML to each, and compare the observed LRT statistic
with the simulated ones: ``p = (1 + #{LRT* >= LRT}) / (1 + nsim)``, as ``PBmodcomp`` reports it.
Each refit is lme4's ML optimisation only (no standard errors), started from the observed fit's theta.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from bayeslmm.lme4.lmer import LmerProblem, blas_threads
from bayeslmm.model.formula import ModelFrame


@dataclass(frozen=True)
class PBTest:
    """The bootstrap test: observed statistic, simulated ones, p-value."""

    statistic: float
    simulated: np.ndarray
    p_value: float

    @property
    def nsim(self) -> int:
        return int(self.simulated.size)


def ml_deviance(frame: ModelFrame, start: np.ndarray | None = None) -> tuple[float, np.ndarray | None]:
    """``-2 logLik`` of the ML fit of ``frame`` (OLS without random terms), and its theta."""
    if not frame.blocks:
        n = frame.y.size
        beta, *_ = np.linalg.lstsq(frame.X, frame.y, rcond=None)
        rss = float(np.sum((frame.y - frame.X @ beta) ** 2))
        return n * (1 + np.log(2 * np.pi * rss / n)), None
    m = LmerProblem(frame, reml=False)
    if start is None:
        theta, _ = m.optimize()
        return float(m.objective(theta)), theta
    # a simulated response: one L-BFGS-B run from the observed fit's theta, to 1e-10 in the deviance
    # (lme4's own tolerance is far looser), instead of the full fit's restarts and gradient checks
    res = optimize.minimize(m.objective, np.maximum(start, m.lower), method="L-BFGS-B", jac="2-point",
                            bounds=optimize.Bounds(m.lower, np.full(m.lower.size, np.inf)),
                            options={"ftol": 1e-12, "gtol": 1e-6, "maxiter": 500})
    return float(res.fun), res.x


def simulate(frame: ModelFrame, fit, rng: np.random.Generator) -> np.ndarray:
    """One response drawn from an ML fit (:class:`~bayeslmm.lme4.frequentist.FreqFit`) on ``frame``."""
    y = frame.X @ np.array([fit.fixef[n] for n in frame.x_names])
    vc = fit.varcorr
    for block in frame.blocks:
        g, coefs = block.term.group, block.term.coefs
        rows = vc[vc["group"] == g].set_index("term")
        sd = np.array([rows.loc[f"sd__{c}", "sd"] for c in coefs])
        cor = np.eye(len(coefs))
        for i in range(len(coefs)):
            for j in range(i):
                key = f"cor__{coefs[j]}.{coefs[i]}"
                if key in rows.index:
                    cor[i, j] = cor[j, i] = rows.loc[key, "sd"]
        cov = cor * np.outer(sd, sd)
        u = rng.multivariate_normal(np.zeros(len(coefs)), cov, size=len(block.levels), method="eigh")
        y = y + np.sum(block.values * u[block.index], axis=1)
    return y + rng.normal(0.0, fit.sigma, size=y.size)


def pb_lrt(small: ModelFrame, large: ModelFrame, small_fit, nsim: int = 500, seed: int = 0,
           progress=None) -> PBTest:
    """The parametric-bootstrap LRT of ``small`` (the null) against ``large``, nested, both Gaussian.

    ``small_fit`` is the small model's ML fit; ``progress(i, nsim)`` is called after each simulation.
    """
    if small.formula.is_glmm or large.formula.is_glmm:
        raise ValueError("the parametric-bootstrap LRT is for linear mixed models")
    dev_small, t_small = ml_deviance(small)
    dev_large, t_large = ml_deviance(large)
    observed = max(dev_small - dev_large, 0.0)
    rng = np.random.default_rng(seed)
    sims = np.empty(nsim)
    with blas_threads():  # small factors: one BLAS thread (more only stall on a loaded machine)
        for i in range(nsim):
            y = simulate(small, small_fit, rng)
            ds, _ = ml_deviance(dataclasses.replace(small, y=y), t_small)
            dl, _ = ml_deviance(dataclasses.replace(large, y=y), t_large)
            sims[i] = max(ds - dl, 0.0)
            if progress is not None:
                progress(i + 1, nsim)
    p = (1 + int(np.sum(sims >= observed - 1e-9 * max(1.0, observed)))) / (1 + nsim)
    return PBTest(observed, sims, p)
