"""Marginal and conditional R² (Nakagawa & Schielzeth; Johnson's random slopes): formula checks and lme4's."""

from __future__ import annotations

import numpy as np
import pytest

from bayeslmm.lme4 import frequentist
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.summary.r2 import lme4_r2, r_squared
from conftest import beyond


def test_random_slopes_average_z_sigma_z_over_rows():
    """var_r = mean_i z_i' Sigma z_i, checked against the dense Z Sigma Z'; var_f against var(X beta)."""
    rng = np.random.default_rng(1)
    n = 50
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    Z = np.column_stack([np.ones(n), rng.normal(2, 1, size=n)])
    sigma = np.array([[4.0, -1.0], [-1.0, 2.0]])
    beta = np.array([1.0, 3.0])
    var_f = np.var(X @ beta, ddof=1)
    var_r = np.mean(np.diag(Z @ sigma @ Z.T))
    m, c = r_squared(X, beta, [(Z, sigma)], 5.0)
    assert m[0] == pytest.approx(var_f / (var_f + var_r + 5.0), rel=1e-12)
    assert c[0] == pytest.approx((var_f + var_r) / (var_f + var_r + 5.0), rel=1e-12)
    draws = np.stack([sigma, 2 * sigma])  # per draw, vectorised
    m2, _ = r_squared(X, np.stack([beta, beta]), [(Z, draws)], np.array([5.0, 5.0]))
    assert m2[0] == pytest.approx(m[0]) and m2[1] < m2[0]


def test_lme4_r2_matches_r():
    """R 4.2.2, lme4 1.1-31 on tests/data/beyond/slopes.csv, ``lmer(reaction ~ day + (day|subject))``:
    var(X %*% fixef) and sum(diag(VarCorr %*% crossprod(Z) / n)) give R²m 0.2947371, R²c 0.8450837
    (tests/data/r/r2.R). Our lme4 fit agrees with lme4's to about 1e-5, hence 1e-4."""
    _, df = beyond("slopes_correlated")
    frame = model_frame(parse("reaction ~ day + (day|subject)"), df)
    m, c = lme4_r2(frequentist.fit(frame, "reml"), frame)
    assert m == pytest.approx(0.2947371, rel=1e-4) and c == pytest.approx(0.8450837, rel=1e-4)
