"""The frequentist engine against R (lm, lme4, lmerTest) and against statsmodels' MixedLM."""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm.errors import OptionsError
from bayeslmm.lme4.frequentist import FreqFit, fit, fit_lmm, fit_ols, lrt, tidy, variance_partition
from bayeslmm.lme4.lmer import LmerProblem, satterthwaite
from bayeslmm.model.formula import ModelFrame, model_frame, parse
from bayeslmm.results import TIDY_COLUMNS

SHARED = Path(__file__).parents[2] / "shared"  # /work/shared beside the repository at /work/main
#: What R reports for the tutorial's models: R 4.2.2, lme4 1.1-31, lmerTest 3.1-3 (versions also in
#: the file under "info"); described in shared/reference/README.md.
REFERENCE = SHARED / "reference" / "dragons_lme4.json"
#: The tutorial's data (Coding Club, "Introduction to linear mixed models").
DATA = SHARED / "data" / "dragons.RData"
MISSING = f"needs {REFERENCE} and {DATA} (the shared reference data is not present)"
have_shared = pytest.mark.skipif(not (REFERENCE.exists() and DATA.exists()), reason=MISSING)

#: Relative tolerance against lme4. Our optimum is at least as good as lme4's (test below): the
#: differences are BOBYQA's stopping tolerance in lme4 (largest seen: 5.3e-5 on the site variance
#: of mixed.WRONG, with our REML criterion 2e-9 lower than lme4's).
REL = 1e-4
#: Fields of the reference compared by test_matches_lme4; the others are named here with why not.
COMPARED = {
    "coef", "fixef", "se", "t", "p", "sigma", "r_squared", "logLik", "AIC", "BIC",
    "deviance_or_REMLcrit", "variance", "sd", "ranef", "satterthwaite_df",
}
NOT_COMPARED = {
    "formula": "input, not output",
    "REML": "decides the method we fit with",
    "profile_ci95": "compared in tests/test_profile.py",
}


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())["models"] if REFERENCE.exists() else {}


def _method(entry: dict) -> str:
    if "REML" not in entry:
        return "ols"
    return "reml" if entry["REML"] else "ml"


@cache
def _dragons() -> pd.DataFrame:
    from bayeslmm.model.data import load, prepare

    return prepare(load(DATA), {"bodyLength2": "bodyLength"}, {"sample": ["mountainRange", "site"]})


@cache
def _frame(formula: str) -> ModelFrame:
    return model_frame(parse(formula), _dragons())


@cache
def _fit(name: str) -> FreqFit:
    entry = _reference()[name]
    return fit(_frame(entry["formula"]), _method(entry))


def _cases() -> list:
    cases = []
    for name, entry in _reference().items():
        if not isinstance(entry, dict) or "formula" not in entry:
            continue
        unknown = set(entry) - COMPARED - set(NOT_COMPARED)
        assert not unknown, f"reference field(s) {unknown} of {name} are neither compared nor excused"
        for quantity in sorted(COMPARED & set(entry)):
            value = entry[quantity]
            if quantity == "ranef":
                for group, levels in value.items():
                    cases += [(name, quantity, (group, lv), v) for lv, v in levels.items()]
            elif isinstance(value, dict):
                cases += [(name, quantity, key, v) for key, v in value.items()]
            else:
                cases.append((name, quantity, None, value))
    if not cases:
        return [pytest.param(None, None, None, None, marks=pytest.mark.skip(reason=MISSING))]
    def name(key) -> str:
        return "" if key is None else "-" + ("/".join(key) if isinstance(key, tuple) else key)

    return [pytest.param(*c, id=f"{c[0]}-{c[1]}{name(c[2])}") for c in cases]


def _actual(f: FreqFit, quantity: str, key) -> float:
    scalars = {
        "sigma": f.sigma, "r_squared": f.r_squared, "logLik": f.loglik, "AIC": f.aic, "BIC": f.bic,
        "deviance_or_REMLcrit": f.reml_criterion if f.method == "reml" else f.deviance,
    }
    if quantity in scalars:
        return scalars[quantity]
    series = {"coef": f.fixef, "fixef": f.fixef, "se": f.se, "t": f.t, "p": f.p, "satterthwaite_df": f.df}
    if quantity in series:
        return series[quantity][key]
    if quantity == "ranef":
        group, level = key
        return f.ranef[group].at[level, "(Intercept)"]
    vc = f.varcorr
    row = vc[(vc.group == key) & vc.term.isin(["sd__(Intercept)", "sd__Observation"])]
    assert len(row) == 1, f"no single variance row for {key!r}"
    return row[quantity].iloc[0]


@have_shared
@pytest.mark.parametrize(("model", "quantity", "key", "expected"), _cases())
def test_matches_lme4(model: str, quantity: str, key, expected: float) -> None:
    f = _fit(model)
    assert f.converged
    assert _actual(f, quantity, key) == pytest.approx(expected, rel=REL, abs=0)


@have_shared
@pytest.mark.parametrize("key", ["chisq", "df", "p", "AIC.reduced", "AIC.full"])
def test_anova_reduced_vs_full(key: str) -> None:
    expected = _reference()["anova_reduced_vs_full"]
    got = lrt(_fit("reduced.lmer"), _fit("full.lmer"))
    if "." in key:
        outer, inner = key.split(".")
        got, expected = got[outer][inner], expected[outer][inner]
    else:
        got, expected = got[key], expected[key]
    assert got == pytest.approx(expected, rel=REL, abs=0)


@have_shared
def test_icc() -> None:
    share = variance_partition(_fit("mixed.lmer"))
    assert share["mountainRange"] == pytest.approx(_reference()["icc_mixed.lmer"], rel=REL, abs=0)
    assert sum(share.values()) == pytest.approx(1.0)


def _lme4_varpar(entry: dict, problem: LmerProblem) -> np.ndarray:
    """lme4's own (theta, sigma) from its sds: theta = sd_group / sigma for intercept-only terms."""
    sigma = entry["sd"]["Residual"]
    return np.array([entry["sd"][b.term.group] / sigma for b in problem.blocks] + [sigma])


@have_shared
@pytest.mark.parametrize("model", ["mixed.lmer", "mixed.WRONG", "mixed.lmer2", "full.lmer", "reduced.lmer"])
def test_criterion_at_lme4_estimates(model: str) -> None:
    """Our deviance function is lme4's: at lme4's theta it gives R's value to 1e-9, and our
    optimum is no worse than lme4's (so the differences in test_matches_lme4 are lme4's stopping)."""
    entry = _reference()[model]
    problem = LmerProblem(_frame(entry["formula"]), reml=entry["REML"])
    theta = _lme4_varpar(entry, problem)[:-1]
    assert problem.objective(theta) == pytest.approx(entry["deviance_or_REMLcrit"], rel=1e-9, abs=0)
    assert problem.objective(_fit(model).theta.to_numpy()) <= problem.objective(theta) + 1e-9


@have_shared
@pytest.mark.parametrize("model", ["mixed.lmer", "mixed.WRONG", "mixed.lmer2"])
def test_satterthwaite_at_lme4_estimates(model: str) -> None:
    """At lme4's own estimates our numDeriv-style derivatives give lmerTest's df to 1e-6 (seen:
    3e-8); at our estimates the df differ by up to 2.4e-5, from the estimates, not the method."""
    entry = _reference()[model]
    problem = LmerProblem(_frame(entry["formula"]), reml=True)
    sat = satterthwaite(problem.devfun_vp, problem.covbeta, _lme4_varpar(entry, problem))
    names = _frame(entry["formula"]).x_names
    expected = [entry["satterthwaite_df"][n] for n in names]
    assert sat.df == pytest.approx(expected, rel=1e-6, abs=0)


@have_shared
def test_block_factorization_equals_dense() -> None:
    """The sparse (blockwise) path used beyond DENSE_MAX_Q random effects gives the dense results."""
    frame = _frame("testScore ~ bodyLength2 + (1|mountainRange/site)")
    dense, block = fit_lmm(frame, "reml", dense=True), fit_lmm(frame, "reml", dense=False)
    assert block.loglik == pytest.approx(dense.loglik, rel=1e-12)
    assert block.theta.to_numpy() == pytest.approx(dense.theta.to_numpy(), rel=1e-6)
    for g in dense.ranef:
        np.testing.assert_allclose(block.ranef_sd[g], dense.ranef_sd[g], rtol=1e-6)
    # (1|mountainRange/site) is lme4's shorthand for (1|mountainRange) + (1|mountainRange:site)
    assert dense.loglik == pytest.approx(_fit("mixed.lmer2").loglik, rel=1e-12)


@have_shared
def test_tidy_schema_and_values() -> None:
    f = _fit("mixed.lmer2")
    out = tidy(f, "mixed.lmer2", conf_level=0.9)
    assert list(out.columns) == TIDY_COLUMNS
    assert set(out.method) == {"reml"} and set(out.model) == {"mixed.lmer2"}
    fixed = out[out.effect == "fixed"].set_index("term")
    z = 1.6448536269514722
    np.testing.assert_allclose(fixed.conf_high, f.fixef + z * f.se)
    np.testing.assert_allclose(fixed.df, f.df)
    pars = out[out.effect == "ran_pars"]
    assert list(zip(pars.group, pars.term, strict=True)) == [
        ("sample", "sd__(Intercept)"), ("mountainRange", "sd__(Intercept)"), ("Residual", "sd__Observation"),
    ]
    assert pars.std_error.isna().all()
    vals = out[out.effect == "ran_vals"]
    assert len(vals) == 24 + 8 and (vals.std_error > 0).all()
    ols = tidy(_fit("basic.lm"), "basic.lm")
    assert set(ols.effect) == {"fixed", "ran_pars"} and set(ols.method) == {"ols"}


@have_shared
def test_condvar_is_the_conditional_covariance() -> None:
    """ran_vals' std_error = sqrt(diag(Cov(b | y))) at the estimates, Cov = (Z'Z/s2 + G^-1)^-1."""
    f = _fit("mixed.lmer2")
    frame = _frame(_reference()["mixed.lmer2"]["formula"])
    blocks = sorted(frame.blocks, key=lambda b: -len(b.levels))  # lme4's order
    z = np.hstack([b.z_matrix() for b in blocks])
    vc = f.varcorr.set_index("group")["variance"]
    g_diag = np.concatenate([np.full(len(b.levels), vc[b.term.group]) for b in blocks])
    cov = np.linalg.inv(z.T @ z / f.sigma**2 + np.diag(1 / g_diag))
    expected = np.concatenate([f.ranef_sd[b.term.group]["(Intercept)"] for b in blocks])
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), expected, rtol=1e-10)


@have_shared
def test_lrt_and_dispatch_errors() -> None:
    with pytest.raises(OptionsError, match="REML"):
        lrt(_fit("mixed.lmer"), _fit("full.lmer"))
    with pytest.raises(OptionsError, match="swap"):
        lrt(_fit("full.lmer"), _fit("reduced.lmer"))
    frame = _frame("testScore ~ bodyLength2 + (1|mountainRange)")
    with pytest.raises(OptionsError):
        fit(frame, "ols")
    with pytest.raises(OptionsError):
        fit_lmm(_frame("testScore ~ bodyLength2"), "reml")
    assert fit(_frame("testScore ~ bodyLength2"), "reml").method == "ols"


# --------------------------------------------------------------------------------------------
# Simulated data: models the reference does not cover, checked against statsmodels' MixedLM
# --------------------------------------------------------------------------------------------


def _slope_data(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_groups, n_per = 30, 15
    g = np.repeat(np.arange(n_groups), n_per)
    x = rng.normal(size=g.size)
    b = rng.multivariate_normal([0.0, 0.0], [[4.0, 1.0], [1.0, 1.0]], size=n_groups)
    y = 10 + 2 * x + b[g, 0] + b[g, 1] * x + rng.normal(scale=1.5, size=g.size)
    return pd.DataFrame({"y": y, "bodyLength2": x, "mountainRange": pd.Categorical([f"g{i:02d}" for i in g])})


def _marginal_reml(frame: ModelFrame, V: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """REML log-likelihood, GLS estimates and lme4's SEs straight from the marginal covariance V."""
    X, y = frame.X, frame.y
    n, p = X.shape
    vi = np.linalg.inv(V)
    xvx = X.T @ vi @ X
    beta = np.linalg.solve(xvx, X.T @ vi @ y)
    r = y - X @ beta
    ll = -0.5 * (np.linalg.slogdet(V)[1] + np.linalg.slogdet(xvx)[1] + r @ vi @ r + (n - p) * np.log(2 * np.pi))
    return ll, beta, np.sqrt(np.diag(np.linalg.inv(xvx)))


def test_correlated_slope_against_statsmodels() -> None:
    import statsmodels.formula.api as smf

    data = _slope_data()
    frame = model_frame(parse("y ~ bodyLength2 + (bodyLength2|mountainRange)"), data)
    f = fit_lmm(frame, "reml")
    assert f.converged and not f.singular
    assert list(f.theta.index) == [  # lme4's getME(fit, "theta") names and order
        "mountainRange.(Intercept)", "mountainRange.bodyLength2.(Intercept)", "mountainRange.bodyLength2",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm("y ~ bodyLength2", data, groups="mountainRange", re_formula="~bodyLength2").fit(reml=True)
    vc = f.varcorr.set_index("term")
    cov_re = sm.cov_re.to_numpy()
    # Both maximise the same REML likelihood; statsmodels stops earlier (differences seen <= 2e-5).
    assert vc.at["sd__(Intercept)", "variance"] == pytest.approx(cov_re[0, 0], rel=1e-3)
    assert vc.at["sd__bodyLength2", "variance"] == pytest.approx(cov_re[1, 1], rel=1e-3)
    assert vc.at["cor__(Intercept).bodyLength2", "variance"] == pytest.approx(cov_re[0, 1], rel=1e-3)
    assert f.sigma**2 == pytest.approx(sm.scale, rel=1e-4)
    # statsmodels' REML llf is on lme4's scale (log|X'V^-1 X| term, no log|X'X|): equal, ours no lower.
    assert f.loglik == pytest.approx(sm.llf, abs=1e-6)
    assert f.loglik >= sm.llf - 1e-9
    np.testing.assert_allclose(f.fixef, sm.fe_params, rtol=1e-6)
    blups = np.array([sm.random_effects[g].to_numpy() for g in f.ranef["mountainRange"].index])
    np.testing.assert_allclose(f.ranef["mountainRange"].to_numpy(), blups, rtol=1e-3, atol=1e-4)
    # SEs: lme4's sqrt(diag(sigma^2 (X'V^-1 X)^-1)) treats the variance parameters as known;
    # statsmodels inverts the joint Hessian of fixed effects and covariance parameters, so its
    # SEs differ slightly (here by 4e-5 and 1.5e-4 relative). Ours are checked against the marginal formula instead.
    _, _, se_ours = _marginal_reml(frame, _v_of(f, frame))
    np.testing.assert_allclose(f.se, se_ours, rtol=1e-8)
    np.testing.assert_allclose(f.se, sm.bse_fe, rtol=1e-2)
    # the block (sparse) path agrees with the dense one for a correlated term too
    block = fit_lmm(frame, "reml", dense=False)
    assert block.loglik == pytest.approx(f.loglik, rel=1e-12)
    np.testing.assert_allclose(block.ranef_sd["mountainRange"], f.ranef_sd["mountainRange"], rtol=1e-6)


def _v_of(f: FreqFit, frame: ModelFrame) -> np.ndarray:
    """Marginal covariance of y implied by a fit's variance components (one correlated term)."""
    vc = f.varcorr.set_index("term")["variance"]
    cov = np.array([
        [vc["sd__(Intercept)"], vc["cor__(Intercept).bodyLength2"]],
        [vc["cor__(Intercept).bodyLength2"], vc["sd__bodyLength2"]],
    ])
    z = frame.blocks[0].z_matrix()
    return z @ np.kron(np.eye(len(frame.blocks[0].levels)), cov) @ z.T + f.sigma**2 * np.eye(z.shape[0])


def test_crossed_design() -> None:
    """Fully crossed subjects x items: statsmodels (variance components) and the marginal likelihood."""
    import statsmodels.api as sm

    rng = np.random.default_rng(7)
    n_subj, n_item, reps = 20, 12, 2
    s = np.repeat(np.arange(n_subj), n_item * reps)
    it = np.tile(np.repeat(np.arange(n_item), reps), n_subj)
    x = rng.normal(size=s.size)
    y = 5 + 0.5 * x + 1.2 * rng.normal(size=n_subj)[s] + 0.8 * rng.normal(size=n_item)[it] + rng.normal(size=s.size)
    data = pd.DataFrame({
        "y": y, "x": x,
        "subj": pd.Categorical([f"s{i:02d}" for i in s]), "item": pd.Categorical([f"i{i:02d}" for i in it]),
    })
    frame = model_frame(parse("y ~ x + (1|subj) + (1|item)"), data)
    f = fit_lmm(frame, "reml")
    assert f.converged and f.ngroups == {"subj": 20, "item": 12}
    vc = f.varcorr.set_index("group")["variance"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.MixedLM.from_formula(
            "y ~ x", data, groups=np.ones(len(data)), re_formula="0",
            vc_formula={"subj": "0 + C(subj)", "item": "0 + C(item)"},
        )
        res = model.fit(reml=True)
    for name, value in zip(model.exog_vc.names, res.vcomp, strict=True):
        assert vc[name] == pytest.approx(value, rel=1e-3)
    assert f.loglik == pytest.approx(res.llf, abs=1e-6)
    assert f.loglik >= res.llf - 1e-9
    z_s, z_i = (b.z_matrix() for b in frame.blocks)
    V = vc["subj"] * z_s @ z_s.T + vc["item"] * z_i @ z_i.T + vc["Residual"] * np.eye(len(y))
    ll, beta, se = _marginal_reml(frame, V)
    assert f.loglik == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(f.fixef, beta, rtol=1e-10)
    np.testing.assert_allclose(f.se, se, rtol=1e-8)
    # ML on the same data: the profiled deviance is -2 x the ML log-likelihood of the marginal model
    ml = fit_lmm(frame, "ml")
    assert ml.deviance == pytest.approx(-2 * ml.loglik) and ml.reml_criterion is None
    assert ml.sigma < f.sigma
    # crossed with a correlated slope: the blockwise (Schur complement) path equals the dense one
    frame = model_frame(parse("y ~ x + (x|subj) + (1|item)"), data)
    dense, block = fit_lmm(frame, "reml", dense=True), fit_lmm(frame, "reml", dense=False)
    assert block.loglik == pytest.approx(dense.loglik, rel=1e-12)
    np.testing.assert_allclose(block.theta, dense.theta, rtol=1e-5, atol=1e-7)
    for g in ("subj", "item"):
        np.testing.assert_allclose(block.ranef[g], dense.ranef[g], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(block.ranef_sd[g], dense.ranef_sd[g], rtol=1e-5)


def test_ols_without_intercept_against_statsmodels() -> None:
    import statsmodels.api as sm

    data = _slope_data()
    f = fit_ols(model_frame(parse("y ~ 0 + bodyLength2"), data))
    res = sm.OLS(data.y, data[["bodyLength2"]]).fit()
    assert f.r_squared == pytest.approx(res.rsquared, rel=1e-10)  # uncentred, as R without intercept
    assert f.loglik == pytest.approx(res.llf, rel=1e-10)
    assert f.bic == pytest.approx(res.bic + np.log(len(data)), rel=1e-10)  # R counts sigma, statsmodels not
    np.testing.assert_allclose(f.p, res.pvalues, rtol=1e-8)
    assert variance_partition(f) == {"Residual": 1.0}
