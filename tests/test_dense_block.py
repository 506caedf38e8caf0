"""The marginal engine's dense trailing block: crossed factors fill in, LAPACK factors and inverts.

With crossed grouping factors (InstEval's students x lecturers), the Cholesky factor of
``A = Z'Z + sigma^2 D^-1`` fills the smaller factors in completely; :func:`marginal_lik.symbolic`
stores that trailing block full and :func:`marginal_lik.factor` / :func:`selected_inverse` hand it
to LAPACK (``dpotrf``/``dpotri``) instead of their scalar loops.  Here the block is forced on
small designs (``dense_min``) and everything is held to dense linear algebra, to the scalar path
and to finite differences: the log density and gradient must be exact, not approximately right.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from bayeslmm.engines import marginal_lik as ml

#: the path is forced on for blocks of at least this many columns (the default is ml.DENSE_MIN)
FORCE = 4


def _design(kind: str, seed: int = 3, n_small: int = 24, n_s: int = 40, per: int = 4):
    """Crossed designs shaped as InstEval (students x lecturers, lecturers in departments).

    ``scalar``: (1|s) + (1|d) + (1|dept), ``n_s`` students rating ``per`` of ``n_small`` lecturers in 3
    departments;
    ``slopes``: (1 + x|s) correlated + (1|d), so student columns have a "pre" row above the block.
    Returns y, X, factors, stats (block forced), stats (no block), theta.
    """
    rng = np.random.default_rng(seed)
    n_dept = 3
    s = np.repeat(np.arange(n_s), per)
    d = np.concatenate([rng.choice(n_small, per, replace=False) for _ in range(n_s)])
    n = s.size
    dept_of = np.arange(n_small) % n_dept
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), rng.integers(0, 2, n)])
    y = 3.0 + rng.normal(0, 0.4, n_s)[s] + rng.normal(0, 0.6, n_small)[d] + rng.normal(size=n)
    if kind == "scalar":
        factors = [ml.Factor(n_s, s, np.ones((n, 1)), (0,)), ml.Factor(n_small, d, np.ones((n, 1)), (1,)),
                   ml.Factor(n_dept, dept_of[d], np.ones((n, 1)), (2,))]  # fmt: skip
        theta = np.array([0.1, -0.2, np.log(0.4), np.log(0.6), np.log(0.2), np.log(1.1)])
    else:
        values = np.column_stack([np.ones(n), x])
        factors = [ml.Factor(n_s, s, values, (0, 1), (ml.Block((0, 1), 0),)),
                   ml.Factor(n_small, d, np.ones((n, 1)), (2,))]  # fmt: skip
        theta = np.array([0.1, -0.2, np.log(0.4), np.log(0.3), np.log(0.6), np.log(1.1), 0.4])
    K = theta.size - X.shape[1] - 1 - (kind != "scalar")
    forced = ml.sufficient_stats(y, X, factors, K, dense_min=FORCE)
    plain = ml.sufficient_stats(y, X, factors, K, dense_min=10**9)
    return y, X, factors, forced, plain, theta


def _priors(p: int, K: int):
    bcode = np.array([ml.NORMAL, ml.STUDENT_T][:p], dtype=np.int64)
    bpar = np.array([[0.0, 5.0, 0.0], [0.0, 2.0, 3.0]])[:p]
    scode = np.full(K + 1, ml.HALF_NORMAL, dtype=np.int64)
    spar = np.tile([1.5, 0.0, 0.0], (K + 1, 1))
    return bcode, bpar, scode, spar


def _logp(stats, theta, dense_min):
    K = stats.tcomp.max() + 1
    grad = np.empty_like(theta)
    value = ml.logp_grad(theta, grad, *stats.arrays(), *_priors(2, K), dense_min)
    return value, grad


@pytest.mark.parametrize("kind", ["scalar", "slopes"])
def test_the_smaller_factors_fill_in_and_become_the_block(kind):
    _, _, factors, forced, plain, _ = _design(kind)
    n_trailing = sum(f.n_levels * f.values.shape[1] for f in factors[1:])
    # lecturers and departments (every column after the students) are the full trailing block
    assert forced.q - ml.full_trailing(forced.Lp) == n_trailing
    assert ml.dense_start(forced.Lp, FORCE) == forced.q - n_trailing
    # stored full: at least the entries the elimination itself fills in, and only zeros added
    assert forced.Li.size >= plain.Li.size
    assert ml.dense_start(plain.Lp, 10**9) == plain.q  # the scalar path, as before


def test_nested_designs_get_no_block():
    # 300 sites in 100 ranges: no fill-in at all, nothing for LAPACK
    rng = np.random.default_rng(0)
    site = np.repeat(np.arange(300), 4)
    n = site.size
    factors = [ml.Factor(100, site // 3, np.ones((n, 1)), (0,)), ml.Factor(300, site, np.ones((n, 1)), (1,))]
    stats = ml.sufficient_stats(rng.normal(size=n), np.ones((n, 1)), factors, 2)
    assert stats.Li.size == 2 * stats.q - 100  # each site column has its range below, nothing else
    assert ml.dense_start(stats.Lp, ml.DENSE_MIN) == stats.q


def test_dense_block_trades_lapack_flops_against_the_scalar_loops():
    # a nearly full trailing block of 200 columns after 1000 columns of 20 entries: the block is taken,
    # and none of the sparse columns (LAPACK's cubic cost would outgrow what they save)
    counts = np.concatenate([np.full(1000, 20), 200 - np.arange(200)])
    counts[1000:1010] -= 3  # a few columns of the block not quite full
    assert ml.dense_block(counts) == 1000
    assert ml.dense_block(counts, dense_min=201) == counts.size  # too small a block: none
    assert ml.dense_block(np.full(500, 2)) == 500  # a diagonal-ish pattern: none


@pytest.mark.parametrize("kind", ["scalar", "slopes"])
def test_factor_and_selected_inverse_through_lapack_match_dense_algebra(kind):
    *_, stats, _, _ = _design(kind)
    q = stats.q
    assert ml.dense_start(stats.Lp, FORCE) < q
    rng = np.random.default_rng(7)
    diag = rng.uniform(0.1, 3.0, q)
    Lx = stats.Ax.copy()
    Lx[stats.Lp[:-1]] += diag
    assert ml.factor(stats.Lp, stats.Li, stats.Rp, stats.Rk, stats.Rpos, Lx, np.empty(q, np.int64), FORCE)
    cols = np.repeat(np.arange(q), np.diff(stats.Lp))
    L = np.zeros((q, q))
    L[stats.Li, cols] = Lx
    A = np.zeros((q, q))
    A[stats.Li, cols] = stats.Ax
    A = np.tril(A) + np.tril(A, -1).T + np.diag(diag)
    np.testing.assert_allclose(L, np.linalg.cholesky(A), rtol=1e-12, atol=1e-13)
    Sx = np.empty(stats.Ax.size)
    ml.selected_inverse(stats.Lp, stats.Li, Lx, Sx, np.empty(q), np.empty(q), FORCE)
    np.testing.assert_allclose(Sx, np.linalg.inv(A)[stats.Li, cols], rtol=1e-10, atol=1e-13)


def test_factor_refuses_a_block_that_is_not_positive_definite():
    *_, stats, _, _ = _design("scalar")
    q = stats.q
    Lx = stats.Ax.copy()
    Lx[stats.Lp[:-1]] += 1.0
    Lx[stats.Lp[q - 2]] = -5.0  # a lecturer's diagonal: the Schur complement is indefinite
    assert not ml.factor(stats.Lp, stats.Li, stats.Rp, stats.Rk, stats.Rpos, Lx, np.empty(q, np.int64), FORCE)


@pytest.mark.parametrize("kind", ["scalar", "slopes"])
def test_log_density_and_gradient_are_the_scalar_kernels(kind):
    *_, forced, plain, theta = _design(kind)
    value, grad = _logp(forced, theta, FORCE)  # the block through LAPACK
    scalar_value, scalar_grad = _logp(forced, theta, 10**9)  # the same pattern, scalar loops
    old_value, old_grad = _logp(plain, theta, 10**9)  # the pattern and kernels as before
    assert value == pytest.approx(scalar_value, rel=1e-13)
    assert value == pytest.approx(old_value, rel=1e-13)
    np.testing.assert_allclose(grad, scalar_grad, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad, old_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["scalar", "slopes"])
def test_gradient_through_lapack_matches_finite_differences(kind):
    *_, forced, _, theta = _design(kind)
    _, grad = _logp(forced, theta, FORCE)
    eps = 1e-6
    fd = np.array([(_logp(forced, theta + h, FORCE)[0] - _logp(forced, theta - h, FORCE)[0]) / (2 * eps)
                   for h in eps * np.eye(theta.size)])  # fmt: skip
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-5)


def test_c_entry_point_takes_the_block_at_the_default_size():
    # 70 lecturers >= DENSE_MIN: what nutpie's threads call goes through LAPACK, and agrees with the
    # scalar kernel
    y, X, factors, _, _, theta = _design("scalar", n_small=70, n_s=200, per=8)
    stats = ml.sufficient_stats(y, X, factors, 3)
    assert ml.dense_start(stats.Lp, ml.DENSE_MIN) < stats.q
    priors = _priors(2, 3)
    g1 = np.empty_like(theta)
    v1 = ml.logp_grad(theta, g1, *stats.arrays(), *priors, 10**9)
    buf = ml.pack(stats, *priors)
    cfunc = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, *[ctypes.c_void_p] * 4)(ml.c_logp.address)
    g2, lp = np.empty_like(theta), np.zeros(1)
    assert cfunc(theta.size, theta.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data) == 0
    assert lp[0] == pytest.approx(v1, rel=1e-13)
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10)
    bad = theta.copy()
    bad[-1] = 800.0  # sigma = exp(800): a recoverable error code, not a crash in LAPACK
    assert cfunc(theta.size, bad.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data) > 0


def test_conditional_draws_through_lapack_have_the_exact_mean_and_covariance():
    y, X, factors, stats, _, theta = _design("scalar")
    p, K, q = X.shape[1], 3, stats.q
    sds, sigma2 = np.exp(theta[p : p + K]), np.exp(2 * theta[p + K])
    n = y.size
    Z = np.zeros((n, q))
    d = np.zeros(q)
    for f, fac in enumerate(factors):
        Z[np.arange(n), stats.columns[f][fac.index, 0]] = 1.0
        d[stats.columns[f][:, 0]] = sds[fac.components[0]] ** 2
    cov = np.linalg.inv(Z.T @ Z / sigma2 + np.diag(1 / d))
    mean = cov @ Z.T @ (y - X @ theta[:p]) / sigma2
    z = np.vstack([np.zeros(q), np.eye(q)])  # z = 0: the mean; z = e_i: mean + a column of a root of cov
    u = ml.draw_effects(np.tile(theta, (q + 1, 1)), K, z, stats.Zty, stats.ZtX, stats.Lp, stats.Li, stats.Ax,
                        stats.Rp, stats.Rk, stats.Rpos, *stats.blocks(), FORCE)  # fmt: skip
    np.testing.assert_allclose(u[0], mean, rtol=1e-9, atol=1e-10)
    root = (u[1:] - u[0]).T
    np.testing.assert_allclose(root @ root.T, cov, rtol=1e-8, atol=1e-12)
