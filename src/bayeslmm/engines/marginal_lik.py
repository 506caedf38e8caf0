"""Numerical kernels of the marginal engine: Gaussian mixed-model likelihood with the
random effects integrated out, its gradient, and exact conditional draws of the effects.

Model (after the fixed-effect design has been centred as Bambi centres it)::

    y = X b + Z u + e,   u ~ N(0, D),   D = diag(s_c(i)^2),   e ~ N(0, sigma^2 I)

so that ``y ~ N(X b, V)`` with ``V = sigma^2 I + Z D Z'``.  Everything is computed from
sufficient statistics (``X'X, X'y, y'y, Z'Z, Z'X, Z'y``), so after one pass over the rows
the cost of a density evaluation does not depend on the number of rows.  With
``A = Z'Z + sigma^2 D^-1 = L L'`` (sparse Cholesky with a fixed symbolic pattern, lme4's
linear algebra) and ``r = y - X b``, ``w = Z'r``, ``u_hat = A^-1 w``:

    log|V|     = (n - q) log sigma^2 + sum_i log d_i + log|A|
    r'V^-1 r   = (r'r - w'u_hat) / sigma^2
    u | y, ... ~ N(u_hat, sigma^2 A^-1)

The gradient needs ``diag(A^-1)``, which the selected inverse (Takahashi's equations on
the pattern of ``L``) gives at the cost of the factorisation.  Parameters on the
sampler's (unconstrained) scale are ``theta = [b, log s_1..log s_K, log sigma]``.

All kernels are numba functions compiled with ``cache=True``: the first process compiles
them once (about 6 s on the project's machine), later processes load the machine code from
the cache (``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``).  The nested designs of
lme4's tutorials factor with no fill-in at all; crossed designs fill in the smaller factor,
which the kernels then treat as a dense trailing block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)

# Prior families (codes shared with bayeslmm.engines.marginal).  Location priors act on a
# fixed-effect coefficient; scale priors act on a standard deviation s = exp(theta),
# with the log-Jacobian of that transform (theta) added, as PyMC's log transform does.
NORMAL, STUDENT_T = 0, 1
HALF_NORMAL, HALF_STUDENT_T, HALF_CAUCHY, EXPONENTIAL, GAMMA, INVERSE_GAMMA = 10, 11, 12, 13, 14, 15

#: fastmath without "nnan"/"ninf": the kernels test for NaN and inf (not positive definite, overflow)
_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"reassoc", "contract", "arcp", "nsz"}}


# ---------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def location_prior(code, par, x):
    """Log density and its derivative of a location prior at ``x``.

    ``par``: Normal (mu, sigma, -); StudentT (mu, sigma, nu).
    """
    mu, sd = par[0], par[1]
    z = (x - mu) / sd
    if code == NORMAL:
        return -0.5 * z * z - math.log(sd) - 0.5 * _LOG_2PI, -z / sd
    nu = par[2]
    lp = (
        math.lgamma(0.5 * (nu + 1.0))
        - math.lgamma(0.5 * nu)
        - 0.5 * math.log(nu * math.pi)
        - math.log(sd)
        - 0.5 * (nu + 1.0) * math.log1p(z * z / nu)
    )
    return lp, -(nu + 1.0) * z / (sd * (nu + z * z))


@nb.njit(**_JIT)
def scale_prior(code, par, t):
    """Log density (plus log-Jacobian) and derivative in ``t`` of a prior on ``s = exp(t)``.

    ``par``: HalfNormal (sigma); HalfStudentT (sigma, nu); HalfCauchy (beta);
    Exponential (lam); Gamma (alpha, beta); InverseGamma (alpha, beta).
    """
    s = math.exp(t)
    if code == HALF_NORMAL:
        sd = par[0]
        lp = 0.5 * math.log(2.0 / math.pi) - math.log(sd) - 0.5 * (s / sd) ** 2
        dlds = -s / (sd * sd)
    elif code == HALF_STUDENT_T:
        sd, nu = par[0], par[1]
        lp = (
            math.log(2.0)
            + math.lgamma(0.5 * (nu + 1.0))
            - math.lgamma(0.5 * nu)
            - 0.5 * math.log(nu * math.pi)
            - math.log(sd)
            - 0.5 * (nu + 1.0) * math.log1p(s * s / (nu * sd * sd))
        )
        dlds = -(nu + 1.0) * s / (nu * sd * sd + s * s)
    elif code == HALF_CAUCHY:
        b = par[0]
        lp = math.log(2.0 / math.pi) - math.log(b) - math.log1p((s / b) ** 2)
        dlds = -2.0 * s / (b * b + s * s)
    elif code == EXPONENTIAL:
        lam = par[0]
        lp = math.log(lam) - lam * s
        dlds = -lam
    elif code == GAMMA:
        a, b = par[0], par[1]
        lp = a * math.log(b) - math.lgamma(a) + (a - 1.0) * t - b * s
        dlds = (a - 1.0) / s - b
    else:  # INVERSE_GAMMA
        a, b = par[0], par[1]
        lp = a * math.log(b) - math.lgamma(a) - (a + 1.0) * t - b / s
        dlds = -(a + 1.0) / s + b / (s * s)
    return lp + t, dlds * s + 1.0


# ---------------------------------------------------------------------------------------
# Sparse Cholesky with a fixed pattern (left-looking), solves, selected inverse
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def factor(Lp, Li, Ax, Rp, Rk, Rpos, diag_add, Lx, pos):
    """Numeric Cholesky ``A = L L'`` into ``Lx`` on the precomputed pattern (``Lp``, ``Li``).

    ``Ax`` holds the lower triangle of ``Z'Z`` on the pattern of ``L`` (zeros at fill-in),
    ``diag_add`` what is added to the diagonal; ``(Rp, Rk, Rpos)`` lists, for each row
    ``j``, the columns ``k < j`` with ``L[j, k] != 0`` and the position of that entry.
    ``pos`` is integer work space of length ``q``.  Returns ``False`` if ``A`` is not
    numerically positive definite.
    """
    q = Lp.size - 1
    for p in range(Lx.size):
        Lx[p] = Ax[p]
    for j in range(q):
        start, end = Lp[j], Lp[j + 1]
        if Rp[j] < Rp[j + 1]:
            for p in range(start, end):
                pos[Li[p]] = p
        Lx[start] += diag_add[j]
        # rows j, j+1, ..., contiguous (a filled-in block): updates are plain axpys
        full = Li[end - 1] - j == end - 1 - start
        for r in range(Rp[j], Rp[j + 1]):
            k = Rk[r]
            pjk = Rpos[r]
            ljk = Lx[pjk]
            kend = Lp[k + 1]
            if full and Li[kend - 1] - j == kend - 1 - pjk:
                src = Lx[pjk:kend]
                dst = Lx[start : start + kend - pjk]
                for i in range(kend - pjk):
                    dst[i] -= src[i] * ljk
                continue
            for p in range(pjk, kend):
                Lx[pos[Li[p]]] -= Lx[p] * ljk
        d = Lx[start]
        if not d > 0.0 or not math.isfinite(d):
            return False
        d = math.sqrt(d)
        Lx[start] = d
        inv = 1.0 / d
        for p in range(start + 1, end):
            Lx[p] *= inv
    return True


@nb.njit(**_JIT)
def lsolve(Lp, Li, Lx, b):
    """Solve ``L x = b`` in place."""
    q = Lp.size - 1
    for j in range(q):
        bj = b[j] / Lx[Lp[j]]
        b[j] = bj
        for p in range(Lp[j] + 1, Lp[j + 1]):
            b[Li[p]] -= Lx[p] * bj


@nb.njit(**_JIT)
def ltsolve(Lp, Li, Lx, b):
    """Solve ``L' x = b`` in place."""
    q = Lp.size - 1
    for j in range(q - 1, -1, -1):
        s = b[j]
        for p in range(Lp[j] + 1, Lp[j + 1]):
            s -= Lx[p] * b[Li[p]]
        b[j] = s / Lx[Lp[j]]


@nb.njit(**_JIT)
def selected_inverse(Lp, Li, Lx, Sx, dense, acc):
    """Entries of ``A^-1`` on the pattern of ``L`` (Takahashi's equations) into ``Sx``.

    The diagonal of ``A^-1`` is ``Sx[Lp[:-1]]``.  ``dense`` and ``acc`` are float work
    space of length ``q``.  For column ``j`` with pattern ``S`` (rows below the diagonal)
    ``Z[i, j] = -sum_{k in S} L[k, j] Z[k, i] / L[j, j]``; every ``Z[k, i]`` needed lies in
    column ``min(k, i)`` (the pattern of a column is a clique of the filled graph), so each
    such column is scattered once into ``dense`` instead of searching for single entries.
    """
    q = Lp.size - 1
    # trailing block of columns whose pattern is full (crossed factors fill the smaller one
    # in): once done, it is kept as a dense matrix for the columns that only reach into it
    t0 = q - 1
    while t0 > 0 and Lp[t0] - Lp[t0 - 1] == q - t0 + 1:
        t0 -= 1
    nt = q - t0
    block = np.empty((nt, nt)) if nt >= 8 else np.empty((0, 0))
    for j in range(q - 1, -1, -1):
        start, end = Lp[j], Lp[j + 1]
        inv = 1.0 / Lx[start]
        if j == t0 - 1 and nt >= 8:
            for c in range(t0, q):
                for pp in range(Lp[c], Lp[c + 1]):
                    block[Li[pp] - t0, c - t0] = Sx[pp]
                    block[c - t0, Li[pp] - t0] = Sx[pp]
        if j < t0 and nt >= 8 and end - start > 2 and Li[start + 1] >= t0:
            r0 = Li[start + 1] - t0
            m = end - start - 1
            contiguous = Li[end - 1] - Li[start + 1] == m - 1
            lj = Lx[start + 1 : end]
            d = 0.0
            for a in range(start + 1, end):
                ra = Li[a] - t0
                v = 0.0
                if contiguous:
                    row = block[ra, r0 : r0 + m]
                    for i in range(m):
                        v += row[i] * lj[i]
                else:
                    for b in range(start + 1, end):
                        v += block[ra, Li[b] - t0] * Lx[b]
                z = -v * inv
                Sx[a] = z
                d += Lx[a] * z
            Sx[start] = inv * inv - d * inv
            continue
        if end - start == 1:
            Sx[start] = inv * inv
            continue
        if end - start == 2:
            z = -Lx[start + 1] * Sx[Lp[Li[start + 1]]] * inv
            Sx[start + 1] = z
            Sx[start] = inv * inv - Lx[start + 1] * z * inv
            continue
        m = end - start
        for a in range(m):
            acc[a] = 0.0
        for a in range(start + 1, end):
            col = Li[a]
            for pp in range(Lp[col], Lp[col + 1]):
                dense[Li[pp]] = Sx[pp]
            la = Lx[a]
            s = la * dense[col]
            for b in range(a + 1, end):
                zb = dense[Li[b]]  # Z[Li[b], col]
                s += Lx[b] * zb
                acc[b - start] += la * zb
            acc[a - start] += s
        d = 0.0
        for a in range(start + 1, end):
            z = -acc[a - start] * inv
            Sx[a] = z
            d += Lx[a] * z
        Sx[start] = inv * inv - d * inv


@nb.njit(**_JIT)
def _sum_log_diag(Lp, Lx):
    """``sum_j log L[j, j]``, taking a logarithm only when the running product gets large
    or small (logarithms dominate the cost otherwise)."""
    total = 0.0
    prod = 1.0
    for j in range(Lp.size - 1):
        prod *= Lx[Lp[j]]
        if prod > 1e100 or prod < 1e-100:
            total += math.log(prod)
            prod = 1.0
    return total + math.log(prod)


# ---------------------------------------------------------------------------------------
# Log posterior density and gradient
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def logp_grad(
    theta, grad, n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, comp,
    bcode, bpar, scode, spar,
):  # fmt: skip
    """Log posterior (marginal likelihood + priors) at ``theta``; gradient into ``grad``.

    Returns ``-inf`` (gradient zero) where ``A`` is not numerically positive definite.
    ``bcode/bpar``: one location prior per coefficient; ``scode/spar``: one scale prior
    per standard deviation, the residual sigma last.
    """
    p = Xty.size
    K = scode.size - 1
    q = Zty.size
    lsig = theta[p + K]
    sigma2 = math.exp(2.0 * lsig)

    XtXb = np.empty(p)
    rr = yy
    for a in range(p):
        s = 0.0
        for c in range(p):
            s += XtX[a, c] * theta[c]
        XtXb[a] = s
        rr += theta[a] * (s - 2.0 * Xty[a])
    w = np.empty(q)
    dadd = np.empty(q)
    dk = np.empty(K)  # 1 / s_k^2
    sk = np.empty(K)  # sigma^2 / s_k^2
    cnt = np.zeros(K)
    for k in range(K):
        dk[k] = math.exp(-2.0 * theta[p + k])
        sk[k] = sigma2 * dk[k]
    for i in range(q):
        s = Zty[i]
        for c in range(p):
            s -= ZtX[i, c] * theta[c]
        w[i] = s
        c = comp[i]
        dadd[i] = sk[c]
        cnt[c] += 1.0
    sumlogd = 0.0
    for k in range(K):
        sumlogd += 2.0 * theta[p + k] * cnt[k]

    for a in range(grad.size):
        grad[a] = 0.0
    logdet_a = 0.0
    u = w.copy()
    uw = 0.0
    Sx = np.empty(Ax.size)
    if q > 0:
        Lx = np.empty(Ax.size)
        pos = np.empty(q, dtype=np.int64)
        if not factor(Lp, Li, Ax, Rp, Rk, Rpos, dadd, Lx, pos):
            return -np.inf
        logdet_a = 2.0 * _sum_log_diag(Lp, Lx)
        lsolve(Lp, Li, Lx, u)
        ltsolve(Lp, Li, Lx, u)
        for i in range(q):
            uw += u[i] * w[i]
        selected_inverse(Lp, Li, Lx, Sx, np.empty(q), np.empty(q))
    ll = -0.5 * (n * _LOG_2PI + (n - q) * 2.0 * lsig + sumlogd + logdet_a + (rr - uw) / sigma2)

    # d/db = X'V^-1 r = (X'r - X'Z u_hat) / sigma^2
    for a in range(p):
        s = Xty[a] - XtXb[a]
        for i in range(q):
            s -= ZtX[i, a] * u[i]
        grad[a] = s / sigma2
    # d/dlog s_k and d/dlog sigma (see the module docstring for the derivation)
    gk = np.zeros(K)
    trk = np.zeros(K)
    for i in range(q):
        c = comp[i]
        gk[c] += u[i] * u[i]
        trk[c] += Sx[Lp[i]]
    tr = 0.0
    udu = 0.0
    for k in range(K):
        m = sk[k] * trk[k]  # sum of Var(u_i | y) / d_i
        ud = dk[k] * gk[k]  # sum of u_i^2 / d_i
        grad[p + k] = m - cnt[k] + ud
        tr += m
        udu += ud
    ee = rr - uw - sigma2 * udu
    grad[p + K] = -(n - q + tr) + ee / sigma2

    lp = ll
    for a in range(p):
        v, g = location_prior(bcode[a], bpar[a], theta[a])
        lp += v
        grad[a] += g
    for k in range(K + 1):
        v, g = scale_prior(scode[k], spar[k], theta[p + k])
        lp += v
        grad[p + k] += g
    return lp


# ---------------------------------------------------------------------------------------
# After sampling: conditional draws of the random effects, pointwise log-likelihood
# ---------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, error_model="numpy")
def draw_effects(thetas, z, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, comp):
    """Exact draws of ``u | y, b, s, sigma ~ N(A^-1 w, sigma^2 A^-1)``, one per row of ``thetas``.

    ``z`` holds standard normal variates, shape ``(draws, q)``; returns ``(draws, q)``
    (NaN rows where ``A`` is not positive definite, which a posterior draw never is).
    """
    S = thetas.shape[0]
    q = Zty.size
    p = ZtX.shape[1]
    K = thetas.shape[1] - p - 1
    out = np.empty((S, q))
    for s in range(S):
        th = thetas[s]
        sigma2 = math.exp(2.0 * th[p + K])
        dadd = np.empty(q)
        w = np.empty(q)
        for i in range(q):
            v = Zty[i]
            for c in range(p):
                v -= ZtX[i, c] * th[c]
            w[i] = v
            dadd[i] = sigma2 * math.exp(-2.0 * th[p + comp[i]])
        Lx = np.empty(Ax.size)
        pos = np.empty(q, dtype=np.int64)
        if not factor(Lp, Li, Ax, Rp, Rk, Rpos, dadd, Lx, pos):
            out[s, :] = np.nan
            continue
        lsolve(Lp, Li, Lx, w)
        ltsolve(Lp, Li, Lx, w)
        e = z[s].copy()
        ltsolve(Lp, Li, Lx, e)
        sig = math.sqrt(sigma2)
        for i in range(q):
            out[s, i] = w[i] + sig * e[i]
    return out


def pointwise_loglik(y, X, beta, cols, vals, u, sigma) -> np.ndarray:
    """``log N(y_i | X_i b + sum_k vals[i,k] u[cols[i,k]], sigma)`` for every draw and row.

    ``beta (S, p)``, ``u (S, q)``, ``sigma (S,)``; returns ``(S, n)``.  Serial on
    purpose: with millions of entries the page faults of the fresh output array cost more
    than the arithmetic, and faulting from several threads at once was slower still.
    """
    out = np.empty((beta.shape[0], y.size))
    _pointwise_loglik(y, X, beta, cols, vals, u, sigma, out)
    return out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _pointwise_loglik(y, X, beta, cols, vals, u, sigma, out):
    S = beta.shape[0]
    n, p = X.shape
    K = cols.shape[1]
    for s in range(S):
        b = beta[s]
        us = u[s]
        sd = sigma[s]
        c0 = -math.log(sd) - 0.5 * _LOG_2PI
        for i in range(n):
            m = 0.0
            for a in range(p):
                m += X[i, a] * b[a]
            for k in range(K):
                m += vals[i, k] * us[cols[i, k]]
            zz = (y[i] - m) / sd
            out[s, i] = c0 - 0.5 * zz * zz


# ---------------------------------------------------------------------------------------
# One pass over the rows: sufficient statistics and the symbolic factorisation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Factor:
    """Random effects sharing one grouping factor.

    ``index`` (n,) level code of each row; ``values`` (n, k) one column per coefficient
    (ones for an intercept); ``components`` the standard-deviation number of each column.
    """

    n_levels: int
    index: np.ndarray
    values: np.ndarray
    components: tuple[int, ...]


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics, the pattern of ``L`` and the row layout of ``Z``.

    ``columns[f]`` (n_levels, k) gives the internal column of every level and coefficient
    of factor ``f``; ``cols``/``vals`` (n, K) the column and value of each row in each
    component (for the pointwise log-likelihood).
    """

    n: int
    yy: float
    Xty: np.ndarray
    XtX: np.ndarray
    Zty: np.ndarray
    ZtX: np.ndarray
    Lp: np.ndarray
    Li: np.ndarray
    Ax: np.ndarray
    Rp: np.ndarray
    Rk: np.ndarray
    Rpos: np.ndarray
    comp: np.ndarray
    columns: tuple[np.ndarray, ...]
    cols: np.ndarray
    vals: np.ndarray

    @property
    def q(self) -> int:
        return int(self.Zty.size)

    def arrays(self) -> tuple:
        """The arguments of :func:`logp_grad` after ``theta, grad``, before the priors."""
        return (
            float(self.n), self.yy, self.Xty, self.XtX, self.Zty, self.ZtX, self.Lp, self.Li,
            self.Ax, self.Rp, self.Rk, self.Rpos, self.comp,
        )  # fmt: skip


def sufficient_stats(y: np.ndarray, X: np.ndarray, factors: list[Factor], n_components: int) -> Stats:
    """Cross-products of ``y``, ``X`` and ``Z`` and the symbolic Cholesky of ``Z'Z + D^-1``.

    Columns are ordered factor by factor, the factor with most levels first (as lme4
    orders its random terms): nested designs then factor with no fill-in at all and
    crossed designs fill in only the blocks of the smaller factors.
    """
    import scipy.sparse as sp

    y = np.ascontiguousarray(y, dtype=float)
    X = np.ascontiguousarray(X, dtype=float)
    n = y.size
    order = sorted(range(len(factors)), key=lambda f: -factors[f].n_levels)
    offsets, off = {}, 0
    for f in order:
        offsets[f] = off
        off += factors[f].n_levels * factors[f].values.shape[1]
    q = off
    comp = np.empty(q, dtype=np.int64)
    columns = []
    cols = np.zeros((n, n_components), dtype=np.int64)
    vals = np.zeros((n, n_components))
    rows_, cols_, vals_ = [], [], []
    for f, fac in enumerate(factors):
        k = fac.values.shape[1]
        colmap = offsets[f] + np.arange(fac.n_levels)[:, None] * k + np.arange(k)[None, :]
        columns.append(colmap)
        for j, c in enumerate(fac.components):
            comp[colmap[:, j]] = c
            cj = colmap[fac.index, j]
            cols[:, c] = cj
            vals[:, c] = fac.values[:, j]
            rows_.append(np.arange(n))
            cols_.append(cj)
            vals_.append(fac.values[:, j])
    if q:
        Z = sp.csr_matrix(
            (np.concatenate(vals_), (np.concatenate(rows_), np.concatenate(cols_))), shape=(n, q)
        )
        ZtZ = (Z.T @ Z).tocsc()
        Zty = np.asarray(Z.T @ y, dtype=float)
        ZtX = np.ascontiguousarray(np.asarray(Z.T @ X, dtype=float).reshape(q, X.shape[1]))
    else:
        ZtZ = sp.csc_matrix((0, 0))
        Zty = np.zeros(0)
        ZtX = np.zeros((0, X.shape[1]))
    Lp, Li, Ax, Rp, Rk, Rpos = symbolic(ZtZ)
    return Stats(
        n=n, yy=float(y @ y), Xty=X.T @ y, XtX=np.ascontiguousarray(X.T @ X), Zty=Zty, ZtX=ZtX,
        Lp=Lp, Li=Li, Ax=Ax, Rp=Rp, Rk=Rk, Rpos=Rpos, comp=comp, columns=tuple(columns),
        cols=cols, vals=vals,
    )  # fmt: skip


def symbolic(ZtZ) -> tuple[np.ndarray, ...]:
    """Pattern of the Cholesky factor of ``Z'Z + diag`` (elimination tree, no pivoting).

    Returns ``Lp, Li`` (CSC pattern, diagonal first, rows sorted), ``Ax`` (lower triangle
    of ``Z'Z`` on that pattern) and the row lists ``Rp, Rk, Rpos`` that
    :func:`factor` uses.
    """
    import scipy.sparse as sp

    q = ZtZ.shape[0]
    low = sp.tril(ZtZ, format="csc")
    low.sort_indices()
    structs: list[np.ndarray] = []
    children: list[list[int]] = [[] for _ in range(q)]
    for j in range(q):
        rows = low.indices[low.indptr[j] : low.indptr[j + 1]]
        parts = [rows[rows > j]]
        parts += [structs[c][structs[c] > j] for c in children[j]]
        s = np.unique(np.concatenate(parts)) if len(parts) > 1 else parts[0]
        structs.append(s)
        if s.size:
            children[int(s[0])].append(j)
    counts = np.array([s.size + 1 for s in structs], dtype=np.int64)
    Lp = np.zeros(q + 1, dtype=np.int64)
    np.cumsum(counts, out=Lp[1:])
    Li = np.empty(int(Lp[-1]), dtype=np.int64)
    Ax = np.zeros(int(Lp[-1]))
    for j in range(q):
        Li[Lp[j]] = j
        Li[Lp[j] + 1 : Lp[j + 1]] = structs[j]
        rows = low.indices[low.indptr[j] : low.indptr[j + 1]]
        data = low.data[low.indptr[j] : low.indptr[j + 1]]
        where = np.searchsorted(Li[Lp[j] : Lp[j + 1]], rows)
        Ax[Lp[j] + where] = data
    # row lists: for each row i the (column k < i, position of L[i, k])
    colof = np.repeat(np.arange(q, dtype=np.int64), counts)
    off = np.ones(Li.size, dtype=bool)
    off[Lp[:-1]] = False
    positions = np.flatnonzero(off).astype(np.int64)
    rows_off = Li[positions]
    order = np.argsort(rows_off, kind="stable")
    Rk = np.ascontiguousarray(colof[positions][order])
    Rpos = np.ascontiguousarray(positions[order])
    Rp = np.zeros(q + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_off, minlength=q), out=Rp[1:])
    return Lp, Li, Ax, Rp, Rk, Rpos


# ---------------------------------------------------------------------------------------
# C entry points for nutpie's compiled-model interface (no Python, no GIL per gradient)
# ---------------------------------------------------------------------------------------

#: Layout of the packed buffer: a header of sizes, then every array in a fixed order
#: (integer arrays stored as their int64 bit patterns).
_HEADER = 8  # total length, n, y'y, p, K, q, nnz(L), entries of the row lists


def pack(stats: Stats, bcode, bpar, scode, spar) -> np.ndarray:
    """All inputs of :func:`logp_grad` in one float64 buffer for :func:`c_logp`."""
    p = stats.Xty.size
    K = np.asarray(scode).size - 1
    parts = [
        stats.Xty, stats.XtX, stats.Zty, stats.ZtX,
        stats.Lp.view(np.float64), stats.Li.view(np.float64), stats.Ax,
        stats.Rp.view(np.float64), stats.Rk.view(np.float64), stats.Rpos.view(np.float64),
        stats.comp.view(np.float64),
        np.ascontiguousarray(bcode, dtype=np.int64).view(np.float64), np.asarray(bpar, dtype=float),
        np.ascontiguousarray(scode, dtype=np.int64).view(np.float64), np.asarray(spar, dtype=float),
    ]  # fmt: skip
    body = np.concatenate([np.ascontiguousarray(a, dtype=np.float64).ravel() for a in parts])
    header = np.array(
        [_HEADER + body.size, stats.n, stats.yy, p, K, stats.q, stats.Li.size, stats.Rk.size], dtype=float
    )
    return np.ascontiguousarray(np.concatenate([header, body]))


@nb.njit(cache=True)
def _unpack(buf):
    n = buf[1]
    yy = buf[2]
    p = int(buf[3])
    K = int(buf[4])
    q = int(buf[5])
    nnz = int(buf[6])
    nr = int(buf[7])
    o = _HEADER
    Xty = buf[o : o + p]
    o += p
    XtX = buf[o : o + p * p].reshape((p, p))
    o += p * p
    Zty = buf[o : o + q]
    o += q
    ZtX = buf[o : o + q * p].reshape((q, p))
    o += q * p
    Lp = buf[o : o + q + 1].view(np.int64)
    o += q + 1
    Li = buf[o : o + nnz].view(np.int64)
    o += nnz
    Ax = buf[o : o + nnz]
    o += nnz
    Rp = buf[o : o + q + 1].view(np.int64)
    o += q + 1
    Rk = buf[o : o + nr].view(np.int64)
    o += nr
    Rpos = buf[o : o + nr].view(np.int64)
    o += nr
    comp = buf[o : o + q].view(np.int64)
    o += q
    bcode = buf[o : o + p].view(np.int64)
    o += p
    bpar = buf[o : o + 3 * p].reshape((p, 3))
    o += 3 * p
    scode = buf[o : o + K + 1].view(np.int64)
    o += K + 1
    spar = buf[o : o + 3 * (K + 1)].reshape((K + 1, 3))
    return n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, comp, bcode, bpar, scode, spar


_LOGP_SIG = nb.types.int64(
    nb.types.uint64,
    nb.types.CPointer(nb.types.double),
    nb.types.CPointer(nb.types.double),
    nb.types.CPointer(nb.types.double),
    nb.types.voidptr,
)
_EXPAND_SIG = nb.types.int64(
    nb.types.uint64,
    nb.types.uint64,
    nb.types.CPointer(nb.types.double),
    nb.types.CPointer(nb.types.double),
    nb.types.voidptr,
)


@nb.cfunc(_LOGP_SIG, cache=True, error_model="numpy")
def c_logp(dim, x_, out_, logp_, data_):
    """nutpie's C log-density ABI: 0 on success, a positive (recoverable) code otherwise."""
    total = int(nb.carray(data_, (1,), np.float64)[0])
    buf = nb.carray(data_, (total,), np.float64)
    x = nb.carray(x_, (dim,))
    out = nb.carray(out_, (dim,))
    logp = nb.carray(logp_, (1,))
    (n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, comp, bcode, bpar, scode, spar) = _unpack(buf)
    if dim != Xty.size + scode.size:
        return -1
    val = logp_grad(x, out, n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, comp, bcode, bpar, scode, spar)
    logp[0] = val
    if not math.isfinite(val):
        return 4
    for i in range(dim):
        if not math.isfinite(out[i]):
            return 3
    return 0


@nb.cfunc(_EXPAND_SIG, cache=True)
def c_expand(dim, expanded, x_, out_, data_):
    """nutpie's C expand ABI: the stored draw is the unconstrained point itself."""
    if dim != expanded:
        return -1
    x = nb.carray(x_, (dim,))
    out = nb.carray(out_, (expanded,))
    for i in range(dim):
        out[i] = x[i]
    return 0
