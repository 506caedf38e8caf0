"""Numerical kernels of the GLMM engine: the joint log posterior of a binomial, Poisson or negative
binomial mixed model and its gradient, by hand, for NUTS.

Model (the fixed-effect design centred as Bambi centres it)::

    eta = offset + X b + Z u
    y_i ~ Binomial(n_i, logistic(eta_i))   or   y_i ~ Poisson(exp(eta_i))
        or   y_i ~ NegativeBinomial(mu = exp(eta_i), alpha)   (Var = mu + mu^2 / alpha, PyMC's)
    u_l ~ N(0, Sigma_t) per level l of a covariance block of type t, Sigma_t = diag(s) R diag(s)

The sampler's (unconstrained) parameters are ``theta = [b, log s_1..log s_K, y_1..y_C, v]`` (and
``log alpha`` last for the negative binomial, with its prior, :func:`logp_grad`): the
``y`` are the correlations' unconstrained values (:func:`marginal_lik.corr_cholesky`, LKJ prior),
``v`` (q values) the random effects, each level of each covariance block in one of two
parameterisations of the same posterior:

- non-centred (weight ``w = 0``, Bambi's): ``v_l = z_l ~ N(0, I)`` and ``u_l = diag(s) L z_l``
  (``R = L L'``);
- centred (``w = 1``): ``v_l = u_l + H_l b`` with density ``N(u_l; 0, Sigma)``, i.e.
  ``z_l = L^-1 (u_l / s)``, with the log-Jacobian ``-sum log s - sum log L_jj``; ``H_l b`` is the
  level's coefficient as the fixed effects give it (a random intercept's level: the intercept plus the
  effects of the covariates constant within the level; a random slope's: the slope), so that ``v_l``
  is the level's whole coefficient and those fixed effects no longer trade off against the effects
  (Gelfand, Sahu and Carlin's hierarchical centring);
- partially non-centred (a single coefficient, ``0 < w < 1``; Papaspiliopoulos, Roberts and Skold):
  ``u_l = s^(1 - w) v_l - w H_l b``, density ``N(u_l; 0, s^2) s^(1 - w)``; ``w = 0`` and ``w = 1`` are
  the two above.

All give the same posterior of ``(b, s, R, u)`` (each map is a change of variables with its Jacobian);
which one NUTS explores best depends on how much the data say about the level (``glmm.centring``).

The log density includes every constant (PyMC's: ``log C(n, y)``, ``-log y!``, ``-log(2 pi) / 2`` per
effect), so with every level non-centred it equals the PyMC model's ``logp`` at the same point.  One
pass over the rows per evaluation: eta, the log-likelihood and its derivative in eta, accumulated into
the fixed effects' and the effects' gradients.  The negative binomial's ``log Gamma(y + alpha) -
log Gamma(alpha)`` depends on alpha and the count only, so it is summed once per distinct count
(``uy``, with ``un`` rows each), not per row.

As in :mod:`bayeslmm.engines.marginal_lik`, everything is a numba function cached across processes,
and nutpie calls the C entry point :func:`c_logp` on a packed buffer (:func:`pack`) from its own
threads, without Python.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from bayeslmm.engines import marginal_lik as ml

#: Families (response distribution and link).
BINOMIAL_LOGIT, POISSON_LOG, NEGBIN_LOG = 0, 1, 2
#: PyMC's NegativeBinomial is its Poisson limit above this alpha (``binomln`` loses its digits there).
NB_POISSON_ALPHA = 1e10
#: Above this alpha, ``log Gamma(y + alpha) - log Gamma(alpha)`` is taken from Stirling's series (:func:`log_rising`).
NB_STIRLING_ALPHA = 1e5

_LOG_2PI = math.log(2.0 * math.pi)
_JIT = ml._JIT
#: For exp and log1p: no reassociation (it would undo Cody-Waite's two-part ln 2, 100 ulp at |x| ~ 700)
_JIT_ACCURATE = {**_JIT, "fastmath": {"contract", "nsz"}}


# exp and log1p as loops LLVM vectorises (no calls into libm): Cody-Waite reduction and a degree-13
# Taylor polynomial for exp (|r| <= ln 2 / 2: truncation below 1e-17, measured error <= 3 ulp);
# log1p(e) = 2 atanh(e / (2 + e)) by its series for 0 <= e <= 1 (17 terms: truncation below 1e-17).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
#: Largest eta whose exp is finite; beyond it the Poisson density is -inf.
EXP_MAX = 709.0


@nb.njit(**_JIT_ACCURATE)
def exp_array(x, out, bits):
    """``out = exp(x)`` elementwise for ``x`` in [-708, 709] (clamped below: exp(-708) ~ 3e-308), vectorised.

    ``bits`` is int64 work space of ``x``'s size (``2^k`` is built from its exponent bits).
    """
    for i in range(x.size):
        xi = min(max(x[i], -708.0), EXP_MAX)
        k = math.floor(xi * _INV_LN2 + 0.5)
        r = (xi - k * _LN2_HI) - k * _LN2_LO
        q = 1.0 / 6227020800.0
        q = 1.0 / 479001600.0 + r * q
        q = 1.0 / 39916800.0 + r * q
        q = 1.0 / 3628800.0 + r * q
        q = 1.0 / 362880.0 + r * q
        q = 1.0 / 40320.0 + r * q
        q = 1.0 / 5040.0 + r * q
        q = 1.0 / 720.0 + r * q
        q = 1.0 / 120.0 + r * q
        q = 1.0 / 24.0 + r * q
        q = 1.0 / 6.0 + r * q
        q = 0.5 + r * q
        q = 1.0 + r * q
        out[i] = 1.0 + r * q
        bits[i] = (np.int64(k) + 1023) << 52
    scale = bits.view(np.float64)
    for i in range(x.size):
        out[i] *= scale[i]


@nb.njit(**_JIT_ACCURATE)
def _log1p_unit(e):
    """``log(1 + e)`` for ``0 <= e <= 1``: ``2 atanh(s)``, ``s = e / (2 + e) <= 1/3``, by its series."""
    s = e / (2.0 + e)
    t = s * s
    q = 1.0 / 35.0
    q = 1.0 / 33.0 + t * q
    q = 1.0 / 31.0 + t * q
    q = 1.0 / 29.0 + t * q
    q = 1.0 / 27.0 + t * q
    q = 1.0 / 25.0 + t * q
    q = 1.0 / 23.0 + t * q
    q = 1.0 / 21.0 + t * q
    q = 1.0 / 19.0 + t * q
    q = 1.0 / 17.0 + t * q
    q = 1.0 / 15.0 + t * q
    q = 1.0 / 13.0 + t * q
    q = 1.0 / 11.0 + t * q
    q = 1.0 / 9.0 + t * q
    q = 1.0 / 7.0 + t * q
    q = 1.0 / 5.0 + t * q
    q = 1.0 / 3.0 + t * q
    q = 1.0 + t * q
    return 2.0 * s * q


@nb.njit(**_JIT)
def _binomial_rows(eta, e, y, trials, g):
    """``sum y eta - n (max(eta, 0) + log1p(e))`` with ``e = exp(-|eta|)``; ``g = y - n logistic(eta)``."""
    lp = 0.0
    for i in range(eta.size):
        et = eta[i]
        ei = e[i]
        r = 1.0 / (1.0 + ei)
        pos = et > 0.0
        lp += y[i] * et - trials[i] * ((et if pos else 0.0) + _log1p_unit(ei))
        g[i] = y[i] - trials[i] * (r if pos else ei * r)
    return lp


@nb.njit(**_JIT)
def _poisson_rows(eta, mu, y, g):
    """``sum y eta - mu`` with ``mu = exp(eta)``; ``g = y - mu``."""
    lp = 0.0
    for i in range(eta.size):
        lp += y[i] * eta[i] - mu[i]
        g[i] = y[i] - mu[i]
    return lp


@nb.njit(**_JIT)
def _negbin_rows(x, e, y, a, g):
    """``sum y x - (y + a) softplus(x)`` with ``x = eta - log a``, ``e = exp(-|x|)``; ``g = y - (y + a) logistic(x)``
    (the derivative in eta); returns the sum and ``sum softplus(x)`` (for the derivative in alpha)."""
    lp = 0.0
    sp = 0.0
    for i in range(x.size):
        xi = x[i]
        ei = e[i]
        r = 1.0 / (1.0 + ei)
        pos = xi > 0.0
        soft = (xi if pos else 0.0) + _log1p_unit(ei)
        n = y[i] + a
        lp += y[i] * xi - n * soft
        sp += soft
        g[i] = y[i] - n * (r if pos else ei * r)
    return lp, sp


@nb.njit(cache=True, nogil=True, error_model="numpy")
def digamma(x):
    """The digamma function for ``x > 0``: the recurrence up to 10, then its asymptotic series (rounding error)."""
    acc = 0.0
    while x < 10.0:
        acc -= 1.0 / x
        x += 1.0
    inv2 = 1.0 / (x * x)
    series = inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 * (
        1.0 / 132 - inv2 * (691.0 / 32760 - inv2 / 12.0))))))
    return acc + math.log(x) - 0.5 / x - series


@nb.njit(cache=True, nogil=True, error_model="numpy")
def log_rising(a, y):
    """``log Gamma(a + y) - log Gamma(a)`` and its derivative in ``a``: lgamma and digamma up to
    :data:`NB_STIRLING_ALPHA`, Stirling's series above it (no difference of two huge numbers)."""
    if a < NB_STIRLING_ALPHA:
        return math.lgamma(a + y) - math.lgamma(a), digamma(a + y) - digamma(a)
    ay = a + y
    value = (a - 0.5) * math.log1p(y / a) + y * math.log(ay) - y + (1.0 / ay - 1.0 / a) / 12.0
    return value, math.log1p(y / a) + 0.5 * y / (a * ay) - (1.0 / (ay * ay) - 1.0 / (a * a)) / 12.0


@nb.njit(**_JIT)
def _neg_abs(x, out):
    for i in range(x.size):
        out[i] = -abs(x[i])


@nb.njit(**_JIT)
def data_term(family, XT, y, trials, offset, colsT, valsT, b, u, gb, gu, log_alpha, uy, un, ga):
    """Log-likelihood of every row (without constants) at ``b``, ``u``; its gradient added to ``gb``, ``gu``.

    ``XT`` (p, n), ``colsT``/``valsT`` (K, n): stored by row so that each pass is a loop over the rows
    that LLVM vectorises (separate arrays in and out: it cannot prove in-place loops safe).
    Returns ``-inf`` where a Poisson mean overflows. The negative binomial (``log_alpha``; distinct counts
    ``uy`` with ``un`` rows each) adds its derivative in ``log alpha`` to ``ga[0]``.
    """
    p, n = XT.shape
    Kc = colsT.shape[0]
    eta = offset.copy()
    for a in range(p):
        ba = b[a]
        xa = XT[a]
        for i in range(n):
            eta[i] += xa[i] * ba
    for k in range(Kc):
        ck = colsT[k]
        vk = valsT[k]
        for i in range(n):
            eta[i] += vk[i] * u[ck[i]]
    e = np.empty(n)
    g = np.empty(n)
    bits = np.empty(n, dtype=np.int64)
    alpha = math.exp(log_alpha)
    if family == BINOMIAL_LOGIT:
        x = np.empty(n)
        _neg_abs(eta, x)
        exp_array(x, e, bits)
        lp = _binomial_rows(eta, e, y, trials, g)
    elif family == NEGBIN_LOG and alpha <= NB_POISSON_ALPHA:
        x = np.empty(n)
        for i in range(n):
            x[i] = eta[i] - log_alpha
        ax = np.empty(n)
        _neg_abs(x, ax)
        exp_array(ax, e, bits)
        lp, soft = _negbin_rows(x, e, y, alpha, g)
        dg = 0.0
        for i in range(n):
            dg += g[i]
        dl = 0.0
        for j in range(uy.size):
            v, d = log_rising(alpha, uy[j])
            lp += un[j] * v
            dl += un[j] * d
        ga[0] += -dg - alpha * soft + alpha * dl
    else:
        top = -np.inf
        for i in range(n):
            top = max(top, eta[i])
        if not top < EXP_MAX:
            return -np.inf
        exp_array(eta, e, bits)
        lp = _poisson_rows(eta, e, y, g)
    for a in range(p):
        xa = XT[a]
        acc = 0.0
        for i in range(n):
            acc += g[i] * xa[i]
        gb[a] += acc
    for k in range(Kc):
        ck = colsT[k]
        vk = valsT[k]
        for i in range(n):
            gu[ck[i]] += g[i] * vk[i]
    return lp


@nb.njit(**_JIT)
def row_loglik(family, y, trials, eta, alpha):
    """Log-likelihood of one row without its constant (the pointwise log-likelihood's)."""
    if family == BINOMIAL_LOGIT:
        return y * eta - trials * (max(eta, 0.0) + math.log1p(math.exp(-abs(eta))))
    if family == NEGBIN_LOG and alpha <= NB_POISSON_ALPHA:
        x = eta - math.log(alpha)
        return y * x - (y + alpha) * (max(x, 0.0) + math.log1p(math.exp(-abs(x)))) + log_rising(alpha, y)[0]
    return y * eta - math.exp(eta)


def distinct_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``y`` and how many rows have each (the negative binomial's gamma terms)."""
    uy, un = np.unique(np.asarray(y, dtype=float), return_counts=True)
    return uy, un.astype(float)


def constants(family: int, y: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Each row's log-likelihood constant: ``log C(n, y)`` (binomial) or ``-log y!`` (Poisson, negative binomial)."""
    from scipy.special import gammaln

    if family == BINOMIAL_LOGIT:
        return gammaln(trials + 1.0) - gammaln(y + 1.0) - gammaln(trials - y + 1.0)
    return -gammaln(y + 1.0)


@nb.njit(**_JIT)
def logp_grad(theta, grad, family, XT, y, trials, offset, colsT, valsT, const, tsize, tcomp, tcor, teta, icol, itype,
              weight, H, bcode, bpar, scode, spar, uy, un, acode, apar):  # fmt: skip
    """Log posterior at ``theta``; its gradient into ``grad``.

    ``XT`` (p, n) internal design; ``y``, ``trials``, ``offset`` (n,); ``colsT``/``valsT`` (K, n) each
    row's effect column and value per component; ``const`` the sum of the rows' constants; block types
    (``tsize``, ``tcomp``, ``tcor``, ``teta``) and instances (``icol``, ``itype``) as
    :class:`marginal_lik.Layout`, ``weight`` (M,) each instance's centring weight (0 or 1 for a block of
    several coefficients), ``H`` (q, p) the fixed effects' part of each effect's whole coefficient
    (zeros: none); ``bcode/bpar`` one
    location prior per coefficient, ``scode/spar`` one scale prior per standard deviation. The negative
    binomial's ``log alpha`` is ``theta``'s last value, with the scale prior ``acode/apar`` on alpha;
    ``uy``/``un`` the distinct counts and their numbers of rows (:func:`distinct_counts`).
    Returns ``-inf`` (gradient zero) where a correlation matrix is singular.
    """
    p = XT.shape[0]
    K = scode.size
    T = tsize.size
    kmax = tcomp.shape[1]
    C = 0
    for t in range(T):
        if tcor[t] >= 0:
            C += tsize[t] * (tsize[t] - 1) // 2
    n_aux = 1 if family == NEGBIN_LOG else 0
    q = theta.size - p - K - C - n_aux
    off_y = p + K
    off_v = off_y + C
    for a in range(grad.size):
        grad[a] = 0.0
    lp = const
    log_alpha = 0.0
    if n_aux:  # the negative binomial's alpha, its prior with the log transform's Jacobian
        log_alpha = theta[theta.size - 1]
        v, d = ml.scale_prior(acode, apar, log_alpha)
        lp += v
        grad[theta.size - 1] = d

    # priors of the coefficients and the sds (with the log transform's Jacobian)
    for a in range(p):
        v, d = ml.location_prior(bcode[a], bpar[a], theta[a])
        lp += v
        grad[a] = d
    s = np.empty(K)
    for k in range(K):
        v, d = ml.scale_prior(scode[k], spar[k], theta[p + k])
        lp += v
        grad[p + k] = d
        s[k] = math.exp(theta[p + k])

    # correlation matrices: Cholesky factor of each correlated type, LKJ prior and Jacobian
    nc_max = max(kmax * (kmax - 1) // 2, 1)
    Lc = np.zeros((T, kmax, kmax))
    dLc = np.zeros((T, nc_max, kmax, kmax))
    for t in range(T):
        k = tsize[t]
        if tcor[t] < 0:
            for a in range(k):
                Lc[t, a, a] = 1.0
            continue
        o = tcor[t]
        nc = k * (k - 1) // 2
        cy = off_y + o
        lp += ml.corr_cholesky(theta[cy : cy + nc], k, teta[t], Lc[t], dLc[t], grad[cy : cy + nc])
        for a in range(k):
            if not Lc[t, a, a] > 1e-150:
                for b in range(grad.size):
                    grad[b] = 0.0
                return -np.inf

    # the effects u from v, and the prior of v
    u = np.empty(q)
    z = np.empty(kmax)
    r = np.empty(kmax)
    lp -= 0.5 * q * _LOG_2PI
    pu = np.empty(q)  # a single coefficient's prior's d/du, s^(1 - w), H b
    cu = np.empty(q)
    hb = np.empty(q)
    for m in range(icol.size):
        t = itype[m]
        k = tsize[t]
        c0 = icol[m]
        w = weight[m]
        if k == 1:  # u = s^(1-w) v - w H b, density N(u; 0, s^2) s^(1-w)
            j0 = tcomp[t, 0]
            tj = theta[p + j0]
            if w == 0.0:
                c = s[j0]
            elif w == 1.0:
                c = 1.0
            else:
                c = math.exp((1.0 - w) * tj)
            acc = 0.0
            if w != 0.0:
                for j in range(p):
                    acc += H[c0, j] * theta[j]
            uu = c * theta[off_v + c0] - w * acc
            u[c0] = uu
            zz = uu / s[j0]
            lp -= 0.5 * zz * zz + w * tj
            pu[c0] = -zz / s[j0]
            cu[c0] = c
            hb[c0] = acc
            grad[p + j0] += zz * zz - w  # d/dlog s at fixed u
            continue
        L = Lc[t]
        vm = theta[off_v + c0 : off_v + c0 + k]
        if w == 0.0:  # u = diag(s) L z, z ~ N(0, I)
            for a in range(k):
                acc = 0.0
                for b in range(a + 1):
                    acc += L[a, b] * vm[b]
                u[c0 + a] = s[tcomp[t, a]] * acc
                lp -= 0.5 * vm[a] * vm[a]
                grad[off_v + c0 + a] = -vm[a]
            continue
        # centred: u = v - H b, z = L^-1 (u / s); density N(z; 0, I) / (prod s prod L_aa)
        for a in range(k):
            acc = vm[a]
            for j in range(p):
                acc -= H[c0 + a, j] * theta[j]
            u[c0 + a] = acc
            acc = acc / s[tcomp[t, a]]
            for b in range(a):
                acc -= L[a, b] * z[b]
            z[a] = acc / L[a, a]
            lp -= 0.5 * z[a] * z[a] + theta[p + tcomp[t, a]] + math.log(L[a, a])
        for a in range(k - 1, -1, -1):  # r = L'^-1 z
            acc = z[a]
            for b in range(a + 1, k):
                acc -= L[b, a] * r[b]
            r[a] = acc / L[a, a]
        for a in range(k):
            sa = s[tcomp[t, a]]
            grad[off_v + c0 + a] = -r[a] / sa
            grad[p + tcomp[t, a]] += r[a] * u[c0 + a] / sa - 1.0
        if tcor[t] >= 0:
            o = tcor[t]
            for c in range(k * (k - 1) // 2):
                dL = dLc[t, c]
                acc = 0.0
                for a in range(k):
                    w = 0.0
                    for b in range(a + 1):
                        w += dL[a, b] * z[b]
                    acc += r[a] * w - dL[a, a] / L[a, a]
                grad[off_y + o + c] += acc

    # the data
    gu = np.zeros(q)
    ga = np.zeros(1)
    ll = data_term(family, XT, y, trials, offset, colsT, valsT, theta[:p], u, grad[:p], gu, log_alpha, uy, un, ga)
    if not ll > -np.inf:
        for b in range(grad.size):
            grad[b] = 0.0
        return -np.inf
    lp += ll
    if n_aux:
        grad[theta.size - 1] += ga[0]

    # back from u to v, the sds and the correlations
    for m in range(icol.size):
        t = itype[m]
        k = tsize[t]
        c0 = icol[m]
        w = weight[m]
        if k == 1:  # d/dv = s^(1-w) d/du, d/db = -w H d/du, d/dlog s += (1-w) (u + w H b) d/du
            gt = gu[c0] + pu[c0]
            grad[off_v + c0] = gt * cu[c0]
            if w != 0.0:
                for j in range(p):
                    grad[j] -= w * H[c0, j] * gt
            if w != 1.0:
                grad[p + tcomp[t, 0]] += gt * (1.0 - w) * (u[c0] + w * hb[c0])
            continue
        if w != 0.0:  # d/dv = d/du; d/db = -H' d/du
            for a in range(k):
                gv = grad[off_v + c0 + a] + gu[c0 + a]
                grad[off_v + c0 + a] = gv
                for j in range(p):
                    grad[j] -= H[c0 + a, j] * gv
            continue
        L = Lc[t]
        vm = theta[off_v + c0 : off_v + c0 + k]
        for a in range(k):  # w = diag(s) gu; d/dz = L' w; d/dlog s_a = gu_a u_a
            z[a] = s[tcomp[t, a]] * gu[c0 + a]
            grad[p + tcomp[t, a]] += gu[c0 + a] * u[c0 + a]
        for b in range(k):
            acc = 0.0
            for a in range(b, k):
                acc += L[a, b] * z[a]
            grad[off_v + c0 + b] += acc
        if tcor[t] >= 0:
            o = tcor[t]
            for c in range(k * (k - 1) // 2):
                dL = dLc[t, c]
                acc = 0.0
                for a in range(k):
                    w = 0.0
                    for b in range(a + 1):
                        w += dL[a, b] * vm[b]
                    acc += z[a] * w
                grad[off_y + o + c] += acc
    return lp


@nb.njit(cache=True, nogil=True, error_model="numpy")
def pointwise_loglik(family, X, y, trials, offset, cols, vals, row_const, beta, u, alpha, rows_from, out):
    """Each draw's log-likelihood of rows ``rows_from ...`` into ``out`` (draws, rows), constants included.

    ``beta`` (S, p) internal coefficients, ``u`` (S, q) effects in the layout's columns, ``alpha`` (S,)
    the negative binomial's (unused for other families).
    """
    S = beta.shape[0]
    m = out.shape[1]
    p = X.shape[1]
    Kc = cols.shape[1]
    for s_ in range(S):
        b = beta[s_]
        us = u[s_]
        for j in range(m):
            i = rows_from + j
            eta = offset[i]
            for a in range(p):
                eta += X[i, a] * b[a]
            for k in range(Kc):
                eta += vals[i, k] * us[cols[i, k]]
            out[s_, j] = row_loglik(family, y[i], trials[i], eta, alpha[s_]) + row_const[i]


@nb.njit(cache=True, nogil=True)
def effects(theta, p, K, C, tsize, tcomp, tcor, teta, icol, itype, weight, H, out):
    """The effects ``u`` (S, q) of draws ``theta`` (S, dim) into ``out``, and the correlation factors.

    Returns ``Lc`` (S, T, kmax, kmax): each draw's Cholesky factor of each type's correlation matrix.
    """
    S = theta.shape[0]
    T = tsize.size
    kmax = tcomp.shape[1]
    nc_max = max(kmax * (kmax - 1) // 2, 1)
    Lc = np.zeros((S, T, kmax, kmax))
    dL = np.zeros((nc_max, kmax, kmax))
    dlp = np.zeros(nc_max)
    off_v = p + K + C
    for s_ in range(S):
        th = theta[s_]
        for t in range(T):
            k = tsize[t]
            if tcor[t] < 0:
                for a in range(k):
                    Lc[s_, t, a, a] = 1.0
                continue
            o = p + K + tcor[t]
            ml.corr_cholesky(th[o : o + k * (k - 1) // 2], k, teta[t], Lc[s_, t], dL, dlp)
        for m in range(icol.size):
            t = itype[m]
            k = tsize[t]
            c0 = icol[m]
            w = weight[m]
            if k == 1:
                acc = 0.0
                for j in range(p):
                    acc += H[c0, j] * th[j]
                out[s_, c0] = math.exp((1.0 - w) * th[p + tcomp[t, 0]]) * th[off_v + c0] - w * acc
                continue
            for a in range(k):
                if w != 0.0:
                    acc = th[off_v + c0 + a]
                    for j in range(p):
                        acc -= H[c0 + a, j] * th[j]
                    out[s_, c0 + a] = acc
                    continue
                acc = 0.0
                for b in range(a + 1):
                    acc += Lc[s_, t, a, b] * th[off_v + c0 + b]
                out[s_, c0 + a] = math.exp(th[p + tcomp[t, a]]) * acc
    return Lc


# ---------------------------------------------------------------------------------------
# C entry point for nutpie's compiled-model interface
# ---------------------------------------------------------------------------------------

#: Order of the arrays in the packed buffer (integer arrays stored as their int64 bit patterns).
_ARRAYS = ("scalars", "XT", "y", "trials", "offset", "colsT", "valsT", "tsize", "tcomp", "tcor", "teta", "icol",
           "itype", "weight", "H", "bcode", "bpar", "scode", "spar", "uy", "un", "apar")  # fmt: skip
_HEADER = 2 + 2 * len(_ARRAYS)  # total length, number of arrays, (offset, length) of each


def pack(arrays: dict) -> np.ndarray:
    """The kernel's inputs in one float64 buffer for :func:`c_logp`.

    ``arrays`` maps each name of ``_ARRAYS`` to its array; ``scalars`` is ``[family, n, p, K, C,
    kmax, const, q, acode]``.
    """
    parts = []
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        parts.append((a.astype(np.int64) if a.dtype.kind in "iub" else a.astype(np.float64)).ravel().view(np.float64))
    header = np.zeros(_HEADER)
    header[1] = len(parts)
    at = _HEADER
    for j, part in enumerate(parts):
        header[2 + 2 * j] = at
        header[3 + 2 * j] = part.size
        at += part.size
    header[0] = at
    return np.ascontiguousarray(np.concatenate([header, *parts]))


@nb.njit(cache=True)
def _part(buf, j):
    o = int(buf[2 + 2 * j])
    return buf[o : o + int(buf[3 + 2 * j])]


@nb.njit(cache=True)
def _unpack(buf):
    sc = _part(buf, 0)
    family, n, p, K, kmax = int(sc[0]), int(sc[1]), int(sc[2]), int(sc[3]), int(sc[5])
    const = sc[6]
    XT = _part(buf, 1).reshape((p, n))
    y = _part(buf, 2)
    trials = _part(buf, 3)
    offset = _part(buf, 4)
    Kc = _part(buf, 5).size // max(n, 1)
    colsT = _part(buf, 5).view(np.int64).reshape((Kc, n))
    valsT = _part(buf, 6).reshape((Kc, n))
    tsize = _part(buf, 7).view(np.int64)
    tcomp = _part(buf, 8).view(np.int64).reshape((tsize.size, kmax))
    tcor = _part(buf, 9).view(np.int64)
    teta = _part(buf, 10)
    icol = _part(buf, 11).view(np.int64)
    itype = _part(buf, 12).view(np.int64)
    weight = _part(buf, 13)
    q = int(sc[7])
    H = _part(buf, 14).reshape((q, p))
    bcode = _part(buf, 15).view(np.int64)
    bpar = _part(buf, 16).reshape((p, 3))
    scode = _part(buf, 17).view(np.int64)
    spar = _part(buf, 18).reshape((K, 3))
    uy = _part(buf, 19)
    un = _part(buf, 20)
    apar = _part(buf, 21)
    acode = int(sc[8])
    return (family, XT, y, trials, offset, colsT, valsT, const, tsize, tcomp, tcor, teta, icol, itype, weight, H,
            bcode, bpar, scode, spar, uy, un, acode, apar)  # fmt: skip


@nb.cfunc(ml._LOGP_SIG, cache=True, error_model="numpy")
def c_logp(dim, x_, out_, logp_, data_):
    """nutpie's C log-density ABI: 0 on success, a positive (recoverable) code otherwise."""
    total = int(nb.carray(data_, (1,), np.float64)[0])
    buf = nb.carray(data_, (total,), np.float64)
    x = nb.carray(x_, (dim,))
    out = nb.carray(out_, (dim,))
    logp = nb.carray(logp_, (1,))
    (family, XT, y, trials, offset, colsT, valsT, const, tsize, tcomp, tcor, teta, icol, itype, weight, H,
     bcode, bpar, scode, spar, uy, un, acode, apar) = _unpack(buf)  # fmt: skip
    sc = _part(buf, 0)
    if dim != int(sc[2]) + int(sc[3]) + int(sc[4]) + int(sc[7]) + (1 if family == NEGBIN_LOG else 0):
        return -1
    val = logp_grad(x, out, family, XT, y, trials, offset, colsT, valsT, const, tsize, tcomp, tcor, teta, icol,
                    itype, weight, H, bcode, bpar, scode, spar, uy, un, acode, apar)  # fmt: skip
    logp[0] = val
    if not math.isfinite(val):
        return 4
    for i in range(dim):
        if not math.isfinite(out[i]):
            return 3
    return 0
