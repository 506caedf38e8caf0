"""lme4's side on InstEval's crossed design, ``y ~ service + (1|s) + (1|d) + (1|dept)``, at a tenth of its size.

Data: tests/data/insteval_small.csv, ``benchmarks/insteval.py --scale 0.1 --seed 1 --write-csv`` (297
students x 113 lecturers x 14 departments, 7,295 rows, InstEval's crossing pattern). Reference:
tests/data/insteval_lme4.json, written by tests/data/r/insteval.R (R 4.2.2, lme4 1.1-31; provenance in its
``info``). The design takes the blockwise path with a dense Schur complement of the crossed terms (127
rows), the path InstEval itself takes with 1,142.

Tolerances: 1e-4 relative for estimates, SEs, theta and the log-likelihood (as tests/test_frequentist.py);
the criterion at lme4's own theta to 1e-9 (no optimiser between the two: one evaluation of the same
formula); profile ends to 1e-4 (lme4 reads them off a spline: the largest difference, 6.1e-5, is the lower
end of sd(d); tests/test_profile.py says why the spline is the one off).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.lmer import LmerProblem
from bayeslmm.lme4.profile import PROFILE_COLUMNS, PROFILE_MAX_CROSSED, profile_ci
from bayeslmm.model.formula import model_frame, parse

DATA = Path(__file__).parent / "data"
FORMULA = "y ~ service + (1|s) + (1|d) + (1|dept)"
REL = 1e-4
GROUPS = ("s", "d", "dept")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((DATA / "insteval_lme4.json").read_text())


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(DATA / "insteval_small.csv", dtype={"service": str, "s": str, "d": str, "dept": str})


@pytest.fixture(scope="module")
def frame(data):
    return model_frame(parse(FORMULA), data)


@pytest.fixture(scope="module")
def fits(frame) -> dict:
    return {method: frequentist.fit_lmm(frame, method) for method in ("reml", "ml")}


def test_takes_the_crossed_blockwise_path(frame, reference):
    m = LmerProblem(frame, reml=True)
    assert [len(b.levels) for b in m.blocks] == [reference["info"]["ngroups"][g] for g in GROUPS]
    assert not m.dense and m.block_levels == 1  # students' blocks, then the crossed rest dense
    assert m.q - m.qe == 113 + 14 and m.rest_diagonal


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_matches_lme4(fits, reference, method):
    f, r = fits[method], reference[method]
    assert f.converged and not f.singular and not r["singular"]
    assert f.loglik == pytest.approx(r["logLik"], rel=REL)
    for name in r["fixef"]:
        assert f.fixef[name] == pytest.approx(r["fixef"][name], rel=REL), name
        assert f.se[name] == pytest.approx(r["se"][name], rel=REL), name
    assert f.theta.to_numpy() == pytest.approx(list(r["theta"].values()), rel=REL)
    sd = dict(zip(f.varcorr["group"], f.varcorr["sd"], strict=True))
    for group, want in r["sdcor"].items():
        assert sd[group] == pytest.approx(want, rel=REL), group


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_criterion_at_lme4s_theta(frame, reference, method):
    r = reference[method]
    m = LmerProblem(frame, reml=method == "reml")
    assert m.objective(np.array(list(r["theta"].values()))) == pytest.approx(r["criterion"], rel=1e-9)


@pytest.mark.parametrize("formula", [FORMULA, "y ~ service + (1|s) + (service|d)"])
def test_blockwise_equals_dense(data, formula):
    """The blockwise factor (students' blocks, the crossed rest's downdated Schur complement, diagonal
    Lambda or a slope's 2 x 2 blocks) gives the dense path's criterion and solution."""
    frame = model_frame(parse(formula), data)
    sparse_m, dense_m = LmerProblem(frame, reml=True, dense=False), LmerProblem(frame, reml=True, dense=True)
    assert sparse_m.rest_diagonal == (formula == FORMULA)
    rng = np.random.default_rng(3)
    for _ in range(3):
        theta = np.where(sparse_m.diag_theta, rng.uniform(0.05, 2.0, sparse_m.diag_theta.size),
                         rng.uniform(-0.5, 0.5, sparse_m.diag_theta.size))
        a, b = sparse_m.solve(theta), dense_m.solve(theta)
        assert sparse_m.criterion(a) == pytest.approx(dense_m.criterion(b), rel=1e-10)
        assert a.beta == pytest.approx(b.beta, rel=1e-8)
        assert a.u == pytest.approx(b.u, rel=1e-6, abs=1e-9)


def test_repeated_rows_are_compressed_to_the_same_criterion():
    """Rows sharing a row of Z (20 per site) enter the sparse path's QR as one weighted row and the R of their
    deviations from its mean: the dense path's criterion and solution at any theta."""
    rng = np.random.default_rng(8)
    r = np.repeat(np.arange(30), 3 * 20)
    s = np.tile(np.repeat(np.arange(3), 20), 30)
    x = rng.normal(size=r.size)
    y = 2 + 0.5 * x + rng.normal(size=30)[r] + 0.5 * rng.normal(size=90)[3 * r + s] + rng.normal(size=r.size)
    df = pd.DataFrame({"y": y, "x": x, "range": r.astype(str), "site": s.astype(str)})
    frame = model_frame(parse("y ~ x + (1|range/site)"), df)
    sparse_m, dense_m = LmerProblem(frame, reml=False, dense=False), LmerProblem(frame, reml=False, dense=True)
    assert sparse_m.zd.shape[0] == 90 < sparse_m.n  # one row per site
    for theta in ([0.5, 1.0], [0.01, 3.0], [2.0, 0.0]):
        a, b = sparse_m.solve(np.array(theta)), dense_m.solve(np.array(theta))
        assert sparse_m.criterion(a) == pytest.approx(dense_m.criterion(b), rel=1e-12)
        assert a.beta == pytest.approx(b.beta, rel=1e-10)
        assert a.u == pytest.approx(b.u, rel=1e-8, abs=1e-10)


def test_summary_is_remembered(frame):
    """lmerTest's derivatives revisit thetas: the criterion's pieces are computed once per theta."""
    m = LmerProblem(frame, reml=True)
    calls = []
    solve = m.solve
    m.solve = lambda theta: calls.append(1) or solve(theta)
    theta = np.array([0.25, 0.43, 0.1])
    first = m.devfun_vp(np.append(theta, 1.2))
    assert m.devfun_vp(np.append(theta, 1.3)) != first
    m.covbeta(np.append(theta, 1.1))
    assert len(calls) == 1
    m.devfun_vp(np.append(theta * 1.01, 1.2))
    assert len(calls) == 2


def test_profile_matches_lme4(frame, fits, reference):
    ci = profile_ci(frame, fits["reml"]).set_index("lme4_name")
    want = reference["profile_ci95"]
    names = {".sig01": "sd_(Intercept)|s", ".sig02": "sd_(Intercept)|d", ".sig03": "sd_(Intercept)|dept",
             ".sigma": "sigma", "(Intercept)": "(Intercept)", "service1": "service1"}
    assert list(ci.index) == list(names)
    for ours, theirs in names.items():
        low, high = want[theirs]
        assert ci.at[ours, "conf_low"] == pytest.approx(low, rel=REL, abs=1e-12), ours
        assert ci.at[ours, "conf_high"] == pytest.approx(high, rel=REL), ours


def test_profile_declines_beyond_the_crossed_limit(frame, fits):
    """Beyond ``max_crossed`` no profile (it would take minutes): no rows, so the tables keep lme4's Wald
    intervals of the fixed effects and none for the sds, and a warning says why."""
    assert LmerProblem(frame, reml=False).crossed_q == 127 <= PROFILE_MAX_CROSSED
    with pytest.warns(RuntimeWarning, match=r"127 random effects in a dense block \(more than 100\)"):
        ci = profile_ci(frame, fits["reml"], max_crossed=100)
    assert ci.empty and list(ci.columns) == list(PROFILE_COLUMNS)


def test_a_report_beyond_the_profile_limit_shows_wald_and_says_why(tmp_path, monkeypatch):
    """The whole `fit --out` path with the limit lowered below this design's 127: the tables carry lme4's
    Wald intervals of the fixed effects labelled Wald, none for the sds, and the report says why."""
    import functools

    from bayeslmm.lme4 import profile
    from bayeslmm.model.options import RunOptions, SamplerOptions
    from bayeslmm.runner import fit_formula

    monkeypatch.setattr(profile, "profile_ci", functools.partial(profile.profile_ci, max_crossed=100))
    out = tmp_path / "report"
    result = fit_formula(DATA / "insteval_small.csv", FORMULA, out=out, echo=lambda _: None,
                         options=SamplerOptions(draws=100, tune=150, chains=2), run=RunOptions(progress=False))
    side = pd.read_csv(out / "sidebyside.csv")
    fixed, sds = side[side["effect"] == "fixed"], side[side["effect"] == "ran_pars"]
    assert (fixed["lme4_ci"] == "Wald").all() and fixed["lme4_conf_low"].notna().all()
    assert sds["lme4_conf_low"].isna().all() and sds["lme4_ci"].isna().all()
    assert any("no profile intervals" in n and "127 random effects" in n for n in result.report_notes)
    md = (out / "report.md").read_text()
    assert "model: Wald, none for the sds (its crossed design is too large to profile" in md


def test_nested_conditional_variances_equal_the_dense_inverse():
    """The diagonal blocks of A^-1 (lme4's conditional variances of the random effects) of a nested design with
    correlated slopes, from the blockwise factor's sparse C S^-1 C': those of the dense inverse."""
    from bayeslmm.lme4 import lmer

    rng = np.random.default_rng(2)
    r = np.repeat(np.arange(30), 60)
    s = np.tile(np.repeat(np.arange(3), 20), 30)
    x = rng.normal(size=r.size)
    y = (1 + x + rng.normal(size=30)[r] + rng.normal(size=30)[r] * x + 0.5 * rng.normal(size=90)[3 * r + s]
         + rng.normal(size=r.size))
    df = pd.DataFrame({"y": y, "x": x, "range": r.astype(str), "site": s.astype(str)})
    m = LmerProblem(model_frame(parse("y ~ x + (1 + x|range) + (1 + x|range:site)"), df), reml=True, dense=False)
    theta = np.array([0.8, 0.2, 0.5, 0.6, -0.1, 0.3])
    fac = m.factor_of(theta, m.lam(theta))
    assert isinstance(fac.rest, lmer._BlockDiag)  # the nested path this checks
    lam = m.lam(theta)
    dense = np.linalg.inv((lam.T @ m.Z.T @ m.Z @ lam).toarray() + np.eye(m.q))
    for got, want in zip(fac.inv_diag_blocks(m.layout), lmer._diag_blocks(dense, m.layout), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
