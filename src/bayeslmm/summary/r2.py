"""Marginal and conditional R² of mixed models, as ecologists report them (Nakagawa & Schielzeth 2013).

``R²m = var_f / (var_f + var_r + var_e)`` (the fixed effects' share) and ``R²c = (var_f + var_r) /
(var_f + var_r + var_e)`` (fixed and random effects'), with

- ``var_f`` the variance of the fixed-effect predictions ``X beta`` over the rows (``ddof = 1``, as R's
  ``var`` in MuMIn and performance): ``beta' cov(X) beta``;
- ``var_r`` the random effects' variance averaged over the rows, Johnson's (2014) extension to random
  slopes: per random term ``mean_i z_i' Sigma z_i = trace(Sigma Z'Z / n)``; a random intercept
  contributes its variance;
- ``var_e`` the residual variance (sigma²), or for a binomial or Poisson model the distribution-specific
  latent variance of :func:`bayeslmm.results.latent_residual_variance` (Nakagawa, Johnson & Schielzeth
  2017: pi²/3 for the logit link; ln(1 + 1/lambda) at the data's mean count for the log link).

lme4's side plugs in its (RE)ML estimates; the posterior gets an R² per draw, so it has an interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.labels import RESIDUAL, RESIDUAL_TERM, cor_term, sd_term
from bayeslmm.model.formula import model_frame
from bayeslmm.results import latent_residual_variance


def r_squared(X: np.ndarray, beta: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]],
              residual: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Marginal and conditional R² for each row of ``beta`` (draws x p, or p).

    ``blocks``: per random term, its columns ``Z`` (n x k) and covariance ``Sigma`` (draws x k x k, or
    k x k); ``residual``: the residual (or latent) variance, per draw or one value.
    """
    beta = np.atleast_2d(beta)
    cov_x = np.atleast_2d(np.cov(X, rowvar=False, ddof=1)) if X.shape[1] else np.zeros((0, 0))
    var_f = np.einsum("sp,pq,sq->s", beta, cov_x, beta)
    var_r = np.zeros_like(var_f)
    for Z, sigma in blocks:
        M = Z.T @ Z / Z.shape[0]
        var_r = var_r + np.einsum("...jk,jk->...", np.asarray(sigma), M)
    total = var_f + var_r + residual
    return var_f / total, (var_f + var_r) / total


def _covariance(sd: dict, cor: dict, group: str, coefs: tuple[str, ...]) -> np.ndarray:
    """A term's covariance matrix (draws x k x k, or k x k) from its sds and correlations."""
    s = [np.asarray(sd[(group, sd_term(c))], dtype=float) for c in coefs]
    k = len(coefs)
    out = np.zeros((*s[0].shape, k, k))
    for i in range(k):
        for j in range(k):
            r = 1.0 if i == j else np.asarray(cor.get((group, cor_term(*sorted((coefs[i], coefs[j]),
                                                                                key=coefs.index))), 0.0))
            out[..., i, j] = s[i] * s[j] * r
    return out


def _residual_variance(formula, data: pd.DataFrame, sd: dict, theta=None):
    """sigma² of a Gaussian model; a GLMM's latent variance (the negative binomial's at its ``theta``)."""
    if not formula.is_glmm:
        return np.asarray(sd[(RESIDUAL, RESIDUAL_TERM)], dtype=float) ** 2
    counts = formula.family in ("poisson", "negbinomial")
    mean = float(np.mean(data[formula.response])) if counts else None
    return latent_residual_variance(formula.family, mean, theta)


def lme4_r2(fit, frame) -> tuple[float, float]:
    """(R²m, R²c) of an lme4-side fit (:class:`~bayeslmm.lme4.frequentist.FreqFit`) on its model frame."""
    vc = fit.varcorr if fit.varcorr is not None else pd.DataFrame(columns=["group", "term", "sd"])
    sd = {(r.group, r.term): r.sd for r in vc.itertuples() if r.term.startswith("sd__")}
    if not fit.family or fit.family == "gaussian":
        sd.setdefault((RESIDUAL, RESIDUAL_TERM), fit.sigma)
    cor = {(r.group, r.term): r.sd for r in vc.itertuples() if r.term.startswith("cor__")}
    beta = np.array([fit.fixef[n] for n in frame.x_names])
    blocks = [(b.values, _covariance(sd, cor, b.term.group, b.term.coefs)) for b in frame.blocks]
    counts = pd.DataFrame({frame.formula.response: frame.y})  # a count model's mean count
    m, c = r_squared(frame.X, beta, blocks, _residual_variance(frame.formula, counts, sd,
                                                               getattr(fit, "nb_theta", None)))
    return float(m[0]), float(c[0])


def posterior_r2(fit) -> tuple[np.ndarray, np.ndarray]:
    """Draws (chains pooled) of (R²m, R²c) of a Bayesian fit."""
    from bayeslmm.summary.tables import cor_draws, fixed_draws, sd_draws

    frame = model_frame(fit.formula, fit.data)
    sd, cor = sd_draws(fit), cor_draws(fit)
    beta = np.column_stack([fixed_draws(fit, n) for n in frame.x_names]) if frame.x_names else \
        np.zeros((next(iter(sd.values())).size, 0))
    blocks = [(b.values, _covariance(sd, cor, b.term.group, b.term.coefs)) for b in frame.blocks]
    theta = None
    if fit.formula.family == "negbinomial":
        from bayeslmm.labels import NB_SIZE_VARIABLE

        theta = np.asarray(fit.idata["posterior"][NB_SIZE_VARIABLE].values, dtype=float).reshape(-1)
    return r_squared(frame.X, beta, blocks, _residual_variance(fit.formula, fit.data, sd, theta))


def r2_table(study, fits: dict, freq: dict, ci: float = 0.95) -> pd.DataFrame:
    """Per model: lme4's marginal and conditional R² beside the posterior's mean and interval."""
    from bayeslmm.summary.analysis import lme4_method

    rows = []
    lo, hi = (1 - ci) / 2, (1 + ci) / 2
    for spec in study.models:
        fit = fits[spec.name]
        freq_fit = freq[(spec.name, lme4_method(spec))]
        frame = model_frame(fit.formula, fit.data)
        m, c = lme4_r2(freq_fit, frame)
        pm, pc = posterior_r2(fit)
        for kind, est, draws in (("marginal", m, pm), ("conditional", c, pc)):
            rows.append({"model": spec.name, "r2": kind, "lme4_estimate": est, "post_mean": float(np.mean(draws)),
                         "post_conf_low": float(np.quantile(draws, lo)),
                         "post_conf_high": float(np.quantile(draws, hi)), "ci": ci})
    return pd.DataFrame(rows)
