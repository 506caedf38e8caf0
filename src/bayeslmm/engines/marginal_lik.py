"""Numerical kernels of the marginal engine: Gaussian mixed-model likelihood with the
random effects integrated out, its gradient, and exact conditional draws of the effects.

Model (after the fixed-effect design has been centred as Bambi centres it)::

    y = X b + Z u + e,   u ~ N(0, D),   e ~ N(0, sigma^2 I)

``D`` is block diagonal, lme4's ``Lambda_theta Lambda_theta'``: one block per level of a grouping
factor and correlated term, ``Sigma = diag(s) R diag(s)`` (a single ``s^2`` for an uncorrelated
coefficient).
so that ``y ~ N(X b, V)`` with ``V = sigma^2 I + Z D Z'``.  Everything is computed from
sufficient statistics (``X'X, X'y, y'y, Z'Z, Z'X, Z'y``), so after one pass over the rows
the cost of a density evaluation does not depend on the number of rows.  With
``A = Z'Z + sigma^2 D^-1 = L L'`` (sparse Cholesky with a fixed symbolic pattern, lme4's
linear algebra) and ``r = y - X b``, ``w = Z'r``, ``u_hat = A^-1 w``:

    log|V|     = (n - q) log sigma^2 + sum_i log d_i + log|A|
    r'V^-1 r   = (r'r - w'u_hat) / sigma^2
    u | y, ... ~ N(u_hat, sigma^2 A^-1)

The gradient (Fisher's identity: the expectation, given ``y``, of the complete-data score)
needs the diagonal blocks of ``A^-1``, which the selected inverse (Takahashi's equations on
the pattern of ``L``) gives at the cost of the factorisation.  Parameters on the
sampler's (unconstrained) scale are ``theta = [b, log s_1..log s_K, log sigma, y_1..y_C]``:
the ``y`` are the correlations' unconstrained values, ``tanh(y)`` the canonical partial
correlations of each block's Cholesky factor (Stan's ``cholesky_corr`` transform, whose
log-Jacobian is added), with an LKJ(eta) prior on each block's correlation matrix.

All kernels are numba functions compiled with ``cache=True``: the first process compiles
them once (about 6 s on the project's machine), later processes load the machine code from
the cache (``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``).  The nested designs of
lme4's tutorials factor with no fill-in at all; crossed designs fill in the smaller factors,
a trailing block of ``L`` that :func:`symbolic` stores full and SciPy's LAPACK factors
(``dpotrf``) and inverts (``dpotri``) at every gradient, called from the compiled kernels
(InstEval's students x lecturers: 1,139 such columns, 0.06 s a gradient instead of 0.7 s).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numba as nb
import numpy as np
from llvmlite import binding as _llvm
from scipy.linalg import cython_lapack as _lapack

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
# LAPACK for the dense trailing block (SciPy's, called from compiled code)
# ---------------------------------------------------------------------------------------


def _lapack_address(name: str) -> int:
    """Address of SciPy's LAPACK routine ``name`` (``scipy.linalg.cython_lapack``: 32-bit integers)."""
    capsule = _lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    signature = get_name(capsule)
    if signature != b"void (char *, int *, __pyx_t_5scipy_6linalg_13cython_lapack_d *, int *, int *)":
        raise ImportError(f"scipy.linalg.cython_lapack.{name} has an unexpected signature {signature!r}")
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, signature)


# Registered as symbols (not baked-in addresses), so the kernels that call them stay cacheable.
for _name in ("dpotrf", "dpotri"):
    _llvm.add_symbol(f"bayeslmm_{_name}", _lapack_address(_name))
_UPLO_SIG = nb.types.void(*[nb.types.voidptr] * 5)  # (uplo, n, a, lda, info)
_dpotrf = nb.types.ExternalFunction("bayeslmm_dpotrf", _UPLO_SIG)
_dpotri = nb.types.ExternalFunction("bayeslmm_dpotri", _UPLO_SIG)

#: Fewest columns of the dense trailing block of ``L`` that :func:`factor` and
#: :func:`selected_inverse` hand to LAPACK (below it the scalar loops are as fast).
DENSE_MIN = 64


@nb.njit(**_JIT)
def _dense_lapack(F, inverse):
    """LAPACK's Cholesky (``dpotrf``) or, from that factor, inverse (``dpotri``) of ``F`` in place.

    ``F`` is C-ordered (nt, nt); LAPACK reads it as column-major, so its lower triangle is
    ``F``'s upper: ``F[c, r]``, ``r >= c``, holds entry ``(r, c)``.  Returns LAPACK's ``info``
    (0: done; > 0: not positive definite).
    """
    uplo = np.empty(1, np.uint8)
    uplo[0] = 76  # "L"
    size = np.empty(1, np.int32)
    size[0] = F.shape[0]
    info = np.zeros(1, np.int32)
    if inverse:
        _dpotri(uplo.ctypes, size.ctypes, F.ctypes, size.ctypes, info.ctypes)
    else:
        _dpotrf(uplo.ctypes, size.ctypes, F.ctypes, size.ctypes, info.ctypes)
    return info[0]


@nb.njit(**_JIT)
def full_trailing(Lp):
    """First column of the trailing block of ``L`` whose columns are full (rows ``j..q-1``)."""
    q = Lp.size - 1
    t0 = max(q - 1, 0)
    while t0 > 0 and Lp[t0] - Lp[t0 - 1] == q - t0 + 1:
        t0 -= 1
    return t0


@nb.njit(**_JIT)
def dense_start(Lp, dense_min):
    """First column of the trailing block LAPACK takes: the full trailing block if it has at least
    ``dense_min`` columns, else ``q`` (none)."""
    q = Lp.size - 1
    t0 = full_trailing(Lp)
    return t0 if q - t0 >= dense_min else q


@nb.njit(**_JIT)
def _trailing_to_dense(Lp, Lx, t0):
    """The trailing columns ``t0..q-1`` of a full block as LAPACK's lower triangle (see :func:`_dense_lapack`)."""
    nt = Lp.size - 1 - t0
    F = np.zeros((nt, nt))
    for c in range(nt):
        s = Lp[t0 + c]
        row = F[c]
        for i in range(nt - c):
            row[c + i] = Lx[s + i]
    return F


@nb.njit(**_JIT)
def _mirror_upper(F):
    """Copy the upper triangle of the square ``F`` onto its lower one (by tiles, for the cache)."""
    n = F.shape[0]
    tile = 32
    for r0 in range(0, n, tile):
        for c0 in range(0, r0 + 1, tile):
            for r in range(r0, min(r0 + tile, n)):
                for c in range(c0, min(c0 + tile, r)):
                    F[r, c] = F[c, r]


# ---------------------------------------------------------------------------------------
# Sparse Cholesky with a fixed pattern (left-looking), solves, selected inverse
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def factor(Lp, Li, Rp, Rk, Rpos, Lx, pos, dense_min=DENSE_MIN):
    """Numeric Cholesky ``A = L L'`` in place: ``Lx`` holds the lower triangle of ``A``.

    ``Lx`` comes in with ``A``'s lower triangle on the precomputed pattern (``Lp``, ``Li``;
    zeros at fill-in: see :func:`fill`) and leaves with ``L``; ``(Rp, Rk, Rpos)`` lists, for
    each row ``j``, the columns ``k < j`` with ``L[j, k] != 0`` and the position of that
    entry.  ``pos`` is integer work space of length ``q``.  Returns ``False`` if ``A`` is
    not numerically positive definite.

    A full trailing block of at least ``dense_min`` columns (crossed factors fill the smaller one
    in; :func:`dense_start`) is copied out dense, the columns before it subtract their outer
    products from it (the Schur complement ``A_22 - L_21 L_21'``) and LAPACK's ``dpotrf`` factors it.
    """
    q = Lp.size - 1
    t0 = dense_start(Lp, dense_min)
    for j in range(t0):
        start, end = Lp[j], Lp[j + 1]
        if Rp[j] < Rp[j + 1]:
            for p in range(start, end):
                pos[Li[p]] = p
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
    if t0 < q:
        # Schur complement A_22 - L_21 L_21': each column before the block subtracts the outer product of
        # its rows in the block (``F[c, r]`` holds entry (r, c), r >= c: see _dense_lapack)
        F = _trailing_to_dense(Lp, Lx, t0)
        for k in range(t0):
            f, end = Lp[k] + 1, Lp[k + 1]
            while f < end and Li[f] < t0:
                f += 1
            for a in range(f, end):
                la = Lx[a]
                row = F[Li[a] - t0]
                for b in range(a, end):
                    row[Li[b] - t0] -= la * Lx[b]
        if _dense_lapack(F, False) != 0:
            return False
        for c in range(q - t0):
            s = Lp[t0 + c]
            row = F[c]
            if not math.isfinite(row[c]):
                return False
            for i in range(q - t0 - c):
                Lx[s + i] = row[c + i]
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


#: Most rows above the dense trailing block that a column may have and still use the block (a
#: level's other coefficients: a correlated block of up to this many + 1 coefficients).
_MAX_PRE = 8


@nb.njit(**_JIT)
def selected_inverse(Lp, Li, Lx, Sx, dense, acc, dense_min=DENSE_MIN):
    """Entries of ``A^-1`` on the pattern of ``L`` (Takahashi's equations) into ``Sx``.

    The diagonal of ``A^-1`` is ``Sx[Lp[:-1]]``.  ``dense`` and ``acc`` are float work
    space of length ``q``.  For column ``j`` with pattern ``S`` (rows below the diagonal)
    ``Z[i, j] = -sum_{k in S} L[k, j] Z[k, i] / L[j, j]``; every ``Z[k, i]`` needed lies in
    column ``min(k, i)`` (the pattern of a column is a clique of the filled graph), so each
    such column is scattered once into ``dense`` instead of searching for single entries.
    A full trailing block of at least ``dense_min`` columns is ``(L_22 L_22')^-1``, the inverse of
    the Schur complement, which LAPACK's ``dpotri`` computes from :func:`factor`'s ``L_22``.
    """
    q = Lp.size - 1
    # trailing block of columns whose pattern is full (crossed factors fill the smaller one
    # in): once done, it is kept as a dense matrix for the columns that only reach into it
    t0 = full_trailing(Lp)
    nt = q - t0
    lapack = nt >= dense_min
    pre = np.empty((_MAX_PRE, nt)) if nt >= 8 else np.empty((0, 0))
    first = q - 1
    if lapack:
        block = _trailing_to_dense(Lp, Lx, t0)
        _dense_lapack(block, True)  # info > 0 only for a singular L_22, which factor() has refused
        for c in range(nt):
            s = Lp[t0 + c]
            row = block[c]
            for i in range(nt - c):
                Sx[s + i] = row[c + i]
        _mirror_upper(block)
        first = t0 - 1
    else:
        block = np.empty((nt, nt)) if nt >= 8 else np.empty((0, 0))
    for j in range(first, -1, -1):
        start, end = Lp[j], Lp[j + 1]
        inv = 1.0 / Lx[start]
        if j == t0 - 1 and nt >= 8 and not lapack:
            for c in range(t0, q):
                for pp in range(Lp[c], Lp[c + 1]):
                    block[Li[pp] - t0, c - t0] = Sx[pp]
                    block[c - t0, Li[pp] - t0] = Sx[pp]
        if j < t0 and nt >= 8 and end - start > 2:
            # rows below the diagonal: a few "pre" rows (the level's other coefficients, < t0), then
            # rows in the dense trailing block; Z of two dense rows is read from `block`, Z of a pre
            # row and a dense row from the pre row's own column (every such entry is on its pattern:
            # a column's pattern is a clique of the filled graph), scattered once into `pre`.
            f = start + 1
            while f < end and Li[f] < t0:
                f += 1
            npre = f - start - 1
            if f < end and npre <= _MAX_PRE:
                for k in range(npre):
                    col = Li[start + 1 + k]
                    for pp in range(Lp[col], Lp[col + 1]):
                        if Li[pp] >= t0:
                            pre[k, Li[pp] - t0] = Sx[pp]
                m = end - f
                r0 = Li[f] - t0
                contiguous = Li[end - 1] - Li[f] == m - 1
                lj = Lx[f:end]
                if not contiguous:
                    # acc = block[rows, rows] @ lj, each entry of the (symmetric) block read once
                    for i in range(m):
                        acc[i] = 0.0
                    for i in range(m):
                        ri = Li[f + i] - t0
                        row = block[ri]
                        li = lj[i]
                        v = row[ri] * li
                        for b in range(i + 1, m):
                            z = row[Li[f + b] - t0]
                            v += z * lj[b]
                            acc[b] += z * li
                        acc[i] += v
                d = 0.0
                for a in range(f, end):
                    ra = Li[a] - t0
                    v = 0.0
                    if contiguous:
                        row = block[ra, r0 : r0 + m]
                        for i in range(m):
                            v += row[i] * lj[i]
                    else:
                        v = acc[a - f]
                    for k in range(npre):
                        v += pre[k, ra] * Lx[start + 1 + k]
                    z = -v * inv
                    Sx[a] = z
                    d += Lx[a] * z
                for k in range(npre):
                    a = start + 1 + k
                    pa = Li[a]
                    v = 0.0
                    for kb in range(npre):
                        pb = Li[start + 1 + kb]
                        lo, hi = (pa, pb) if pa <= pb else (pb, pa)
                        pp = Lp[lo]
                        while Li[pp] != hi:  # Z[hi, lo] sits near the top of column lo
                            pp += 1
                        v += Sx[pp] * Lx[start + 1 + kb]
                    for b in range(f, end):
                        v += pre[k, Li[b] - t0] * Lx[b]
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
# Covariance blocks: Sigma = diag(s) R diag(s), R = L L' from canonical partial correlations
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def corr_cholesky(y, k, eta, L, dL, dlp):
    """Cholesky factor ``L`` (k, k) of a correlation matrix from ``k(k-1)/2`` unconstrained values.

    ``tanh(y)`` are the canonical partial correlations, row by row (Stan's ``cholesky_corr``
    transform).  Returns the log-Jacobian of ``y -> L`` plus the LKJ(eta) log density of ``L``
    (without its normalising constant); ``dL[c]`` gets ``dL/dy_c`` and ``dlp[c]`` the derivative of
    the returned value (forward mode, one pass per ``c``: ``k`` is small).
    """
    nc = k * (k - 1) // 2
    lp = 0.0
    for c in range(max(nc, 1)):
        for a in range(k):
            for b in range(k):
                L[a, b] = 0.0
                if nc:
                    dL[c, a, b] = 0.0
        L[0, 0] = 1.0
        val = 0.0
        der = 0.0
        idx = 0
        for i in range(1, k):
            ss = 0.0
            dss = 0.0
            for j in range(i):
                z = math.tanh(y[idx])
                dz = 1.0 - z * z if idx == c else 0.0
                val += math.log1p(-z * z)
                if idx == c:
                    der += -2.0 * z
                if j == 0:
                    x, dx = z, dz
                else:
                    rem = 1.0 - ss
                    val += 0.5 * math.log(rem)
                    der += -0.5 * dss / rem
                    r = math.sqrt(rem)
                    x, dx = z * r, dz * r - z * 0.5 * dss / r
                L[i, j] = x
                dL[c, i, j] = dx
                ss += x * x
                dss += 2.0 * x * dx
                idx += 1
            d = math.sqrt(1.0 - ss)
            L[i, i] = d
            dd = -0.5 * dss / d
            dL[c, i, i] = dd
            w = k - i - 1 + 2.0 * (eta - 1.0)
            val += w * math.log(d)
            der += w * dd / d
        lp = val
        if nc:
            dlp[c] = der
    return lp


@nb.njit(**_JIT)
def block_precisions(theta, p, K, tsize, tcomp, tcor, teta, P, Rinv, Lc, dLc, ldet, cgrad):
    """Per block type: ``P[t] = Sigma_t^-1``, ``ldet[t] = log|Sigma_t|``, ``Rinv[t] = R_t^-1``.

    Returns the correlations' log prior (LKJ plus the transform's log-Jacobian); ``cgrad`` gets
    its gradient in the correlations' unconstrained values, ``Lc[t]``/``dLc[t]`` each correlated
    type's Cholesky factor and its derivatives.  ``-inf`` when a correlation matrix is singular.
    """
    ycor = theta[p + K + 1 :]
    lp = 0.0
    for t in range(tsize.size):
        k = tsize[t]
        if k == 1:
            lsd = theta[p + tcomp[t, 0]]
            P[t, 0, 0] = math.exp(-2.0 * lsd)
            Rinv[t, 0, 0] = 1.0
            ldet[t] = 2.0 * lsd
            continue
        o = tcor[t]
        nc = k * (k - 1) // 2
        L = Lc[t]
        lp += corr_cholesky(ycor[o : o + nc], k, teta[t], L, dLc[t], cgrad[o : o + nc])
        ld = 0.0
        for a in range(k):
            if not L[a, a] > 1e-150:
                return -np.inf
            ld += 2.0 * (theta[p + tcomp[t, a]] + math.log(L[a, a]))
        ldet[t] = ld
        # R^-1 = L'^-1 L^-1 from the triangular inverse of L
        Li = np.zeros((k, k))
        for a in range(k):
            Li[a, a] = 1.0 / L[a, a]
            for b in range(a):
                v = 0.0
                for m in range(b, a):
                    v += L[a, m] * Li[m, b]
                Li[a, b] = -v / L[a, a]
        for a in range(k):
            for b in range(k):
                v = 0.0
                for m in range(max(a, b), k):
                    v += Li[m, a] * Li[m, b]
                Rinv[t, a, b] = v
                P[t, a, b] = v * math.exp(-theta[p + tcomp[t, a]] - theta[p + tcomp[t, b]])
    return lp


@nb.njit(**_JIT)
def fill(Ax, Lp, icol, itype, tsize, P, sigma2, Lx):
    """``A = Z'Z + sigma^2 D^-1`` on the pattern of ``L`` into ``Lx``: each block instance
    (first column ``icol[m]``, type ``itype[m]``) adds ``sigma^2 Sigma^-1`` to its diagonal block,
    whose entry ``(c0 + a, c0 + b)``, ``a >= b``, sits at ``Lp[c0 + b] + a - b``."""
    for j in range(Lx.size):
        Lx[j] = Ax[j]
    for m in range(icol.size):
        t = itype[m]
        c0 = icol[m]
        k = tsize[t]
        for b in range(k):
            base = Lp[c0 + b] - b
            for a in range(b, k):
                Lx[base + a] += sigma2 * P[t, a, b]


# ---------------------------------------------------------------------------------------
# Log posterior density and gradient
# ---------------------------------------------------------------------------------------


@nb.njit(**_JIT)
def logp_grad(
    theta, grad, n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, tsize, tcomp, tcor, teta, icol, itype,
    bcode, bpar, scode, spar, dense_min=DENSE_MIN,
):  # fmt: skip
    """Log posterior (marginal likelihood + priors) at ``theta``; gradient into ``grad``.

    Returns ``-inf`` (gradient zero) where ``A`` or a correlation matrix is not numerically
    positive definite.  ``bcode/bpar``: one location prior per coefficient; ``scode/spar``: one
    scale prior per standard deviation, the residual sigma last; block types (``tsize``,
    ``tcomp``, ``tcor``, ``teta``) and their instances (``icol``, ``itype``) as :class:`Stats`;
    ``dense_min`` as :func:`factor` (tests set it to compare the dense-block path with the scalar one).
    """
    p = Xty.size
    K = scode.size - 1
    q = Zty.size
    T = tsize.size
    kmax = tcomp.shape[1]
    lsig = theta[p + K]
    sigma2 = math.exp(2.0 * lsig)
    for a in range(grad.size):
        grad[a] = 0.0

    P = np.zeros((T, kmax, kmax))
    Rinv = np.zeros((T, kmax, kmax))
    Lc = np.zeros((T, kmax, kmax))
    nc_max = max(kmax * (kmax - 1) // 2, 1)
    dLc = np.zeros((T, nc_max, kmax, kmax))
    ldet = np.zeros(T)
    cgrad = grad[p + K + 1 :]
    lp_cor = block_precisions(theta, p, K, tsize, tcomp, tcor, teta, P, Rinv, Lc, dLc, ldet, cgrad)
    if not math.isfinite(lp_cor):
        return -np.inf

    XtXb = np.empty(p)
    rr = yy
    for a in range(p):
        s = 0.0
        for c in range(p):
            s += XtX[a, c] * theta[c]
        XtXb[a] = s
        rr += theta[a] * (s - 2.0 * Xty[a])
    w = np.empty(q)
    for i in range(q):
        s = Zty[i]
        for c in range(p):
            s -= ZtX[i, c] * theta[c]
        w[i] = s
    count = np.zeros(T)
    for m in range(icol.size):
        count[itype[m]] += 1.0
    sumlogd = 0.0
    for t in range(T):
        sumlogd += count[t] * ldet[t]

    logdet_a = 0.0
    u = w.copy()
    uw = 0.0
    Sx = np.empty(Ax.size)
    if q > 0:
        Lx = np.empty(Ax.size)
        fill(Ax, Lp, icol, itype, tsize, P, sigma2, Lx)
        if not factor(Lp, Li, Rp, Rk, Rpos, Lx, np.empty(q, dtype=np.int64), dense_min):
            for a in range(grad.size):
                grad[a] = 0.0
            return -np.inf
        logdet_a = 2.0 * _sum_log_diag(Lp, Lx)
        lsolve(Lp, Li, Lx, u)
        ltsolve(Lp, Li, Lx, u)
        for i in range(q):
            uw += u[i] * w[i]
        selected_inverse(Lp, Li, Lx, Sx, np.empty(q), np.empty(q), dense_min)
    ll = -0.5 * (n * _LOG_2PI + (n - q) * 2.0 * lsig + sumlogd + logdet_a + (rr - uw) / sigma2)

    # d/db = X'V^-1 r = (X'r - X'Z u_hat) / sigma^2
    for a in range(p):
        s = Xty[a] - XtXb[a]
        for i in range(q):
            s -= ZtX[i, a] * u[i]
        grad[a] = s / sigma2
    # Fisher's identity: E[u_l u_l' | y] = u_hat_l u_hat_l' + sigma^2 (A^-1)_ll per block instance
    GU = np.zeros((T, kmax, kmax))
    GS = np.zeros((T, kmax, kmax))
    for m in range(icol.size):
        t = itype[m]
        c0 = icol[m]
        k = tsize[t]
        for b in range(k):
            base = Lp[c0 + b] - b
            for a in range(b, k):
                gu = u[c0 + a] * u[c0 + b]
                gs = Sx[base + a]
                GU[t, a, b] += gu
                GS[t, a, b] += gs
                if a != b:
                    GU[t, b, a] += gu
                    GS[t, b, a] += gs
    udu = 0.0  # sum_l u_l' Sigma^-1 u_l
    trds = 0.0  # sum_l tr(Sigma^-1 (A^-1)_ll)
    for t in range(T):
        k = tsize[t]
        G = np.empty((k, k))
        for a in range(k):
            for b in range(k):
                G[a, b] = GU[t, a, b] + sigma2 * GS[t, a, b]
                udu += P[t, a, b] * GU[t, b, a]
                trds += P[t, a, b] * GS[t, b, a]
        # d/dlog s_a = (Sigma^-1 G)_aa - n_t
        PG = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                v = 0.0
                for m in range(k):
                    v += P[t, a, m] * G[m, b]
                PG[a, b] = v
        for a in range(k):
            grad[p + tcomp[t, a]] += PG[a, a] - count[t]
        if k == 1:
            continue
        # d/dR = Q = (R^-1 Gt R^-1 - n_t R^-1) / 2 with Gt = diag(1/s) G diag(1/s); dR = dL L' + L dL'
        Gt = np.empty((k, k))
        for a in range(k):
            for b in range(k):
                Gt[a, b] = G[a, b] * math.exp(-theta[p + tcomp[t, a]] - theta[p + tcomp[t, b]])
        Q = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                v = 0.0
                for m in range(k):
                    for r in range(k):
                        v += Rinv[t, a, m] * Gt[m, r] * Rinv[t, r, b]
                Q[a, b] = 0.5 * (v - count[t] * Rinv[t, a, b])
        QL = np.zeros((k, k))  # dll/dL = 2 Q L
        for a in range(k):
            for b in range(k):
                v = 0.0
                for m in range(k):
                    v += Q[a, m] * Lc[t, m, b]
                QL[a, b] = 2.0 * v
        o = tcor[t]
        for c in range(k * (k - 1) // 2):
            v = 0.0
            for a in range(k):
                for b in range(a + 1):
                    v += QL[a, b] * dLc[t, c, a, b]
            grad[p + K + 1 + o + c] += v
    ee = rr - uw - sigma2 * udu
    grad[p + K] = -(n - q + sigma2 * trds) + ee / sigma2

    lp = ll + lp_cor
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
def correlations(thetas, p, K, tsize, tcomp, tcor, teta):
    """Each draw's correlation matrices: ``(draws, T, kmax, kmax)`` (identity for uncorrelated types)."""
    S = thetas.shape[0]
    T = tsize.size
    kmax = tcomp.shape[1]
    nc_max = max(kmax * (kmax - 1) // 2, 1)
    out = np.zeros((S, T, kmax, kmax))
    L = np.zeros((kmax, kmax))
    dL = np.zeros((nc_max, kmax, kmax))
    dlp = np.zeros(nc_max)
    for s in range(S):
        for t in range(T):
            k = tsize[t]
            if k == 1:
                out[s, t, 0, 0] = 1.0
                continue
            o = tcor[t]
            corr_cholesky(thetas[s, p + K + 1 + o :], k, teta[t], L, dL, dlp)
            for a in range(k):
                for b in range(k):
                    v = 0.0
                    for m in range(min(a, b) + 1):
                        v += L[a, m] * L[b, m]
                    out[s, t, a, b] = v
    return out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def draw_effects(thetas, K, z, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, tsize, tcomp, tcor, teta, icol, itype,
                 dense_min=DENSE_MIN):
    """Exact draws of ``u | y, b, Sigma, sigma ~ N(A^-1 w, sigma^2 A^-1)``, one per row of ``thetas``.

    ``K`` is the number of standard deviations (the residual's not counted); ``z`` holds
    standard normal variates, shape ``(draws, q)``; returns ``(draws, q)``
    (NaN rows where ``A`` is not positive definite, which a posterior draw never is).
    """
    S = thetas.shape[0]
    q = Zty.size
    p = ZtX.shape[1]
    T = tsize.size
    kmax = tcomp.shape[1]
    nc_max = max(kmax * (kmax - 1) // 2, 1)
    out = np.empty((S, q))
    for s in range(S):
        th = thetas[s]
        sigma2 = math.exp(2.0 * th[p + K])
        P = np.zeros((T, kmax, kmax))
        Rinv = np.zeros((T, kmax, kmax))
        Lc = np.zeros((T, kmax, kmax))
        dLc = np.zeros((T, nc_max, kmax, kmax))
        cg = np.zeros(th.size)
        if not math.isfinite(block_precisions(th, p, K, tsize, tcomp, tcor, teta, P, Rinv, Lc, dLc, np.zeros(T),
                                              cg[p + K + 1 :])):
            out[s, :] = np.nan
            continue
        w = np.empty(q)
        for i in range(q):
            v = Zty[i]
            for c in range(p):
                v -= ZtX[i, c] * th[c]
            w[i] = v
        Lx = np.empty(Ax.size)
        fill(Ax, Lp, icol, itype, tsize, P, sigma2, Lx)
        if not factor(Lp, Li, Rp, Rk, Rpos, Lx, np.empty(q, dtype=np.int64), dense_min):
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
class Block:
    """Coefficients of one grouping factor that share a covariance block.

    ``slots`` (contiguous) index the factor's columns; ``cor`` is the offset of the block's
    correlations among all correlations (``-1`` for a single, uncorrelated coefficient);
    ``eta`` the LKJ shape of its correlation matrix.
    """

    slots: tuple[int, ...]
    cor: int = -1
    eta: float = 1.0


@dataclass(frozen=True)
class Factor:
    """Random effects sharing one grouping factor.

    ``index`` (n,) level code of each row; ``values`` (n, k) one column per coefficient
    (ones for an intercept); ``components`` the standard-deviation number of each column;
    ``blocks`` its covariance blocks (every column on its own when empty: the ``||`` model).
    """

    n_levels: int
    index: np.ndarray
    values: np.ndarray
    components: tuple[int, ...]
    blocks: tuple[Block, ...] = ()

    def covariance_blocks(self) -> tuple[Block, ...]:
        """The blocks, each column not in a correlated block standing alone."""
        taken = {s for b in self.blocks for s in b.slots}
        alone = [Block((s,)) for s in range(self.values.shape[1]) if s not in taken]
        return tuple(sorted((*self.blocks, *alone), key=lambda b: b.slots[0]))


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics, the pattern of ``L``, the covariance blocks and the row layout of ``Z``.

    ``columns[f]`` (n_levels, k) gives the internal column of every level and coefficient
    of factor ``f``; ``cols``/``vals`` (n, K) the column and value of each row in each
    component (for the pointwise log-likelihood).  Block types: ``tsize`` (T,) coefficients,
    ``tcomp`` (T, kmax) their standard-deviation numbers, ``tcor`` (T,) offset of their
    correlations (-1: none), ``teta`` (T,) LKJ shapes; instances (one per level and type):
    ``icol`` first column, ``itype`` type.
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
    tsize: np.ndarray
    tcomp: np.ndarray
    tcor: np.ndarray
    teta: np.ndarray
    icol: np.ndarray
    itype: np.ndarray
    columns: tuple[np.ndarray, ...]
    cols: np.ndarray
    vals: np.ndarray

    @property
    def q(self) -> int:
        return int(self.Zty.size)

    @property
    def n_cor(self) -> int:
        """Number of correlation parameters."""
        return int(sum(k * (k - 1) // 2 for k in self.tsize))

    def arrays(self) -> tuple:
        """The arguments of :func:`logp_grad` after ``theta, grad``, before the priors."""
        return (
            float(self.n), self.yy, self.Xty, self.XtX, self.Zty, self.ZtX, self.Lp, self.Li,
            self.Ax, self.Rp, self.Rk, self.Rpos, *self.blocks(),
        )  # fmt: skip

    def blocks(self) -> tuple:
        """``tsize, tcomp, tcor, teta, icol, itype``."""
        return self.tsize, self.tcomp, self.tcor, self.teta, self.icol, self.itype


@dataclass(frozen=True)
class Layout:
    """Where each random effect sits: the columns of ``Z`` and the covariance blocks.

    ``columns[f]`` (n_levels, k) the column of every level and coefficient of factor ``f``;
    ``cols``/``vals`` (n, K) each row's column and value in each component; block types ``tsize``,
    ``tcomp``, ``tcor``, ``teta`` and their instances ``icol``, ``itype`` as in :class:`Stats`.
    """

    q: int
    columns: tuple[np.ndarray, ...]
    cols: np.ndarray
    vals: np.ndarray
    tsize: np.ndarray
    tcomp: np.ndarray
    tcor: np.ndarray
    teta: np.ndarray
    icol: np.ndarray
    itype: np.ndarray


def layout(factors: list[Factor], n: int, n_components: int) -> Layout:
    """The columns of the random effects and their covariance blocks.

    Columns are ordered factor by factor, the factor with most levels first (as lme4
    orders its random terms), level-major within a factor (a level's coefficients are
    adjacent, so its covariance block is a diagonal block of ``Z'Z``).
    """
    order = sorted(range(len(factors)), key=lambda f: -factors[f].n_levels)
    offsets, off = {}, 0
    for f in order:
        offsets[f] = off
        off += factors[f].n_levels * factors[f].values.shape[1]
    columns = []
    cols = np.zeros((n, n_components), dtype=np.int64)
    vals = np.zeros((n, n_components))
    types: list[tuple[int, tuple[int, ...], int, float]] = []
    icol, itype = [], []
    for f, fac in enumerate(factors):
        k = fac.values.shape[1]
        colmap = offsets[f] + np.arange(fac.n_levels)[:, None] * k + np.arange(k)[None, :]
        columns.append(colmap)
        for j, c in enumerate(fac.components):
            cols[:, c] = colmap[fac.index, j]
            vals[:, c] = fac.values[:, j]
        for block in fac.covariance_blocks():
            slots = block.slots
            if list(slots) != list(range(slots[0], slots[0] + len(slots))):
                raise ValueError(f"covariance block {slots} is not contiguous")
            types.append((len(slots), tuple(fac.components[s] for s in slots), block.cor, block.eta))
            icol.append(colmap[:, slots[0]])
            itype.append(np.full(fac.n_levels, len(types) - 1))
    kmax = max((t[0] for t in types), default=1)
    tcomp = np.full((len(types), kmax), -1, dtype=np.int64)
    for t, (k, comps, _, _) in enumerate(types):
        tcomp[t, :k] = comps
    return Layout(
        q=off, columns=tuple(columns), cols=cols, vals=vals,
        tsize=np.array([t[0] for t in types], dtype=np.int64), tcomp=tcomp,
        tcor=np.array([t[2] for t in types], dtype=np.int64), teta=np.array([t[3] for t in types], dtype=float),
        icol=np.concatenate(icol).astype(np.int64) if icol else np.zeros(0, np.int64),
        itype=np.concatenate(itype).astype(np.int64) if itype else np.zeros(0, np.int64),
    )  # fmt: skip


def sufficient_stats(y: np.ndarray, X: np.ndarray, factors: list[Factor], n_components: int,
                     dense_min: int = DENSE_MIN) -> Stats:
    """Cross-products of ``y``, ``X`` and ``Z``, the block layout and the symbolic Cholesky of ``A``.

    Columns as :func:`layout` orders them: nested designs then factor with no fill-in at all and
    crossed designs fill in only the smaller factors; ``dense_min`` as :func:`dense_block`.
    """
    import scipy.sparse as sp

    y = np.ascontiguousarray(y, dtype=float)
    X = np.ascontiguousarray(X, dtype=float)
    n = y.size
    lay = layout(factors, n, n_components)
    q, columns, cols, vals = lay.q, lay.columns, lay.cols, lay.vals
    tsize, tcomp, tcor, teta = lay.tsize, lay.tcomp, lay.tcor, lay.teta
    rows_ = [np.arange(n)] * n_components
    cols_ = [cols[:, c] for c in range(n_components)]
    vals_ = [vals[:, c] for c in range(n_components)]
    # every covariance block (a level's adjacent columns) is in the pattern, even where Z'Z has a zero
    pat_r, pat_c = [], []
    for t, k in enumerate(tsize):
        first = lay.icol[lay.itype == t]
        for a in range(k):
            for b in range(k):
                pat_r.append(first + a)
                pat_c.append(first + b)
    if q:
        Z = sp.csr_matrix(
            (np.concatenate(vals_), (np.concatenate(rows_), np.concatenate(cols_))), shape=(n, q)
        )
        ZtZ = (Z.T @ Z).tocsc()
        Zty = np.asarray(Z.T @ y, dtype=float)
        ZtX = np.ascontiguousarray(np.asarray(Z.T @ X, dtype=float).reshape(q, X.shape[1]))
        r, c = np.concatenate(pat_r), np.concatenate(pat_c)
        pattern = abs(ZtZ) + sp.csc_matrix((np.ones(r.size), (r, c)), shape=(q, q))
    else:
        ZtZ = pattern = sp.csc_matrix((0, 0))
        Zty = np.zeros(0)
        ZtX = np.zeros((0, X.shape[1]))
    Lp, Li, Ax, Rp, Rk, Rpos = symbolic(ZtZ, pattern, dense_min)
    return Stats(
        n=n, yy=float(y @ y), Xty=X.T @ y, XtX=np.ascontiguousarray(X.T @ X), Zty=Zty, ZtX=ZtX,
        Lp=Lp, Li=Li, Ax=Ax, Rp=Rp, Rk=Rk, Rpos=Rpos, tsize=tsize, tcomp=tcomp, tcor=tcor, teta=teta,
        icol=lay.icol, itype=lay.itype, columns=tuple(columns), cols=cols, vals=vals,
    )  # fmt: skip


#: Cost of a scalar loop's flop in LAPACK flops, for :func:`dense_block` (measured on the
#: InstEval-shaped design of ``benchmarks/insteval.py``: see there).
_SCALAR_COST = 10.0


def dense_block(counts: np.ndarray, dense_min: int = DENSE_MIN) -> int:
    """First column of the trailing block of ``L`` to store full (zeros included) and leave to LAPACK.

    ``counts`` are the entries of each column of ``L`` (diagonal included).  LAPACK factors and
    inverts a full block of ``nt`` columns in about ``nt^3`` flops; a column left to the scalar
    loops costs about ``1.5 count^2`` of theirs (factor and selected inverse), each
    :data:`_SCALAR_COST` times dearer.  The start minimising the sum is returned, or ``q`` (no
    block) when the best block has fewer than ``dense_min`` columns.  A crossed design's smaller
    factors fill in almost completely and become the block; a nested design's never do.
    """
    q = counts.size
    if q == 0:
        return 0
    nt = (q - np.arange(q + 1)).astype(float)
    sparse = np.concatenate([[0.0], np.cumsum(1.5 * _SCALAR_COST * counts.astype(float) ** 2)])
    t0 = int(np.argmin(nt**3 + sparse))
    return t0 if q - t0 >= dense_min else q


def gradient_flops(Lp: np.ndarray) -> float:
    """The cost of one log-density gradient in LAPACK flops, by :func:`dense_block`'s model.

    ``nt^3`` for a dense trailing block of ``nt`` columns (``dpotrf`` and ``dpotri``), ``1.5 count^2``
    scalar flops, each :data:`_SCALAR_COST` LAPACK flops, for every other column.
    """
    Lp = np.asarray(Lp)
    q = Lp.size - 1
    t0 = int(dense_start(Lp, DENSE_MIN))
    counts = np.diff(Lp[: t0 + 1]).astype(float)
    return float(q - t0) ** 3 + 1.5 * _SCALAR_COST * float(np.sum(counts**2))


def symbolic(ZtZ, pattern=None, dense_min: int = DENSE_MIN) -> tuple[np.ndarray, ...]:
    """Pattern of the Cholesky factor of ``Z'Z + sigma^2 D^-1`` (elimination tree, no pivoting).

    ``pattern`` (default ``Z'Z``'s) is the nonzero structure of ``A``, a superset of ``Z'Z``'s
    holding every covariance block.  Returns ``Lp, Li`` (CSC pattern, diagonal first, rows
    sorted), ``Ax`` (lower triangle of ``Z'Z`` on that pattern) and the row lists
    ``Rp, Rk, Rpos`` that :func:`factor` uses.  The trailing block that :func:`dense_block` picks
    is stored full (its missing entries are zeros of ``L``), so that LAPACK takes it.
    """
    import scipy.sparse as sp

    q = ZtZ.shape[0]
    low = sp.tril(ZtZ if pattern is None else pattern, format="csc")
    low.sort_indices()
    vals = sp.tril(ZtZ, format="csc")
    vals.sort_indices()
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
    t0 = dense_block(np.array([s.size + 1 for s in structs], dtype=np.int64), dense_min)
    for j in range(t0, q):
        structs[j] = np.arange(j + 1, q, dtype=np.int64)
    counts = np.array([s.size + 1 for s in structs], dtype=np.int64)
    Lp = np.zeros(q + 1, dtype=np.int64)
    np.cumsum(counts, out=Lp[1:])
    Li = np.empty(int(Lp[-1]), dtype=np.int64)
    Ax = np.zeros(int(Lp[-1]))
    for j in range(q):
        Li[Lp[j]] = j
        Li[Lp[j] + 1 : Lp[j + 1]] = structs[j]
        rows = vals.indices[vals.indptr[j] : vals.indptr[j + 1]]
        data = vals.data[vals.indptr[j] : vals.indptr[j + 1]]
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
_HEADER = 12  # total length, n, y'y, p, K, q, nnz(L), entries of the row lists, T, kmax, M, C


def pack(stats: Stats, bcode, bpar, scode, spar) -> np.ndarray:
    """All inputs of :func:`logp_grad` in one float64 buffer for :func:`c_logp`."""
    p = stats.Xty.size
    K = np.asarray(scode).size - 1
    ints = [stats.Lp, stats.Li]
    parts = [
        stats.Xty, stats.XtX, stats.Zty, stats.ZtX, *(a.view(np.float64) for a in ints), stats.Ax,
        stats.Rp.view(np.float64), stats.Rk.view(np.float64), stats.Rpos.view(np.float64),
        stats.tsize.view(np.float64), np.ascontiguousarray(stats.tcomp).view(np.float64),
        stats.tcor.view(np.float64), stats.teta, stats.icol.view(np.float64), stats.itype.view(np.float64),
        np.ascontiguousarray(bcode, dtype=np.int64).view(np.float64), np.asarray(bpar, dtype=float),
        np.ascontiguousarray(scode, dtype=np.int64).view(np.float64), np.asarray(spar, dtype=float),
    ]  # fmt: skip
    body = np.concatenate([np.ascontiguousarray(a, dtype=np.float64).ravel() for a in parts])
    header = np.array(
        [_HEADER + body.size, stats.n, stats.yy, p, K, stats.q, stats.Li.size, stats.Rk.size,
         stats.tsize.size, stats.tcomp.shape[1], stats.icol.size, stats.n_cor], dtype=float,
    )  # fmt: skip
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
    T = int(buf[8])
    kmax = int(buf[9])
    M = int(buf[10])
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
    tsize = buf[o : o + T].view(np.int64)
    o += T
    tcomp = buf[o : o + T * kmax].view(np.int64).reshape((T, kmax))
    o += T * kmax
    tcor = buf[o : o + T].view(np.int64)
    o += T
    teta = buf[o : o + T]
    o += T
    icol = buf[o : o + M].view(np.int64)
    o += M
    itype = buf[o : o + M].view(np.int64)
    o += M
    bcode = buf[o : o + p].view(np.int64)
    o += p
    bpar = buf[o : o + 3 * p].reshape((p, 3))
    o += 3 * p
    scode = buf[o : o + K + 1].view(np.int64)
    o += K + 1
    spar = buf[o : o + 3 * (K + 1)].reshape((K + 1, 3))
    return (n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, tsize, tcomp, tcor, teta, icol, itype,
            bcode, bpar, scode, spar)


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
    (n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, tsize, tcomp, tcor, teta, icol, itype,
     bcode, bpar, scode, spar) = _unpack(buf)  # fmt: skip
    if dim != Xty.size + scode.size + int(buf[11]):
        return -1
    val = logp_grad(x, out, n, yy, Xty, XtX, Zty, ZtX, Lp, Li, Ax, Rp, Rk, Rpos, tsize, tcomp, tcor, teta, icol,
                    itype, bcode, bpar, scode, spar)  # fmt: skip
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
