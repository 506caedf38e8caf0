"""The marginal engine: exact kernels, the same posterior as the Bambi engine, lme4's answer.

Three layers:

* kernels against dense linear algebra (no sampler): the marginal log-likelihood and its
  gradient, the conditional law of the random effects, every supported prior against
  PyMC's own log density, and the priors read from a Bambi model against the PyMC model
  Bambi builds;
* the seams: Bambi's names/dims/coords and ``compute_log_likelihood``, nutpie's internal
  compiled-model interface (the fast path) against its public python-function interface;
* real seeded fits (``slow``): agreement with the Bambi engine on the tutorial data, nested
  (``mixed.lmer2``), crossed (``mixed.WRONG``) and unbalanced, and with lme4's REML numbers.

Tolerance for engine agreement: both engines are Monte Carlo estimates of the same
posterior, so the difference of two posterior means has standard deviation
sqrt(mcse_a^2 + mcse_b^2).  We accept |diff| < 4 of those: a correct engine fails a single
comparison with probability ~6e-5, while a wrong prior, a missed centring or a wrong
conditional variance moves means or sds by far more than 4 MCSE (the Bambi side runs 2 x
1000 draws, so its MCSE is ~0.02-0.05 posterior sd).  The fits are seeded, so the outcome
is deterministic.
"""

from __future__ import annotations

import ctypes
import warnings

import numpy as np
import pytest

from bayeslmm.engines import marginal
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.bayes import SamplerOptions, build_model, model_data
from bayeslmm.engines.bayes import sample as bambi_sample
from bayeslmm.intervals import eti
from bayeslmm.labels import INTERCEPT, RESIDUAL, RESIDUAL_TERM, classify, sd_term, sd_variable
from bayeslmm.model.formula import model_frame, parse

LMER2 = "testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)"
WRONG = "testScore ~ bodyLength2 + (1|mountainRange) + (1|site)"
#: fixed effect of a factor (centring matters) and an uncorrelated random slope
MIXED = "testScore ~ bodyLength2 + mountainRange + (bodyLength2||site)"

BAMBI_OPTIONS = SamplerOptions(draws=1000, tune=1000, chains=2, seed=11)
MARGINAL_OPTIONS = SamplerOptions(seed=12)


def _setup(formula: str, df):
    f = parse(formula)
    data = model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(f, data)
    return f, data, model, model_frame(f, data)


def _scalars(tree) -> list[str]:
    post = tree["posterior"]
    return [v for v in post.data_vars if post[v].ndim == 2]


# ---------------------------------------------------------------------------------------
# Kernels against dense linear algebra
# ---------------------------------------------------------------------------------------


def _toy(seed=1, n=70):
    """A crossed + nested design with an uncorrelated random slope, and random parameters."""
    rng = np.random.default_rng(seed)
    g1 = rng.integers(0, 4, n)
    g2 = rng.integers(0, 3, n)
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x, rng.normal(size=n)])
    y = rng.normal(size=n) * 3 + 2
    factors = [
        ml.Factor(4, g1, np.column_stack([np.ones(n), x]), (0, 1)),  # (1|g1) + (0 + x|g1)
        ml.Factor(3, g2, np.ones((n, 1)), (2,)),  # crossed with g1
        ml.Factor(12, g1 * 3 + g2, np.ones((n, 1)), (3,)),  # nested in g1
    ]
    stats = ml.sufficient_stats(y, X, factors, 4)
    theta = np.concatenate([[1.5, 0.3, -0.2], np.log([1.2, 0.5, 2.0, 0.8]), [np.log(2.5)]])
    return y, X, factors, stats, theta


def _dense_z(factors, stats, sds):
    n = factors[0].index.size
    Z = np.zeros((n, stats.q))
    d = np.zeros(stats.q)
    for f, fac in enumerate(factors):
        for j, c in enumerate(fac.components):
            Z[np.arange(n), stats.columns[f][fac.index, j]] = fac.values[:, j]
            d[stats.columns[f][:, j]] = sds[c] ** 2
    return Z, d


def _flat_priors(p, K):
    """Priors so wide that their contribution is a constant (gradient ~ 0)."""
    bcode = np.zeros(p, dtype=np.int64)
    bpar = np.tile([0.0, 1e12, 0.0], (p, 1))
    scode = np.full(K + 1, ml.GAMMA, dtype=np.int64)
    spar = np.tile([1e-12, 1e-12, 0.0], (K + 1, 1))
    return bcode, bpar, scode, spar


def _loglik_dense(theta, y, X, factors, stats):
    from scipy.stats import multivariate_normal

    p = X.shape[1]
    K = theta.size - p - 1
    Z, d = _dense_z(factors, stats, np.exp(theta[p : p + K]))
    V = np.exp(2 * theta[-1]) * np.eye(y.size) + Z @ np.diag(d) @ Z.T
    return multivariate_normal(X @ theta[:p], V).logpdf(y)


def test_marginal_loglik_and_gradient_match_dense_algebra():
    y, X, factors, stats, theta = _toy()
    p, K = X.shape[1], 4
    bcode, bpar, scode, spar = _flat_priors(p, K)
    grad = np.empty_like(theta)
    value = ml.logp_grad(theta, grad, *stats.arrays(), bcode, bpar, scode, spar)
    prior = sum(ml.location_prior(bcode[a], bpar[a], theta[a])[0] for a in range(p))
    prior += sum(ml.scale_prior(scode[k], spar[k], theta[p + k])[0] for k in range(K + 1))
    assert value - prior == pytest.approx(_loglik_dense(theta, y, X, factors, stats), abs=1e-9)
    eps = 1e-6
    dense = [_loglik_dense(theta + h, y, X, factors, stats) - _loglik_dense(theta - h, y, X, factors, stats)
             for h in eps * np.eye(theta.size)]  # fmt: skip
    fd = np.array(dense) / (2 * eps)
    prior_grad = np.array(
        [ml.location_prior(bcode[a], bpar[a], theta[a])[1] for a in range(p)]
        + [ml.scale_prior(scode[k], spar[k], theta[p + k])[1] for k in range(K + 1)]
    )
    np.testing.assert_allclose(grad - prior_grad, fd, rtol=1e-5, atol=1e-5)


def _crossed_stats(full: bool, seed: int = 0):
    """Two crossed factors (20 x 10 levels), fully or randomly crossed, plus a nested one."""
    rng = np.random.default_rng(seed)
    if full:
        g1, g2 = np.repeat(np.arange(20), 10), np.tile(np.arange(10), 20)
    else:
        g1, g2 = rng.integers(0, 20, 150), rng.integers(0, 10, 150)
    n = g1.size
    factors = [ml.Factor(20, g1, np.ones((n, 1)), (0,)), ml.Factor(10, g2, np.ones((n, 1)), (1,)),
               ml.Factor(40, g1 * 2 + rng.integers(0, 2, n), np.ones((n, 1)), (2,))]  # fmt: skip
    return ml.sufficient_stats(rng.normal(size=n), np.ones((n, 1)), factors, 3)


def _crossed_slopes_stats(k: int, seed: int = 0):
    """(1 + x [+ z]|g1) correlated, 30 levels, crossed with (1|g2), 12 levels: each g1 column has the
    level's other coefficients above the dense trailing block of g2 (the selected inverse's pre rows)."""
    rng = np.random.default_rng(seed)
    n = 240
    g1, g2 = rng.integers(0, 30, n), rng.integers(0, 12, n)
    values = np.column_stack([np.ones(n), *rng.normal(size=(k - 1, n))])
    factors = [ml.Factor(30, g1, values, tuple(range(k)), (ml.Block(tuple(range(k)), 0),)),
               ml.Factor(12, g2, np.ones((n, 1)), (k,))]
    return ml.sufficient_stats(rng.normal(size=n), np.ones((n, 1)), factors, k + 1)


@pytest.mark.parametrize("design", ["toy1", "toy2", "crossed-full", "crossed-random", "crossed-slopes2",
                                    "crossed-slopes3"])
def test_sparse_cholesky_and_selected_inverse_match_dense(design):
    # crossed factors fill in (the smaller one becomes a dense trailing block, which both
    # kernels treat as dense); the factor and A^-1 on the pattern of L must be exact
    if design.startswith("toy"):
        stats = _toy(int(design[-1]))[3]
    elif design.startswith("crossed-slopes"):
        stats = _crossed_slopes_stats(int(design[-1]))
    else:
        stats = _crossed_stats(design == "crossed-full")
    q = stats.q
    rng = np.random.default_rng(7)
    diag = rng.uniform(0.1, 3.0, q)
    Lx = stats.Ax.copy()
    Lx[stats.Lp[:-1]] += diag
    assert ml.factor(stats.Lp, stats.Li, stats.Rp, stats.Rk, stats.Rpos, Lx, np.empty(q, np.int64))
    L = np.zeros((q, q))
    cols = np.repeat(np.arange(q), np.diff(stats.Lp))
    L[stats.Li, cols] = Lx
    A = np.zeros((q, q))
    A[stats.Li, cols] = stats.Ax
    A = np.tril(A) + np.tril(A, -1).T + np.diag(diag)
    np.testing.assert_allclose(L @ L.T, A, rtol=1e-12, atol=1e-10)
    Sx = np.empty(stats.Ax.size)
    ml.selected_inverse(stats.Lp, stats.Li, Lx, Sx, np.empty(q), np.empty(q))
    np.testing.assert_allclose(Sx, np.linalg.inv(A)[stats.Li, cols], rtol=1e-10, atol=1e-12)
    if design in ("crossed-full", "crossed-random"):
        assert np.diff(stats.Lp)[-10] == 10  # the dense trailing block is there
    elif design.startswith("crossed-slopes"):
        assert np.diff(stats.Lp)[-12] == 12  # the dense trailing block is there


def test_c_entry_point_gives_the_python_kernel_value():
    # c_logp is what nutpie's Rust threads call: same value and gradient from the packed buffer
    _, _, _, stats, theta = _toy(2)
    bcode = np.array([ml.NORMAL, ml.STUDENT_T, ml.NORMAL], dtype=np.int64)
    bpar = np.array([[0.0, 10.0, 0.0], [1.0, 3.0, 4.0], [0.0, 2.0, 0.0]])
    scode = np.array([ml.HALF_NORMAL, ml.HALF_STUDENT_T, ml.HALF_CAUCHY, ml.EXPONENTIAL, ml.INVERSE_GAMMA])
    spar = np.array([[2.0, 0, 0], [3.0, 4.0, 0], [1.0, 0, 0], [0.5, 0, 0], [2.0, 1.0, 0]])
    g1 = np.empty_like(theta)
    v1 = ml.logp_grad(theta, g1, *stats.arrays(), bcode, bpar, scode, spar)
    buf = ml.pack(stats, bcode, bpar, scode, spar)
    cfunc = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, *[ctypes.c_void_p] * 4)(ml.c_logp.address)
    g2, lp = np.empty_like(theta), np.zeros(1)
    code = cfunc(theta.size, theta.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data)
    assert code == 0
    assert lp[0] == pytest.approx(v1, rel=1e-14)
    np.testing.assert_allclose(g2, g1, rtol=1e-13)
    bad = theta.copy()
    bad[-1] = 800.0  # sigma = exp(800): not finite -> recoverable error code, not a crash
    assert cfunc(theta.size, bad.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data) > 0


def test_conditional_draws_have_the_exact_mean_and_covariance():
    y, X, factors, stats, theta = _toy(3)
    p, K = X.shape[1], 4
    sds, sigma2 = np.exp(theta[p : p + K]), np.exp(2 * theta[-1])
    Z, d = _dense_z(factors, stats, sds)
    prec = Z.T @ Z / sigma2 + np.diag(1 / d)
    cov = np.linalg.inv(prec)
    mean = cov @ Z.T @ (y - X @ theta[:p]) / sigma2
    q = stats.q
    # z = 0 gives the conditional mean; z = e_i gives mean + column i of a square root of cov
    z = np.vstack([np.zeros(q), np.eye(q)])
    u = ml.draw_effects(np.tile(theta, (q + 1, 1)), K, z, stats.Zty, stats.ZtX, stats.Lp, stats.Li, stats.Ax,
                        stats.Rp, stats.Rk, stats.Rpos, *stats.blocks())  # fmt: skip
    np.testing.assert_allclose(u[0], mean, rtol=1e-9, atol=1e-10)
    root = (u[1:] - u[0]).T
    np.testing.assert_allclose(root @ root.T, cov, rtol=1e-8, atol=1e-12)


def test_pointwise_loglik_is_the_normal_density():
    from scipy.stats import norm

    y, X, factors, stats, _ = _toy(4)
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(3, X.shape[1]))
    u = rng.normal(size=(3, stats.q))
    sigma = np.array([1.0, 2.0, 0.5])
    Z, _ = _dense_z(factors, stats, np.ones(4))
    out = ml.pointwise_loglik(y, X, beta, stats.cols, stats.vals, u, sigma)
    ref = norm.logpdf(y[None, :], beta @ X.T + u @ Z.T, sigma[:, None])
    np.testing.assert_allclose(out, ref, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Correlated blocks (lme4's (x|g)): the same checks with block-diagonal D
# ---------------------------------------------------------------------------------------


def _cpc_cholesky(y, k):
    """Cholesky factor of a correlation matrix from canonical partial correlations tanh(y): an
    independent numpy transcription of Stan's ``cholesky_corr_constrain`` (rows in order)."""
    L = np.zeros((k, k))
    L[0, 0] = 1.0
    it = iter(np.tanh(y))
    for i in range(1, k):
        for j in range(i):
            L[i, j] = next(it) * np.sqrt(1.0 - np.sum(L[i, :j] ** 2))
        L[i, i] = np.sqrt(1.0 - np.sum(L[i, :i] ** 2))
    return L


def _toy_correlated(seed=1, n=90):
    """Three factors: a 3-coefficient correlated block, an uncorrelated (1|g2) + (0 + x|g2) crossed
    with it, and a nested 2-coefficient block; random parameters (7 sds, 3 + 1 correlations)."""
    rng = np.random.default_rng(seed)
    g1, g2 = rng.integers(0, 5, n), rng.integers(0, 3, n)
    x, x2 = rng.normal(size=n), rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = rng.normal(size=n) * 3 + 2
    factors = [
        ml.Factor(5, g1, np.column_stack([np.ones(n), x, x2]), (0, 1, 2), (ml.Block((0, 1, 2), 0, 1.5),)),
        ml.Factor(3, g2, np.column_stack([np.ones(n), x]), (3, 4)),
        ml.Factor(15, g1 * 3 + g2, np.column_stack([np.ones(n), x]), (5, 6), (ml.Block((0, 1), 3, 2.0),)),
    ]
    stats = ml.sufficient_stats(y, X, factors, 7)
    theta = np.concatenate([[1.5, 0.3], np.log([1.2, 0.5, 0.7, 2.0, 0.3, 0.8, 0.4]), [np.log(1.5)],
                            rng.uniform(-0.9, 0.9, 4)])
    return y, X, factors, stats, theta


def _dense_correlated(theta, y, X, factors, p=2, K=7):
    """``V = sigma^2 I + sum_f Z_f (I x Sigma_f) Z_f'`` and the log-likelihood, by dense algebra."""
    from scipy.stats import multivariate_normal

    n = y.size
    sds, sig, ycor = np.exp(theta[p : p + K]), np.exp(theta[p + K]), theta[p + K + 1 :]
    V = sig**2 * np.eye(n)
    covs = []
    for fac in factors:
        k = fac.values.shape[1]
        cov = np.diag([sds[c] ** 2 for c in fac.components])
        for b in fac.blocks:
            L = _cpc_cholesky(ycor[b.cor : b.cor + len(b.slots) * (len(b.slots) - 1) // 2], len(b.slots))
            s = np.array([sds[fac.components[j]] for j in b.slots])
            cov[np.ix_(b.slots, b.slots)] = np.outer(s, s) * (L @ L.T)
        Z = np.zeros((n, fac.n_levels * k))
        for j in range(k):
            Z[np.arange(n), fac.index * k + j] = fac.values[:, j]
        V += Z @ np.kron(np.eye(fac.n_levels), cov) @ Z.T
        covs.append(cov)
    return multivariate_normal(X @ theta[:p], V).logpdf(y), covs


def _cor_prior(theta, factors, p=2, K=7):
    """The correlations' log prior (LKJ + the transform's log-Jacobian) as the kernel computes it."""
    total = 0.0
    for fac in factors:
        for b in fac.blocks:
            k = len(b.slots)
            nc = k * (k - 1) // 2
            y = theta[p + K + 1 + b.cor : p + K + 1 + b.cor + nc]
            total += ml.corr_cholesky(y, k, b.eta, np.zeros((k, k)), np.zeros((nc, k, k)), np.zeros(nc))
    return total


def test_correlated_blocks_loglik_and_gradient_match_dense_algebra():
    y, X, factors, stats, theta = _toy_correlated()
    p, K = 2, 7
    bcode, bpar, scode, spar = _flat_priors(p, K)

    def prior(th):
        v = sum(ml.location_prior(bcode[a], bpar[a], th[a])[0] for a in range(p))
        v += sum(ml.scale_prior(scode[k], spar[k], th[p + k])[0] for k in range(K + 1))
        return v + _cor_prior(th, factors)

    grad = np.empty_like(theta)
    value = ml.logp_grad(theta, grad, *stats.arrays(), bcode, bpar, scode, spar)
    assert value - prior(theta) == pytest.approx(_dense_correlated(theta, y, X, factors)[0], abs=1e-9)
    eps = 1e-6
    fd = [(_dense_correlated(theta + h, y, X, factors)[0] + prior(theta + h)
           - _dense_correlated(theta - h, y, X, factors)[0] - prior(theta - h)) / (2 * eps)
          for h in eps * np.eye(theta.size)]  # fmt: skip
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("k", "eta"), [(2, 1.0), (3, 2.5), (4, 0.7)])
def test_correlation_transform_is_lkj_times_its_jacobian(k, eta):
    """The kernel's log density in y is the LKJ(eta) density of R, det(R)^(eta - 1), times the
    Jacobian of y -> R's free entries (numerical), with no constant dropped but LKJ's own."""
    rng = np.random.default_rng(k)
    nc = k * (k - 1) // 2
    y = rng.uniform(-1.2, 1.2, nc)
    L, dL, dlp = np.zeros((k, k)), np.zeros((nc, k, k)), np.zeros(nc)
    value = ml.corr_cholesky(y, k, eta, L, dL, dlp)
    np.testing.assert_allclose(L, _cpc_cholesky(y, k), atol=1e-14)
    low = np.tril_indices(k, -1)

    def free(yy):
        Lc = _cpc_cholesky(yy, k)
        return (Lc @ Lc.T)[low]

    eps = 1e-6
    J = np.column_stack([(free(y + h) - free(y - h)) / (2 * eps) for h in eps * np.eye(nc)])
    R = L @ L.T
    expected = (eta - 1) * np.linalg.slogdet(R)[1] + np.linalg.slogdet(J)[1]
    assert value == pytest.approx(expected, abs=1e-6)
    fd = [(ml.corr_cholesky(y + h, k, eta, L, dL, np.zeros(nc)) - ml.corr_cholesky(y - h, k, eta, L, dL, np.zeros(nc)))
          / (2 * eps) for h in eps * np.eye(nc)]  # fmt: skip
    ml.corr_cholesky(y, k, eta, L, dL, dlp)
    np.testing.assert_allclose(dlp, fd, rtol=1e-6, atol=1e-8)


def test_correlated_conditional_draws_have_the_exact_mean_and_covariance():
    y, X, factors, stats, theta = _toy_correlated(3)
    p, K = 2, 7
    _, covs = _dense_correlated(theta, y, X, factors)
    n, q = y.size, stats.q
    Z = np.zeros((n, q))
    D = np.zeros((q, q))
    for f, fac in enumerate(factors):
        for j in range(fac.values.shape[1]):
            Z[np.arange(n), stats.columns[f][fac.index, j]] = fac.values[:, j]
        for lev in range(fac.n_levels):
            c = stats.columns[f][lev]
            D[np.ix_(c, c)] = covs[f]
    sigma2 = np.exp(2 * theta[p + K])
    cov = np.linalg.inv(Z.T @ Z / sigma2 + np.linalg.inv(D))
    mean = cov @ Z.T @ (y - X @ theta[:p]) / sigma2
    z = np.vstack([np.zeros(q), np.eye(q)])
    u = ml.draw_effects(np.tile(theta, (q + 1, 1)), K, z, stats.Zty, stats.ZtX, stats.Lp, stats.Li, stats.Ax,
                        stats.Rp, stats.Rk, stats.Rpos, *stats.blocks())  # fmt: skip
    np.testing.assert_allclose(u[0], mean, rtol=1e-9, atol=1e-10)
    root = (u[1:] - u[0]).T
    np.testing.assert_allclose(root @ root.T, cov, rtol=1e-8, atol=1e-12)
    R = ml.correlations(theta[None, :], p, K, *stats.blocks()[:4])[0]
    L = _cpc_cholesky(theta[p + K + 1 : p + K + 4], 3)
    np.testing.assert_allclose(R[0, :3, :3], L @ L.T, atol=1e-14)


def test_correlated_c_entry_point_gives_the_python_kernel_value():
    _, _, _, stats, theta = _toy_correlated(2)
    bcode, bpar, scode, spar = _flat_priors(2, 7)
    g1 = np.empty_like(theta)
    v1 = ml.logp_grad(theta, g1, *stats.arrays(), bcode, bpar, scode, spar)
    buf = ml.pack(stats, bcode, bpar, scode, spar)
    cfunc = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, *[ctypes.c_void_p] * 4)(ml.c_logp.address)
    g2, lp = np.empty_like(theta), np.zeros(1)
    assert cfunc(theta.size, theta.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data) == 0
    assert lp[0] == pytest.approx(v1, rel=1e-14)
    np.testing.assert_allclose(g2, g1, rtol=1e-13)
    # a dimension without the correlations is refused (not read past the end)
    assert cfunc(theta.size - 4, theta.ctypes.data, g2.ctypes.data, lp.ctypes.data, buf.ctypes.data) < 0


def _pm_logp(name, args, value):
    """PyMC's log density, arguments in float64 (pytensor would make 2.5 a float32 constant).

    Some of PyMC's own constants are float32 (log 2, log pi): it differs from scipy, and from
    our kernels, by ~2e-9, hence ``abs=1e-8`` below.
    """
    import pymc as pm

    f64 = {k: np.asarray(v, dtype="float64") for k, v in args.items()}
    return float(pm.logp(getattr(pm, name).dist(**f64), np.asarray(value, dtype="float64")).eval())


@pytest.mark.parametrize(
    ("name", "args", "value"),
    [
        ("Normal", {"mu": 1.5, "sigma": 2.0}, 0.3),
        ("StudentT", {"nu": 4.0, "mu": -1.0, "sigma": 3.0}, 2.2),
        ("Cauchy", {"alpha": 0.5, "beta": 2.0}, -1.3),
    ],
)
def test_location_priors_match_pymc(name, args, value):
    import bambi as bmb

    code, par = marginal._location_prior(bmb.Prior(name, **args), 1, "b")
    lp, _ = ml.location_prior(code[0], par[0], value)
    assert lp == pytest.approx(_pm_logp(name, args, value), abs=1e-8)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("HalfNormal", {"sigma": 5.0}),
        ("HalfStudentT", {"nu": 4.0, "sigma": 22.98}),
        ("HalfCauchy", {"beta": 2.5}),
        ("Exponential", {"lam": 0.3}),
        ("Gamma", {"alpha": 2.0, "beta": 0.5}),
        ("InverseGamma", {"alpha": 3.0, "beta": 4.0}),
    ],
)
def test_scale_priors_match_pymc_with_log_jacobian(name, args):
    import bambi as bmb

    code, par = marginal._scale_prior(bmb.Prior(name, **args), "s")
    t = 0.7
    lp, dlp = ml.scale_prior(code, par, t)
    assert lp == pytest.approx(_pm_logp(name, args, np.exp(t)) + t, abs=1e-8)
    eps = 1e-6
    fd = (ml.scale_prior(code, par, t + eps)[0] - ml.scale_prior(code, par, t - eps)[0]) / (2 * eps)
    assert dlp == pytest.approx(fd, rel=1e-6)


def test_priors_read_from_bambi_equal_the_pymc_model_bambi_builds(builtin):
    """Seam: the priors (incl. the centred intercept) are the ones Bambi's PyMC model has."""
    f, _, model, frame = _setup(MIXED, builtin.sample(frac=0.7, random_state=3))
    sp = marginal.spec(f, frame, model)
    pm_model = model.backend.model
    rng = np.random.default_rng(5)
    theta = marginal.initial_point(sp) + rng.uniform(-0.5, 0.5, sp.n_dim)
    p, K = sp.X.shape[1], len(sp.random)
    ours = sum(ml.location_prior(sp.bcode[a], sp.bpar[a], theta[a])[0] for a in range(p))
    ours += sum(ml.scale_prior(sp.scode[k], sp.spar[k], theta[p + k])[0] for k in range(K + 1))
    point = pm_model.initial_point()
    point[sp.intercept] = theta[0] + sp.shift  # Bambi's Intercept variable is the centred intercept
    for fx in sp.fixed:
        value = theta[fx.index]
        point[fx.name] = value if fx.dims else value[0]
    for k, r in enumerate(sp.random):
        point[f"{r.sigma_name}_log__"] = theta[p + k]
    point["sigma_log__"] = theta[-1]
    priors = [rv for rv in pm_model.free_RVs if not rv.name.endswith("_offset")]
    theirs = pm_model.compile_logp(vars=priors, jacobian=True)(point)
    assert ours == pytest.approx(float(theirs), rel=1e-10)


def test_supports_names_what_it_cannot_do(builtin):
    import bambi as bmb

    f, data, model, frame = _setup(LMER2, builtin)
    assert marginal.supports(f, frame, model) is None
    f2, _, model2, frame2 = _setup("testScore ~ bodyLength2 + (1 + bodyLength2|mountainRange)", builtin)
    assert marginal.supports(f2, frame2, model2) is None  # correlated blocks: LKJ on the correlation
    f3, _, model3, frame3 = _setup("testScore ~ bodyLength2", builtin)
    assert marginal.supports(f3, frame3, model3) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_model = bmb.Model("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)", data, family="t")
    assert "non-Gaussian family" in marginal.supports(f, frame, t_model)
    with pytest.raises(marginal.Unsupported):
        marginal.sample(t_model, frame, MARGINAL_OPTIONS, progress=False)


# ---------------------------------------------------------------------------------------
# Seams: Bambi's layout of the posterior, nutpie's compiled-model interface, seeding
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mixed_builtin(builtin):
    """A small marginal fit of a model with a factor fixed effect and a random slope."""
    f, _, model, frame = _setup(MIXED, builtin)
    tree = marginal.sample(model, frame, SamplerOptions(draws=200, tune=300, chains=2, seed=3), progress=False)
    return f, model, frame, tree


def test_log_likelihood_is_what_bambi_computes(mixed_builtin):
    f, model, _, tree = mixed_builtin
    theirs = tree.copy(deep=True)
    model.compute_log_likelihood(theirs)
    np.testing.assert_allclose(
        tree["log_likelihood"][f.response].values, theirs["log_likelihood"][f.response].values, rtol=1e-12
    )


def test_posterior_layout_is_bambis(mixed_builtin):
    f, model, _, tree = mixed_builtin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bambi_sample(model, SamplerOptions(draws=20, tune=20, chains=1, seed=1), progress=False)
    for group in ("posterior", "log_likelihood", "observed_data"):
        ours, theirs = tree[group].to_dataset(), ref[group].to_dataset()
        assert list(ours.data_vars) == list(theirs.data_vars), group
        for v in theirs.data_vars:
            assert ours[v].dims == theirs[v].dims, (group, v)
        for c in theirs.coords:
            if c not in ("chain", "draw"):
                np.testing.assert_array_equal(ours[c].values, theirs[c].values)
    for stat in ("diverging", "tree_depth", "reached_max_treedepth", "lp", "acceptance_rate", "step_size"):
        assert tree["sample_stats"][stat].dims == ("chain", "draw")
    np.testing.assert_array_equal(tree["observed_data"][f.response].values, ref["observed_data"][f.response])


def test_same_seed_same_draws_and_nutpie_fast_path_matches_public_interface(builtin):
    import nutpie

    f, _, model, frame = _setup(LMER2, builtin)
    opts = SamplerOptions(draws=100, tune=200, chains=2, seed=4)
    a = marginal.sample(model, frame, opts, progress=False)
    b = marginal.sample(model, frame, opts, progress=False)
    c = marginal.sample(model, frame, SamplerOptions(draws=100, tune=200, chains=2, seed=5), progress=False)
    for v in a["posterior"].data_vars:
        np.testing.assert_array_equal(a["posterior"][v].values, b["posterior"][v].values)
    assert not np.array_equal(a["posterior"]["sigma"].values, c["posterior"]["sigma"].values)

    # The fast path uses nutpie internals (CompiledPyMCModel + the C ABI of its logp/expand
    # functions); it must give exactly the draws of nutpie's public python-function interface.
    sp = marginal.spec(f, frame, model)
    stats = ml.sufficient_stats(sp.y - sp.shift, sp.X, list(sp.factors), len(sp.random))
    fast = marginal.compile_model(sp, stats, fast=True)
    slow = marginal.compile_model(sp, stats, fast=False)
    if nutpie.__version__.startswith(marginal.NUTPIE_TESTED):
        assert type(fast).__name__ == "CompiledPyMCModel", "fast path unavailable on a tested nutpie"
    # Short runs: the two paths agree to rounding (the C kernel is compiled with other array
    # layouts, so sums may associate differently), and NUTS amplifies rounding over many steps.
    kw = {"draws": 20, "tune": 20, "chains": 2, "seed": 9, "progress_bar": False, "save_warmup": False}
    x_fast = nutpie.sample(fast, **kw)["posterior"]["theta"].values
    x_slow = nutpie.sample(slow, **kw)["posterior"]["theta"].values
    np.testing.assert_allclose(x_fast, x_slow, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Real seeded fits: the Bambi engine and the marginal engine agree; lme4 agrees
# ---------------------------------------------------------------------------------------


def _unbalanced(df):
    """The tutorial data with 30% of rows dropped at random and two sites removed entirely."""
    rng = np.random.default_rng(2026)
    keep = rng.random(len(df)) > 0.3
    keep &= ~df["sample"].astype(str).isin(["Bavarian:c", "Julian:a"]).to_numpy()
    return df.loc[keep].reset_index(drop=True)


@pytest.fixture(scope="session")
def engine_fits(dragons):
    """Both engines on mixed.lmer2 (nested), mixed.WRONG (crossed), unbalanced mixed.lmer2."""
    designs = {"mixed.lmer2": (LMER2, dragons), "mixed.WRONG": (WRONG, dragons),
               "unbalanced": (LMER2, _unbalanced(dragons))}  # fmt: skip
    out = {}
    for name, (formula, df) in designs.items():
        _, _, model, frame = _setup(formula, df)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = bambi_sample(model, BAMBI_OPTIONS, progress=False)
        tree = marginal.sample(model, frame, MARGINAL_OPTIONS, progress=False)
        out[name] = (ref, tree)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed.lmer2", "mixed.WRONG", "unbalanced"])
def test_engines_agree_on_fixed_effects_and_sds(engine_fits, name):
    import arviz as az

    ref, tree = engine_fits[name]
    names = _scalars(tree)
    assert names == _scalars(ref)
    a = az.summary(ref, var_names=names)
    b = az.summary(tree, var_names=names)
    for v in names:
        tol = 4 * np.hypot(a.loc[v, "mcse_mean"], b.loc[v, "mcse_mean"])
        assert abs(a.loc[v, "mean"] - b.loc[v, "mean"]) < tol, f"{name} {v}: {a.loc[v, 'mean']} vs {b.loc[v, 'mean']}"
        tol_sd = 4 * np.hypot(a.loc[v, "mcse_sd"], b.loc[v, "mcse_sd"])
        assert abs(a.loc[v, "sd"] - b.loc[v, "sd"]) < tol_sd, f"{name} {v}: sd {a.loc[v, 'sd']} vs {b.loc[v, 'sd']}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed.lmer2", "mixed.WRONG", "unbalanced"])
def test_engines_agree_on_random_effect_draws(engine_fits, name):
    import arviz as az

    ref, tree = engine_fits[name]
    groups = [v for v in tree["posterior"].data_vars if tree["posterior"][v].ndim == 3]
    assert groups
    for v in groups:
        a = az.summary(ref, var_names=[v])
        b = az.summary(tree, var_names=[v])
        assert list(a.index) == list(b.index)
        tol = 4 * np.hypot(a["mcse_mean"], b["mcse_mean"])
        assert (abs(a["mean"] - b["mean"]) < tol).all(), f"{name} {v} means"
        tol_sd = 4 * np.hypot(a["mcse_sd"], b["mcse_sd"])
        assert (abs(a["sd"] - b["sd"]) < tol_sd).all(), f"{name} {v} sds"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed.lmer2", "mixed.WRONG", "unbalanced"])
def test_marginal_fit_is_clean(engine_fits, name):
    import arviz as az

    _, tree = engine_fits[name]
    assert int(tree["sample_stats"]["diverging"].sum()) == 0
    s = az.summary(tree, var_names=_scalars(tree))
    assert (s["r_hat"] <= 1.01).all()
    assert (s["ess_bulk"] >= 1000).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed.lmer2", "mixed.WRONG"])
def test_marginal_agrees_with_lme4(engine_fits, reference, name):
    # n = 480 and weak default priors: fixed effects within 0.25 posterior sd of the REML
    # estimate (Monte Carlo error ~0.02 sd); the posterior sd of a fixed effect is lme4's
    # SE widened by the uncertainty in the variances lme4 plugs in (8 ranges; 3 sites in
    # mixed.WRONG widen the intercept by half), never narrower than 0.9 SE.
    # Random-effect sds are skewed and prior-sensitive with 8 ranges: lme4's value must lie
    # in the central 95% interval; the residual sd (480 rows) within 0.5 posterior sd.
    _, tree = engine_fits[name]
    ref = reference[name]
    post = tree["posterior"]
    fixed = {classify(v)[2]: v for v in post.data_vars if classify(v)[0] == "fixed"}
    for term, value in ref["fixef"].items():
        draws = post[fixed[term]].values.ravel()
        assert abs(draws.mean() - value) < 0.25 * draws.std(), term
        assert 0.9 < draws.std() / ref["se"][term] < 2.0, term
    for group, sd in ref["sd"].items():
        draws = post[sd_variable(group, RESIDUAL_TERM if group == RESIDUAL else sd_term(INTERCEPT))].values.ravel()
        lo, hi = eti(draws, 0.95)
        assert lo < sd < hi, group
        if group == RESIDUAL:
            assert abs(draws.mean() - sd) < 0.5 * draws.std()
