"""lme4's ``lmer`` machinery: penalized least squares in theta, and lmerTest's Satterthwaite df.

Penalized least squares (Bates, Mächler, Bolker & Walker 2015, "Fitting linear mixed-effects
models using lme4", J. Stat. Softw. 67(1), section 3): for the relative covariance factor
``Lambda_theta`` the random effects ``u`` and fixed effects ``beta`` minimise
``||y - X beta - Z Lambda u||^2 + ||u||^2``; with ``A = Lambda' Z'Z Lambda + I`` the
profiled deviance and REML criterion are functions of ``theta`` alone. ``A`` is factored densely
for up to :data:`DENSE_MAX_Q` random effects, otherwise blockwise: the first term (the one with
most levels, as lme4 orders them) is block diagonal, and the rest enters through its dense
Schur complement.

Satterthwaite (lmerTest 3.1, Kuznetsova, Brockhoff & Christensen 2017): for a contrast ``L``,
``df = 2 (L'CL)^2 / (g'Ag)`` with ``varpar = (theta, sigma)``, ``A = 2 H^+`` (``H`` the Hessian
of the deviance in ``varpar``, lmerTest's ``devfun_vp``) and ``g_i = L' dC/dvarpar_i L``
(Jacobian of ``get_covbeta``). Derivatives are numDeriv's Richardson extrapolation with its
default steps, so the df agree with lmerTest's to the precision of its own numerical derivatives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize, sparse

from bayeslmm.formula import ModelFrame, RandomBlock

#: Up to this many random effects ``Lambda' Z'Z Lambda + I`` is factored as a dense matrix.
DENSE_MAX_Q = 400
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


class _DenseFactor:
    """Cholesky factor of a dense ``A``."""

    def __init__(self, a: np.ndarray) -> None:
        self.chol = linalg.cho_factor(a, lower=True, check_finite=False)
        self.logdet = 2 * float(np.sum(np.log(np.diag(self.chol[0]))))

    def solve(self, b: np.ndarray) -> np.ndarray:
        return linalg.cho_solve(self.chol, b, check_finite=False)

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        return _diag_blocks(self.solve(np.eye(self.chol[0].shape[0])), layout)


class _BlockFactor:
    """``A = [[A11, A12], [A12', A22]]`` with ``A11`` block diagonal (nl blocks of k x k), via the
    Schur complement ``S = A22 - A12' A11^-1 A12`` (dense)."""

    def __init__(self, a11: np.ndarray, a12: sparse.csr_matrix, a22: np.ndarray) -> None:
        nl, k, _ = a11.shape
        self.q1 = nl * k
        self.logdet = 2 * float(np.sum(np.log(np.diagonal(np.linalg.cholesky(a11), axis1=1, axis2=2))))
        self.b11 = np.linalg.inv(a11)
        self.B = sparse.bsr_matrix((self.b11, np.arange(nl), np.arange(nl + 1)), shape=(self.q1, self.q1))
        self.a12 = a12
        self.C = sparse.csr_matrix(self.B @ a12)  # A11^-1 A12
        self.chol = None
        if a22.shape[0]:
            self.chol = linalg.cho_factor(a22 - (a12.T @ self.C).toarray(), lower=True, check_finite=False)
            self.logdet += 2 * float(np.sum(np.log(np.diag(self.chol[0]))))

    def solve(self, r: np.ndarray) -> np.ndarray:
        y1 = self.B @ r[: self.q1]
        if self.chol is None:
            return y1
        x2 = linalg.cho_solve(self.chol, r[self.q1 :] - self.a12.T @ y1, check_finite=False)
        return np.concatenate([y1 - self.C @ x2, x2])

    def inv_diag_blocks(self, layout: list[tuple[int, int, int]]) -> list[np.ndarray]:
        first = self.b11.copy()
        if self.chol is None:
            return [first]
        nl, k = first.shape[:2]
        step = max(1, 20000 // k)
        for s in range(0, nl, step):
            ct = self.C[s * k : min(nl, s + step) * k].T.toarray()
            g = linalg.solve_triangular(self.chol[0], ct, lower=True, check_finite=False)
            g = g.reshape(g.shape[0], -1, k)
            first[s : s + g.shape[1]] += np.einsum("ali,alj->lij", g, g)
        q2 = self.chol[0].shape[0]
        rest = [(off - self.q1, n_l, kk) for off, n_l, kk in layout[1:]]
        return [first, *_diag_blocks(linalg.cho_solve(self.chol, np.eye(q2), check_finite=False), rest)]


@dataclass(frozen=True)
class Pls:
    """Solution of the penalized least-squares problem at one theta."""

    theta: np.ndarray
    lam: np.ndarray | sparse.csr_matrix
    factor: _DenseFactor | _BlockFactor
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
        Factor ``A`` densely (default: when it has at most :data:`DENSE_MAX_Q` rows) or blockwise.
    """

    def __init__(self, frame: ModelFrame, reml: bool, dense: bool | None = None) -> None:
        self.blocks = lme4_order(frame.blocks)
        self.reml, self.X, self.y = reml, frame.X, frame.y
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
        self.dense = self.q <= DENSE_MAX_Q if dense is None else dense
        zij = (np.concatenate(rows), np.concatenate(cols))
        self.Z = sparse.csc_matrix((np.concatenate(vals), zij), (self.n, self.q))
        lind = np.concatenate(lind)
        lij = (np.concatenate(lrow), np.concatenate(lcol))
        pattern = sparse.csr_matrix((np.arange(1, lind.size + 1, dtype=float), lij), (self.q, self.q))
        self._lam_pattern = (pattern.indices, pattern.indptr)
        self._lind = lind[pattern.data.astype(np.int64) - 1]
        self._lam_ij, self._lam_ind = lij, lind  # the same entries, for a dense Lambda
        self.ztx, self.zty = np.asarray(self.Z.T @ self.X), np.asarray(self.Z.T @ self.y)
        self.xtx, self.xty = self.X.T @ self.X, self.X.T @ self.y
        self.diag_theta = np.array(diag)
        self.lower = np.where(self.diag_theta, 0.0, -np.inf)
        self.theta0 = self.diag_theta.astype(float)  # lme4's start: identity factors
        if self.dense:
            self.ztz = (self.Z.T @ self.Z).toarray()
        else:
            first = self.blocks[0]
            _, nl, k = self.layout[0]
            self.m11 = np.zeros((nl, k, k))
            np.add.at(self.m11, first.index, first.values[:, :, None] * first.values[:, None, :])
            z1, z2 = self.Z[:, : nl * k], self.Z[:, nl * k :]
            self.z1tz2 = sparse.csr_matrix(z1.T @ z2)
            self.z2tz2 = (z2.T @ z2).toarray()

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

    def factor_of(self, theta: np.ndarray, lam: np.ndarray | sparse.csr_matrix) -> _DenseFactor | _BlockFactor:
        """Factor ``A = Lambda' Z'Z Lambda + I``."""
        if self.dense:
            a = lam.T @ self.ztz @ lam
            a[np.diag_indices_from(a)] += 1.0
            return _DenseFactor(a)
        _, nl, k = self.layout[0]
        q1 = nl * k
        t1 = np.zeros((k, k))
        for m, (i, j) in enumerate(self.tri(k)):
            t1[i, j] = theta[m]
        a11 = np.einsum("ji,ljm,mk->lik", t1, self.m11, t1) + np.eye(k)
        lam1t = sparse.bsr_matrix((np.broadcast_to(t1.T, (nl, k, k)), np.arange(nl), np.arange(nl + 1)))
        lam2 = lam[q1:, q1:]
        a22 = lam2.T @ (lam2.T @ self.z2tz2).T
        a22[np.diag_indices_from(a22)] += 1.0
        return _BlockFactor(a11, sparse.csr_matrix(lam1t @ self.z1tz2 @ lam2), np.asarray(a22))

    def solve(self, theta: np.ndarray) -> Pls:
        """Penalized least squares at ``theta`` (eqs. 16-20 of Bates et al. 2015)."""
        theta = np.asarray(theta, dtype=float)
        lam = self.lam(theta)
        fac = self.factor_of(theta, lam)
        ltzx, ltzy = lam.T @ self.ztx, lam.T @ self.zty
        s = fac.solve(np.column_stack([ltzx, ltzy]))
        sx, sy = s[:, : self.p], s[:, self.p]
        rx_chol = linalg.cho_factor(self.xtx - ltzx.T @ sx, lower=True, check_finite=False)
        beta = linalg.cho_solve(rx_chol, self.xty - ltzx.T @ sy, check_finite=False)
        u = sy - sx @ beta
        resid = self.y - self.X @ beta - self.Z @ (lam @ u)
        ldrx2 = 2 * float(np.sum(np.log(np.diag(rx_chol[0]))))
        return Pls(theta, lam, fac, ldrx2, rx_chol, beta, u, float(resid @ resid + u @ u))

    def criterion(self, pls: Pls) -> float:
        """Profiled deviance (ML) or REML criterion (eqs. 34 and 41 of Bates et al. 2015)."""
        if self.reml:
            nmp = self.n - self.p
            return pls.ldl2 + pls.ldrx2 + nmp * (1 + np.log(2 * np.pi * pls.pwrss / nmp))
        return pls.ldl2 + self.n * (1 + np.log(2 * np.pi * pls.pwrss / self.n))

    def objective(self, theta: np.ndarray) -> float:
        """The criterion as a function of theta (what lme4's ``devfun`` returns)."""
        return self.criterion(self.solve(theta))

    def devfun_vp(self, varpar: np.ndarray) -> float:
        """Deviance as a function of ``(theta, sigma)`` (lmerTest's ``devfun_vp``)."""
        pls, s2 = self.solve(varpar[:-1]), varpar[-1] ** 2
        dev = pls.ldl2 + pls.pwrss / s2 + self.n * np.log(2 * np.pi * s2)
        if self.reml:
            dev += pls.ldrx2 - self.p * np.log(2 * np.pi * s2)
        return dev

    def covbeta(self, varpar: np.ndarray) -> np.ndarray:
        """``sigma^2 (R_X' R_X)^-1`` at ``(theta, sigma)`` (lmerTest's ``get_covbeta``)."""
        pls = self.solve(varpar[:-1])
        return varpar[-1] ** 2 * linalg.cho_solve(pls.rx_chol, np.eye(self.p), check_finite=False)

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
            if self.gradient_ok(x):
                return x, True
        return x, False

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
