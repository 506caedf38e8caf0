"""lme4's ``lmer`` machinery: penalized least squares in theta, and lmerTest's Satterthwaite df.

Penalized least squares (Bates, Mächler, Bolker & Walker 2015, "Fitting linear mixed-effects
models using lme4", J. Stat. Softw. 67(1), section 3): for the relative covariance factor
``Lambda_theta`` the random effects ``u`` and fixed effects ``beta`` minimise
``||y - X beta - Z Lambda u||^2 + ||u||^2``; with ``A = Lambda' Z'Z Lambda + I`` the
profiled deviance and REML criterion are functions of ``theta`` alone. Models with several terms
and at most :data:`DENSE_MAX_Q` random effects take the QR of lme4's augmented system densely;
the others are factored blockwise: the first term (the one with most levels, as lme4 orders
them) is block diagonal, and so is each next one in the Schur complement left by those before
it in nested designs (eliminated in turn); what remains (crossed terms) is factored densely.
``R_X``, the dense path and the nested terms are factored from sums of squares, never from a
downdated difference that cancels to rounding error at large theta (:meth:`LmerProblem.solve`,
:meth:`LmerProblem.factor_of`): their criterion stays finite up to theta ~ 1e12 at least. Only
the Schur complement of crossed terms beyond :data:`DENSE_MAX_Q` is downdated, as lme4's is;
it loses positive definiteness when two crossed terms both have theta ~ 1e8.

Satterthwaite (lmerTest 3.1, Kuznetsova, Brockhoff & Christensen 2017): for a contrast ``L``,
``df = 2 (L'CL)^2 / (g'Ag)`` with ``varpar = (theta, sigma)``, ``A = 2 H^+`` (``H`` the Hessian
of the deviance in ``varpar``, lmerTest's ``devfun_vp``) and ``g_i = L' dC/dvarpar_i L``
(Jacobian of ``get_covbeta``). Derivatives are numDeriv's Richardson extrapolation with its
default steps, so the df agree with lmerTest's to the precision of its own numerical derivatives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numba as nb
import numpy as np
import pandas as pd
from scipy import linalg, optimize, sparse

from bayeslmm.model.formula import ModelFrame, RandomBlock, combined_codes

try:  # a dependency of pymc's
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

#: Up to this many random effects a model with several terms is factored densely (measured on
#: nested designs: the dense path is faster up to about 200 random effects, the blockwise one beyond).
DENSE_MAX_Q = 200
#: Largest number of entries of a dense work array (chunks of rows or columns).
_CHUNK = 4_000_000
#: Most thetas whose criterion pieces :meth:`LmerProblem.summary` remembers (then it starts afresh).
_MEMO = 10_000
#: numDeriv's ``zero.tol``: below it a coordinate gets the absolute step ``eps``.
_ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))


# ---------------------------------------------------------------------------------------
# numDeriv's Richardson derivatives and lmerTest's Satterthwaite df
# ---------------------------------------------------------------------------------------


def _richardson(a: np.ndarray) -> np.ndarray:
    """numDeriv's Richardson extrapolation (v = 2) over the first axis of ``a``."""
    for m in range(1, a.shape[0]):
        a = (a[1:] * 4.0**m - a[:-1]) / (4.0**m - 1.0)
    return a[0]


def _steps(x: np.ndarray, d: float, eps: float) -> np.ndarray:
    return np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)


def jacobian(
    func: Callable[[np.ndarray], np.ndarray], x: np.ndarray, d: float = 1e-4, eps: float = 1e-4, r: int = 4
) -> np.ndarray:
    """Jacobian, shape (len(func(x)), len(x)), as ``numDeriv::jacobian`` (Richardson, r steps)."""
    x = np.asarray(x, dtype=float)
    h0 = _steps(x, d, eps)
    cols = []
    for i in range(x.size):
        a = []
        for k in range(r):
            e = np.zeros_like(x)
            e[i] = h0[i] / 2**k
            a.append((np.ravel(func(x + e)) - np.ravel(func(x - e))) / (2 * e[i]))
        cols.append(_richardson(np.array(a)))
    return np.column_stack(cols)


def hessian(
    func: Callable[[np.ndarray], float], x: np.ndarray, d: float = 0.1, eps: float = 1e-4, r: int = 4
) -> np.ndarray:
    """Hessian of a scalar function as ``numDeriv::hessian`` (Bates-Watts ``genD``, d = 0.1)."""
    x = np.asarray(x, dtype=float)
    n, f0, h0 = x.size, float(func(x)), _steps(x, d, eps)
    hess = np.zeros((n, n))
    pairs = [(i, i) for i in range(n)] + [(i, j) for i in range(n) for j in range(i)]  # diagonal first
    for i, j in pairs:
        a = []
        for k in range(r):
            h = h0 / 2**k
            e = np.zeros(n)
            e[i] = h[i]
            e[j] = h[j]
            val = func(x + e) - 2 * f0 + func(x - e)
            if i == j:
                a.append(val / h[i] ** 2)
            else:
                a.append((val - hess[i, i] * h[i] ** 2 - hess[j, j] * h[j] ** 2) / (2 * h[i] * h[j]))
        hess[i, j] = hess[j, i] = _richardson(np.array(a))
    return hess


@dataclass(frozen=True)
class Satterthwaite:
    """lmerTest's pieces for Satterthwaite tests.

    Attributes
    ----------
    df : ndarray
        Degrees of freedom of each fixed effect (NaN when the Hessian of the deviance has a
        negative eigenvalue, where lmerTest gives up too).
    varpar_cov : ndarray
        ``A = 2 H^+``, asymptotic covariance of ``(theta, sigma)``.
    jac : ndarray, shape (p, p, n_varpar)
        Derivatives of the fixed-effect covariance matrix with respect to ``(theta, sigma)``.
    vcov : ndarray
        Fixed-effect covariance matrix at the estimates.
    """

    df: np.ndarray
    varpar_cov: np.ndarray
    jac: np.ndarray
    vcov: np.ndarray

    def contrast_df(self, L: np.ndarray) -> float:
        """Satterthwaite df of ``L' beta``: ``2 (L'CL)^2 / (g'Ag)`` (lmerTest's ``contest1D``)."""
        L = np.asarray(L, dtype=float)
        g = np.einsum("i,ijk,j->k", L, self.jac, L)
        denom = float(g @ self.varpar_cov @ g)
        if not np.isfinite(denom):
            return float("nan")
        return 2 * float(L @ self.vcov @ L) ** 2 / denom if denom > 0 else float("inf")


def satterthwaite(
    devfun_vp: Callable[[np.ndarray], float],
    covbeta: Callable[[np.ndarray], np.ndarray],
    varpar: np.ndarray,
    tol: float = 1e-8,
) -> Satterthwaite:
    """lmerTest's ``boost_lmer`` then ``contest1D`` for every unit contrast.

    Parameters
    ----------
    devfun_vp : callable
        Deviance (REML or ML) as a function of ``varpar = (theta, sigma)``.
    covbeta : callable
        ``sigma^2 (X'V*^-1 X)^-1`` as a function of ``varpar``.
    varpar : ndarray
        ``(theta, sigma)`` at the estimates.
    tol : float
        Hessian eigenvalues below ``tol`` count as zero (lmerTest's ``tol``).
    """
    varpar = np.asarray(varpar, dtype=float)
    vcov = covbeta(varpar)
    p = vcov.shape[0]
    evals, evecs = np.linalg.eigh(hessian(devfun_vp, varpar))
    jac = jacobian(lambda v: covbeta(v).ravel(), varpar).reshape(p, p, varpar.size)
    if np.any(evals < -tol):
        warnings.warn(
            "no Satterthwaite df (NaN, as lmerTest gives none): the Hessian of the deviance in "
            "(theta, sigma) has negative eigenvalues (a singular fit, or not converged)",
            RuntimeWarning,
            stacklevel=3,
        )
        return Satterthwaite(np.full(p, np.nan), np.full((varpar.size,) * 2, np.nan), jac, vcov)
    if np.any(np.abs(evals) < tol):
        warnings.warn("the Hessian of the deviance is singular (converged?)", RuntimeWarning, stacklevel=3)
    pos = evals > tol
    res = Satterthwaite(np.empty(p), 2 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T, jac, vcov)
    return Satterthwaite(np.array([res.contrast_df(row) for row in np.eye(p)]), res.varpar_cov, jac, vcov)


# ---------------------------------------------------------------------------------------
# Penalized least squares
# ---------------------------------------------------------------------------------------


def blas_threads() -> AbstractContextManager:
    """One BLAS thread for the lme4 side's linear algebra.

    Its dense factors are at most the crossed terms' Schur complement (1,142 rows for InstEval),
    where a second thread gains little and stalls badly on a loaded machine: a 1,142 x 1,142
    Cholesky took 0.03 s on one thread and 0.3-2.3 s on two (2 cores, load 2.7), one REML
    criterion of InstEval's design 0.11 s against 2.5 s.
    """
    if threadpool_limits is None:
        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def lme4_order(blocks: tuple[RandomBlock, ...]) -> tuple[RandomBlock, ...]:
    """Random terms in lme4's order: by decreasing number of levels (``mkReTrms``'s reordering)."""
    nl = np.array([len(b.levels) for b in blocks])
    if np.any(np.diff(nl) > 0):
        return tuple(blocks[i] for i in np.argsort(nl, kind="stable")[::-1])
    return tuple(blocks)


def _diag_blocks(m: np.ndarray, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """Diagonal (k x k) blocks of a dense matrix for each (offset, n_levels, k) of ``layout``."""
    out = []
    for off, nl, k in layout:
        sub = m[off : off + nl * k, off : off + nl * k].reshape(nl, k, nl, k)
        out.append(sub[np.arange(nl), :, np.arange(nl), :])
    return out


def _row_sets(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``Z`` that are the same (``columns``: each row's column and value in each random-effect
    component): the first row of each set, each row's set, and each set's count."""
    key = combined_codes([pd.factorize(c) for c in columns])
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse.reshape(-1), counts


def _distinct_rows(z: sparse.spmatrix, xy: np.ndarray, sets: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """``[X y] - Z Lambda s`` over the distinct rows of ``Z`` (``sets``: :func:`_row_sets`), for the sparse path's
    QR: ``(Zd, XYd, R_w)`` with the rows sharing a row of Z as one row, their mean times the square root of
    their count, and ``R_w`` the R of every row's deviation from its set's mean. The stacked rows
    ``[R_w; XYd - Zd Lambda s]`` have the same sums of squares and cross-products as the n rows for every theta
    (within a set, ``sum (xy_i - c)(xy_i - c)' = sum (xy_i - m)(xy_i - m)' + n_set (m - c)(m - c)'``), so the
    same R: 480,000 rows in 24,000 cells are a QR of 24,000 rows (8,000 x 3 x 20: an evaluation 20 ms -> 9 ms,
    6 ms with scalar blocks inverted by division)."""
    first, inverse, counts = sets
    means = np.column_stack([np.bincount(inverse, weights=c, minlength=counts.size) for c in xy.T]) / counts[:, None]
    r_within = np.linalg.qr(xy - means[inverse], mode="r")
    return _weighted_rows(z, first, counts), means * np.sqrt(counts)[:, None], r_within


def _weighted_rows(z: sparse.spmatrix, first: np.ndarray, counts: np.ndarray) -> sparse.csr_matrix:
    """The rows ``first`` of ``z``, each times the square root of its set's count: the same cross-products."""
    return sparse.csr_matrix(sparse.diags(np.sqrt(counts.astype(float))) @ sparse.csr_matrix(z)[first])


def _qr_r(m: np.ndarray) -> np.ndarray:
    """The R of a QR decomposition of ``m`` (rows >= columns), with a non-negative diagonal."""
    r = np.linalg.qr(m, mode="r")
    return r * np.where(np.diag(r) < 0, -1.0, 1.0)[:, None]


class _DenseFactor:
    """``A = L L'`` from its lower-triangular factor ``L``."""

    def __init__(self, lower: np.ndarray) -> None:
        self.chol = (lower, True)
        self.logdet = 2 * float(np.sum(np.log(np.diag(lower))))

    @classmethod
    def of(cls, a: np.ndarray) -> _DenseFactor:
        """The Cholesky factor of a dense symmetric positive-definite ``a``."""
        # a symmetric: its transpose is the same matrix, in the (Fortran) order LAPACK reads without a copy
        return cls(linalg.cholesky(a.T, lower=True, check_finite=False))

    def solve(self, b: np.ndarray) -> np.ndarray:
        return linalg.cho_solve(self.chol, b, check_finite=False)

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        return _diag_blocks(self.solve(np.eye(self.chol[0].shape[0])), layout)


class _BlockDiag:
    """Block-diagonal ``A`` from its (nl, k, k) diagonal blocks (one term's levels)."""

    def __init__(self, a: np.ndarray) -> None:
        nl, k, _ = a.shape
        self.q = nl * k
        if k == 1:  # scalar blocks: LAPACK's batched calls cost ~0.1 us a block more than the division
            self.logdet, self.inv = float(np.sum(np.log(a[:, 0, 0]))), 1.0 / a
        else:
            self.logdet = 2 * float(np.sum(np.log(np.diagonal(np.linalg.cholesky(a), axis1=1, axis2=2))))
            self.inv = np.linalg.inv(a)
        self.B = sparse.bsr_matrix((self.inv, np.arange(nl), np.arange(nl + 1)), shape=(self.q, self.q))

    def solve(self, r: np.ndarray) -> np.ndarray:
        return self.B @ r

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        return [self.inv.copy()]


class _Schur:
    """``A = [[A11, A12], [A12', A22]]`` from a factor ``first`` of A11, ``C = A11^-1 A12`` (sparse
    or dense) and a factor ``rest`` of the Schur complement ``S = A22 - A12' C``."""

    def __init__(self, first: _BlockDiag | _Schur, c, rest: _DenseFactor | _BlockDiag | _Schur) -> None:
        self.first, self.C, self.rest = first, c, rest
        self.q1 = c.shape[0]
        self.logdet = first.logdet + rest.logdet

    def solve(self, r: np.ndarray) -> np.ndarray:
        r1 = r[: self.q1]
        y1 = self.first.solve(r1)
        x2 = self.rest.solve(r[self.q1 :] - self.C.T @ r1)
        return np.concatenate([y1 - self.C @ x2, x2])

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Diagonal blocks of ``A^-1``: those of ``A11^-1 + C S^-1 C'``, then those of ``S^-1``."""
        n1 = sum(off < self.q1 for off, _, _ in layout)
        blocks = self.first.inv_diag_blocks(layout[:n1])
        q2 = self.C.shape[1]
        if isinstance(self.rest, _BlockDiag) and sparse.issparse(self.C):  # nested: C S^-1 C' stays sparse
            cs = sparse.csr_matrix(self.C @ self.rest.B)  # S^-1 is symmetric
            for (off, nl, k), blk in zip(layout[:n1], blocks, strict=True):
                rows_c, rows_cs = self.C[off : off + nl * k], cs[off : off + nl * k]
                for a in range(k):
                    for b in range(k):  # entry (a, b) of each level's block: row a of C S^-1 . row b of C
                        blk[:, a, b] += np.asarray(rows_cs[a::k].multiply(rows_c[b::k]).sum(axis=1)).ravel()
            rest = [(off - self.q1, nl, k) for off, nl, k in layout[n1:]]
            return [*blocks, *self.rest.inv_diag_blocks(rest)]
        for (off, nl, k), blk in zip(layout[:n1], blocks, strict=True):
            step = max(1, _CHUNK // (k * q2))
            for s in range(0, nl, step):
                ct = self.C[off + s * k : off + min(nl, s + step) * k].T
                ct = ct.toarray() if sparse.issparse(ct) else ct
                g = self.rest.solve(ct)
                blk[s : s + ct.shape[1] // k] += np.einsum("ali,alj->lij", ct.reshape(q2, -1, k), g.reshape(q2, -1, k))
        rest = [(off - self.q1, nl, k) for off, nl, k in layout[n1:]]
        return [*blocks, *self.rest.inv_diag_blocks(rest)]


def _diag_blocks_sparse(g: sparse.spmatrix, nl: int, k: int) -> np.ndarray:
    """The (nl, k, k) diagonal blocks of a sparse matrix."""
    idx = np.arange(nl) * k
    out = np.empty((nl, k, k))
    for i in range(k):
        for j in range(k):
            out[:, i, j] = g.diagonal(j - i)[idx + min(i, j)]
    return out


@nb.njit(cache=True, nogil=True)
def _downdate(ap, ai, ax, bp, bi, bx, out):  # pragma: no cover (compiled; tested through factor_of)
    """``out -= A'B`` for CSR ``A`` and ``B`` with the same rows and a symmetric product (only its lower
    triangle is accumulated, then mirrored): the crossed terms' Schur complement, dense, in about
    sum over rows of nnz(A row) x nnz(B row) steps (InstEval: 3 million, 0.01 s, against 0.025 s for
    SciPy's sparse product and its conversion to dense)."""
    for r in range(ap.size - 1):
        for s in range(ap[r], ap[r + 1]):
            a, v = ai[s], ax[s]
            for t in range(bp[r], bp[r + 1]):
                b = bi[t]
                if b <= a:
                    out[a, b] -= v * bx[t]
    for a in range(out.shape[0]):
        for b in range(a):
            out[b, a] = out[a, b]


@dataclass(frozen=True)
class Pls:
    """Solution of the penalized least-squares problem at one theta."""

    theta: np.ndarray
    lam: np.ndarray | sparse.csr_matrix
    factor: _DenseFactor | _BlockDiag | _Schur
    ldrx2: float
    rx_chol: tuple
    beta: np.ndarray
    u: np.ndarray
    pwrss: float

    @property
    def ldl2(self) -> float:
        """``log |L_theta|^2 = log det(Lambda' Z'Z Lambda + I)``."""
        return self.factor.logdet


class LmerProblem:
    """lme4's penalized least squares for one model frame (cross-products computed once).

    Parameters
    ----------
    frame : ModelFrame
    reml : bool
    dense : bool, optional
        Factor ``A`` densely or blockwise (default: densely for several terms with at most
        :data:`DENSE_MAX_Q` random effects in all).
    """

    def __init__(self, frame: ModelFrame, reml: bool, dense: bool | None = None) -> None:
        self.blocks = lme4_order(frame.blocks)
        self.reml, self.X, self.y = reml, frame.X, frame.y
        self._summaries: dict[bytes, tuple] = {}
        self.n, self.p = self.X.shape
        rows, cols, vals, lrow, lcol, lind, diag, self.theta_names, self.layout = ([] for _ in range(9))
        off_q = off_t = 0
        for blk in self.blocks:
            nl, k = len(blk.levels), blk.values.shape[1]
            for j in range(k):
                rows.append(np.arange(self.n))
                cols.append(off_q + blk.index * k + j)
                vals.append(blk.values[:, j])
            coefs = blk.term.coefs
            for m, (i, j) in enumerate(self.tri(k)):
                lrow.append(off_q + np.arange(nl) * k + i)
                lcol.append(off_q + np.arange(nl) * k + j)
                lind.append(np.full(nl, off_t + m))
                diag.append(i == j)
                name = coefs[i] if i == j else f"{coefs[i]}.{coefs[j]}"
                self.theta_names.append(f"{blk.term.group}.{name}")
            self.layout.append((off_q, nl, k))
            off_q += nl * k
            off_t += k * (k + 1) // 2
        self.q = off_q
        if dense is None:  # one term: A is block diagonal, so the sparse path is never slower
            dense = len(self.blocks) > 1 and self.q <= DENSE_MAX_Q
        self.dense = dense
        zij = (np.concatenate(rows), np.concatenate(cols))
        self.Z = sparse.csc_matrix((np.concatenate(vals), zij), (self.n, self.q))
        lind = np.concatenate(lind)
        lij = (np.concatenate(lrow), np.concatenate(lcol))
        pattern = sparse.csr_matrix((np.arange(1, lind.size + 1, dtype=float), lij), (self.q, self.q))
        self._lam_pattern = (pattern.indices, pattern.indptr)
        self._lind = lind[pattern.data.astype(np.int64) - 1]
        self._lam_ij, self._lam_ind = lij, lind  # the same entries, for a dense Lambda
        self.xy = np.column_stack([self.X, self.y])
        self.ztxy = np.asarray(self.Z.T @ self.xy)
        self.diag_theta = np.array(diag)
        self.lower = np.where(self.diag_theta, 0.0, -np.inf)
        self.theta0 = self.diag_theta.astype(float)  # lme4's start: identity factors
        if self.dense:
            # R of the QR of [Z X y]: lme4's augmented system needs no more of the rows
            zxy, ncol = sparse.hstack([self.Z, self.xy]).tocsr(), self.q + self.p + 1
            r0 = np.zeros((0, ncol))
            step = max(ncol, _CHUNK // ncol)
            for i in range(0, self.n, step):
                r0 = np.linalg.qr(np.vstack([r0, zxy[i : i + step].toarray()]), mode="r")
            self.r0 = r0
            self._eye = np.eye(self.q, ncol)
        else:
            sets = _row_sets(cols + vals)
            self.zd, self.xyd, self.r_within = _distinct_rows(self.Z, self.xy, sets)
            first = self.blocks[0]
            _, nl, k = self.layout[0]
            self.m11 = np.zeros((nl, k, k))
            np.add.at(self.m11, first.index, first.values[:, :, None] * first.values[:, None, :])
            self.block_levels, qe = self._block_levels()
            ze, zr = self.Z[:, :qe], self.Z[:, qe:]
            self.z1tze = sparse.csr_matrix(self.Z[:, : nl * k].T @ ze[:, nl * k :])
            self.zetzr = sparse.csr_matrix(ze.T @ zr)
            self.zrtzr = (zr.T @ zr).toarray()
            self.qe = qe
            self.rest_diagonal = all(b.values.shape[1] == 1 for b in self.blocks[self.block_levels :])
            if self.block_levels > 1:
                # the nested terms' columns of Z, distinct rows only, each weighted by the square
                # root of its count: the same cross-products (rows repeat within cells unless
                # there are slopes)
                ke = sum(b.values.shape[1] for b in self.blocks[: self.block_levels])
                if ke < len(cols):  # crossed terms too: the nested columns' own (coarser) sets
                    first_e, _, counts_e = _row_sets(cols[:ke] + vals[:ke])
                    zw = _weighted_rows(ze, first_e, counts_e)
                else:  # every term nested: the sets of the QR's rows
                    zw = self.zd
                self.zw1, self.zwe = zw[:, : nl * k], zw[:, nl * k :]

    @property
    def crossed_q(self) -> int:
        """Random effects in the dense Schur complement of the crossed terms (0 on the dense path and for
        nested designs): what makes one evaluation of the criterion cost more than its rows."""
        return 0 if self.dense else self.q - self.qe

    def _block_levels(self) -> tuple[int, int]:
        """How many leading terms the sparse path eliminates one by one, and their random effects.

        The first term, and each next one whose part of the Schur complement left by those
        before it is block diagonal (all terms, in nested designs); found once from the
        pattern of ``A`` (non-negative entries, so no entry cancels by chance).
        """
        zp = self.Z.copy()
        zp.data[:] = 1.0
        zl = zp @ self.lam(np.ones(self.diag_theta.size))
        a = sparse.csr_matrix(zl.T @ zl + sparse.identity(self.q))
        qe = 0
        for t, (_, nl, k) in enumerate(self.layout):
            qt = nl * k
            g = a[:qt, :qt].tocoo()
            if np.any(g.row // k != g.col // k):
                return t, qe
            qe += qt
            bp = sparse.kron(sparse.identity(nl), np.ones((k, k)))
            a = sparse.csr_matrix(a[qt:, qt:] + a[qt:, :qt] @ bp @ a[:qt, qt:])
        return len(self.layout), qe

    @staticmethod
    def tri(k: int) -> list[tuple[int, int]]:
        """Lower-triangle positions of a k x k factor in lme4's (column-major) theta order."""
        return [(i, j) for j in range(k) for i in range(j, k)]

    def lam(self, theta: np.ndarray) -> np.ndarray | sparse.csr_matrix:
        """``Lambda_theta``: block diagonal, one lower-triangular block per term and level.

        A dense array in dense mode, a CSR matrix otherwise.
        """
        theta = np.asarray(theta, dtype=float)
        if self.dense:
            lam = np.zeros((self.q, self.q))
            lam[self._lam_ij] = theta[self._lam_ind]
            return lam
        return sparse.csr_matrix((theta[self._lind], *self._lam_pattern), (self.q, self.q))

    def factor_of(self, theta: np.ndarray, lam: sparse.csr_matrix) -> _BlockDiag | _Schur:
        """Factor ``A = Lambda' Z'Z Lambda + I`` blockwise (the sparse path).

        The first term's blocks come from its cross-products. Terms nested in it
        (:meth:`_block_levels`) are eliminated in turn through the residual ``R = [Ze Lambda_e -
        Z1 Lambda1 C; -C; I]`` of their columns of ``[Z Lambda; I]`` after projection on those
        before (over Z's distinct rows, weighted): each Schur complement is a cross-product,
        positive definite for every theta, where the downdate ``A22 - A12' C`` cancels to
        rounding error (an indefinite matrix) once two nested terms both have a large theta.
        The others (crossed terms) enter through their dense Schur complement, downdated from
        the cross-products as before (its residual would be dense: n rows by their levels).
        """
        _, nl, k = self.layout[0]
        q1, qe = nl * k, self.qe
        t1 = np.zeros((k, k))
        for m, (i, j) in enumerate(self.tri(k)):
            t1[i, j] = theta[m]
        first = _BlockDiag(np.einsum("ji,ljm,mk->lik", t1, self.m11, t1) + np.eye(k))
        lam1, lame = lam[:q1, :q1], lam[q1:qe, q1:qe]
        if qe > q1:  # the nested terms, eliminated one by one
            c = sparse.csr_matrix(first.B @ (lam1.T @ self.z1tze @ lame))
            r = sparse.vstack([self.zwe @ lame - self.zw1 @ (lam1 @ c), -c, sparse.identity(qe - q1)]).tocsc()
            parts = [(first, c)]
            for _, nl_t, k_t in self.layout[1 : self.block_levels]:
                r1, r = r[:, : nl_t * k_t], r[:, nl_t * k_t :]
                d = _BlockDiag(_diag_blocks_sparse((r1.T @ r1).tocsr(), nl_t, k_t))
                c = sparse.csr_matrix(d.B @ (r1.T @ r)) if r.shape[1] else None
                parts.append((d, c))
                r = sparse.csc_matrix(r - r1 @ c) if r.shape[1] else r
            first = parts[-1][0]
            for d, c in reversed(parts[:-1]):
                first = _Schur(d, c, first)
        if qe == self.q:
            return first
        lamr = lam[qe:, qe:]
        aer = sparse.csr_matrix(lam[:qe, :qe].T @ self.zetzr @ lamr)
        if self.rest_diagonal:  # scalar crossed terms: Lambda_r is diagonal
            d = lamr.diagonal()
            s = d[:, None] * self.zrtzr * d
        else:
            s = lamr.T @ (lamr.T @ self.zrtzr).T
        if isinstance(first, _BlockDiag):
            c = sparse.csr_matrix(first.B @ aer)
            _downdate(aer.indptr, aer.indices, aer.data, c.indptr, c.indices, c.data, s)
        else:
            c = first.solve(aer.toarray())
            s -= aer.T @ c
        s[np.diag_indices_from(s)] += 1.0
        return _Schur(first, c, _DenseFactor.of(s))

    def solve(self, theta: np.ndarray) -> Pls:
        """Penalized least squares at ``theta`` (eqs. 16-20 of Bates et al. 2015).

        ``R_X`` (with ``R_X beta = r_Xy`` and ``pwrss = r_yy^2``) is never a Cholesky factor of
        the downdated ``X'X - R_ZX'R_ZX``: that difference cancels to rounding error (an
        indefinite matrix) once an intercept lies in the span of a term with a large theta,
        as the optimizer's and the profiler's line searches try. The dense path takes the QR
        of lme4's augmented system ``[Z Lambda, X, y; I, 0, 0]`` (its rows compressed to the R
        of ``[Z X y]``); the sparse one the QR of ``[X y; 0 0]`` less its projection on the
        columns of ``[Z Lambda; I]``. Both are sums of squares, positive definite for every theta.
        """
        theta = np.asarray(theta, dtype=float)
        lam = self.lam(theta)
        q, p = self.q, self.p
        if self.dense:
            top = self.r0.copy()
            top[:, :q] = self.r0[:, :q] @ lam
            r = _qr_r(np.vstack([top, self._eye]))
            fac, rzxy, rxy = _DenseFactor(r[:q, :q].T), r[:q, q:], r[q:, q:]
        else:
            fac = self.factor_of(theta, lam)
            s = fac.solve(lam.T @ self.ztxy)  # A^-1 Lambda'Z'[X y]
            rxy = _qr_r(np.vstack([self.r_within, self.xyd - self.zd @ (lam @ s), s]))
        rx = rxy[:p, :p]
        beta = linalg.solve_triangular(rx, rxy[:p, p], check_finite=False)
        if self.dense:
            u = linalg.solve_triangular(r[:q, :q], rzxy[:, p] - rzxy[:, :p] @ beta, check_finite=False)
        else:
            u = s[:, p] - s[:, :p] @ beta
        ldrx2 = 2 * float(np.sum(np.log(np.diag(rx))))
        return Pls(theta, lam, fac, ldrx2, (rx.T, True), beta, u, float(rxy[p, p] ** 2))

    def criterion(self, pls: Pls) -> float:
        """Profiled deviance (ML) or REML criterion (eqs. 34 and 41 of Bates et al. 2015)."""
        if self.reml:
            nmp = self.n - self.p
            return pls.ldl2 + pls.ldrx2 + nmp * (1 + np.log(2 * np.pi * pls.pwrss / nmp))
        return pls.ldl2 + self.n * (1 + np.log(2 * np.pi * pls.pwrss / self.n))

    def objective(self, theta: np.ndarray) -> float:
        """The criterion as a function of theta (what lme4's ``devfun`` returns)."""
        return self.criterion(self.solve(theta))

    def summary(self, theta: np.ndarray) -> tuple[float, float, float, tuple]:
        """``(ldl2, ldrx2, pwrss, rx_chol)`` at ``theta``, remembered: numDeriv's steps in sigma (and
        each mixed step of the Hessian with sigma) revisit the same theta (InstEval-shaped: lmerTest's
        Hessian and Jacobian solve 73 thetas instead of 114)."""
        key = np.asarray(theta, dtype=float).tobytes()
        hit = self._summaries.get(key)
        if hit is None:
            if len(self._summaries) >= _MEMO:
                self._summaries.clear()
            pls = self.solve(theta)
            hit = self._summaries[key] = (pls.ldl2, pls.ldrx2, pls.pwrss, pls.rx_chol)
        return hit

    def devfun_vp(self, varpar: np.ndarray) -> float:
        """Deviance as a function of ``(theta, sigma)`` (lmerTest's ``devfun_vp``)."""
        (ldl2, ldrx2, pwrss, _), s2 = self.summary(varpar[:-1]), varpar[-1] ** 2
        dev = ldl2 + pwrss / s2 + self.n * np.log(2 * np.pi * s2)
        if self.reml:
            dev += ldrx2 - self.p * np.log(2 * np.pi * s2)
        return dev

    def covbeta(self, varpar: np.ndarray) -> np.ndarray:
        """``sigma^2 (R_X' R_X)^-1`` at ``(theta, sigma)`` (lmerTest's ``get_covbeta``)."""
        rx_chol = self.summary(varpar[:-1])[3]
        return varpar[-1] ** 2 * linalg.cho_solve(rx_chol, np.eye(self.p), check_finite=False)

    def optimize(self) -> tuple[np.ndarray, bool]:
        """Minimise the criterion under lme4's bounds from lme4's start; return theta, converged."""
        bounds = optimize.Bounds(self.lower, np.full(self.lower.size, np.inf))
        x = self.theta0
        for _ in range(3):
            res = optimize.minimize(
                self.objective, x, method="L-BFGS-B", jac="3-point", bounds=bounds,
                options={"ftol": 1e-15, "gtol": 1e-8, "maxiter": 2000},
            )
            x = np.maximum(res.x, self.lower)
            downhill = self.off_the_bound(x)
            if downhill is not None:
                x = downhill
            elif self.gradient_ok(x):
                return x, True
        return x, False

    def off_the_bound(self, theta: np.ndarray, step: float = 1e-2) -> np.ndarray | None:
        """A lower point with ``step`` for each diagonal theta below it that gains from it, or None.

        The criterion is even in each diagonal element of a factor, so near 0 its slope is
        near 0 and the gradient check passes even where the curvature is negative (a saddle
        L-BFGS-B can land on by projecting a step onto the bound).
        """
        f0, out = self.objective(theta), theta.copy()
        for i in np.flatnonzero(self.diag_theta & (theta < step)):
            t = theta.copy()
            t[i] = step
            if self.objective(t) < f0:
                out[i] = step
        return None if np.array_equal(out, theta) else out

    def gradient_ok(self, theta: np.ndarray, tol: float = 1e-3) -> bool:
        """Whether the projected central-difference gradient is below ``tol`` (deviance per unit theta)."""
        f0, grad = self.objective(theta), np.empty(theta.size)
        for i in range(theta.size):
            e = np.zeros(theta.size)
            e[i] = h = 1e-5 * max(1.0, abs(theta[i]))
            if self.diag_theta[i] and theta[i] - h < 0:  # at the bound only a downhill slope counts
                grad[i] = min(0.0, (self.objective(theta + e) - f0) / h)
            else:
                grad[i] = (self.objective(theta + e) - self.objective(theta - e)) / (2 * h)
        return bool(np.all(np.isfinite(grad)) and np.max(np.abs(grad)) < tol)
