"""The frequentist engine against R (lm, lme4, lmerTest) and against statsmodels' MixedLM."""

from __future__ import annotations

import json
import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest

from bayeslmm import labels
from bayeslmm.errors import OptionsError
from bayeslmm.lme4.frequentist import SINGULAR_TOL, FreqFit, fit, fit_lmm, fit_ols, lrt, tidy, variance_partition
from bayeslmm.lme4.lmer import LmerProblem, satterthwaite
from bayeslmm.model.formula import ModelFrame, model_frame, parse
from bayeslmm.results import TIDY_COLUMNS
from conftest import DRAGONS_RDATA, LME4_REFERENCE, STUDY, require

#: What R reports for the tutorial's models: R 4.2.2, lme4 1.1-31, lmerTest 3.1-3 (versions also in
#: the file under "info"), in conftest.LME4_REFERENCE; described in shared/reference/README.md.
#: The tutorial's data (Coding Club, "Introduction to linear mixed models"): conftest.DRAGONS_RDATA.

#: Relative tolerance against lme4. Our optimum is at least as good as lme4's (test below): the
#: differences are BOBYQA's stopping tolerance in lme4 (largest seen: 5.3e-5 on the site variance
#: of mixed.WRONG, with our REML criterion 2e-9 lower than lme4's).
REL = 1e-4
#: What R reports for each kind of fit of the study (lm; lmer by REML, with lmerTest's tests; lmer
#: by ML), each compared for every term, group or level by test_matches_lme4.
QUANTITIES = {
    "ols": ("coef", "se", "t", "p", "sigma", "r_squared", "logLik", "AIC"),
    "reml": ("fixef", "se", "p", "satterthwaite_df", "variance", "sd", "ranef", "logLik", "AIC", "BIC",
             "deviance_or_REMLcrit"),
    "ml": ("fixef", "se", "variance", "sd", "ranef", "logLik", "AIC", "BIC", "deviance_or_REMLcrit"),
}
#: The reference's other fields, with why they are not compared there.
NOT_COMPARED = {
    "formula": "input, not output",
    "REML": "decides the method we fit with",
    "profile_ci95": "compared in tests/test_profile.py",
}


#: The study's models beyond the tutorial, which the shared reference does not hold: their lme4
#: answers are the project's own, written by R (tests/test_dragons_slopes.py).
BEYOND_TUTORIAL = ("slopes.lmer",)


def _study_methods() -> dict[str, str]:
    """Each of the tutorial's models in the study (models/dragons.toml) and how lme4 fits it."""
    from bayeslmm.model.study import load

    return {m.name: (m.lme4_method if m.formula.is_mixed else "ols") for m in load(STUDY).models
            if m.name not in BEYOND_TUTORIAL}


#: Known without the reference, so the comparisons are collected (and skip, or fail under CI) without it.
METHODS = _study_methods()


@cache
def _reference() -> dict:
    require(LME4_REFERENCE)
    return json.loads(LME4_REFERENCE.read_text())["models"]


@cache
def _dragons() -> pd.DataFrame:
    require(DRAGONS_RDATA)
    from bayeslmm.model.data import load, prepare

    return prepare(load(DRAGONS_RDATA), {"bodyLength2": "bodyLength"}, {"sample": ["mountainRange", "site"]})


@cache
def _frame(formula: str) -> ModelFrame:
    return model_frame(parse(formula), _dragons())


@cache
def _fit(name: str) -> FreqFit:
    return fit(_frame(_reference()[name]["formula"]), METHODS[name])


def test_reference_holds_the_study_and_what_we_compare() -> None:
    from bayeslmm.model.study import load

    ref = _reference()
    assert {m.name for m in load(STUDY).models} == {*METHODS, *BEYOND_TUTORIAL}
    assert {name for name, entry in ref.items() if isinstance(entry, dict) and "formula" in entry} == set(METHODS)
    for name, method in METHODS.items():
        entry = ref[name]
        assert entry.get("REML") == {"ols": None, "reml": True, "ml": False}[method], name
        assert set(entry) - set(NOT_COMPARED) == set(QUANTITIES[method]), name


def _actual(f: FreqFit, quantity: str) -> float | dict:
    """Our value of one of R's quantities: a number, or a dict keyed as the reference's."""
    scalars = {
        "sigma": f.sigma, "r_squared": f.r_squared, "logLik": f.loglik, "AIC": f.aic, "BIC": f.bic,
        "deviance_or_REMLcrit": f.reml_criterion if f.method == "reml" else f.deviance,
    }
    if quantity in scalars:
        return scalars[quantity]
    series = {"coef": f.fixef, "fixef": f.fixef, "se": f.se, "t": f.t, "p": f.p, "satterthwaite_df": f.df}
    if quantity in series:
        return series[quantity].to_dict()
    if quantity == "ranef":
        return {group: values["(Intercept)"].to_dict() for group, values in f.ranef.items()}
    vc = f.varcorr[f.varcorr.term.isin(["sd__(Intercept)", "sd__Observation"])]
    assert not vc.group.duplicated().any(), "more than one variance row for a group"
    return dict(zip(vc.group, vc[quantity], strict=True))


@pytest.mark.parametrize(("model", "quantity"),
                         [pytest.param(m, q, id=f"{m}-{q}") for m, how in METHODS.items() for q in QUANTITIES[how]])
def test_matches_lme4(model: str, quantity: str) -> None:
    expected = _reference()[model][quantity]
    f = _fit(model)
    assert f.converged
    got = _actual(f, quantity)
    if quantity == "ranef":  # {group: {level: value}}: one comparison per group, every level
        assert set(got) == set(expected)
        for group in expected:
            assert got[group] == pytest.approx(expected[group], rel=REL, abs=0), group
    else:
        assert got == pytest.approx(expected, rel=REL, abs=0)


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


def test_icc() -> None:
    share = variance_partition(_fit("mixed.lmer"))
    assert share["mountainRange"] == pytest.approx(_reference()["icc_mixed.lmer"], rel=REL, abs=0)
    assert sum(share.values()) == pytest.approx(1.0)


def _lme4_varpar(entry: dict, problem: LmerProblem) -> np.ndarray:
    """lme4's own (theta, sigma) from its sds: theta = sd_group / sigma for intercept-only terms."""
    sigma = entry["sd"]["Residual"]
    return np.array([entry["sd"][b.term.group] / sigma for b in problem.blocks] + [sigma])


@pytest.mark.parametrize("model", ["mixed.lmer", "mixed.WRONG", "mixed.lmer2", "full.lmer", "reduced.lmer"])
def test_criterion_at_lme4_estimates(model: str) -> None:
    """Our deviance function is lme4's: at lme4's theta it gives R's value to 1e-9, and our
    optimum is no worse than lme4's (so the differences in test_matches_lme4 are lme4's stopping)."""
    entry = _reference()[model]
    problem = LmerProblem(_frame(entry["formula"]), reml=entry["REML"])
    theta = _lme4_varpar(entry, problem)[:-1]
    assert problem.objective(theta) == pytest.approx(entry["deviance_or_REMLcrit"], rel=1e-9, abs=0)
    assert problem.objective(_fit(model).theta.to_numpy()) <= problem.objective(theta) + 1e-9


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


def test_crossed_design(crossed: pd.DataFrame) -> None:
    """Fully crossed subjects x items: statsmodels (variance components) and the marginal likelihood."""
    import statsmodels.api as sm

    data = crossed
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
    V = vc["subj"] * z_s @ z_s.T + vc["item"] * z_i @ z_i.T + vc["Residual"] * np.eye(len(data))
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


def test_three_correlated_coefficients_against_statsmodels_and_the_marginal_likelihood(three_slopes) -> None:
    """(1 + x + z|g), a 3 x 3 covariance (lme4's theta: 6 elements of its Cholesky factor): the same
    REML optimum as statsmodels' MixedLM (which parameterises the covariance its own way), and the
    criterion equal to the marginal REML likelihood computed from V directly."""
    import statsmodels.formula.api as smf

    data = three_slopes
    frame = model_frame(parse("y ~ x + z + (1 + x + z|g)"), data)
    f = fit_lmm(frame, "reml")
    assert f.converged and not f.singular and f.boundary == ()
    assert list(f.theta.index) == ["g.(Intercept)", "g.x.(Intercept)", "g.z.(Intercept)", "g.x", "g.z.x", "g.z"]
    coefs = ["(Intercept)", "x", "z"]
    vc = f.varcorr.set_index("term")
    assert list(vc.index) == [*labels.sdcor_terms(coefs), "sd__Observation"]
    cov = np.diag([vc.at[labels.sd_term(c), "variance"] for c in coefs])
    for i, j in ((0, 1), (0, 2), (1, 2)):
        term = labels.cor_term(coefs[i], coefs[j])
        cov[i, j] = cov[j, i] = vc.at[term, "variance"]
        assert vc.at[term, "sd"] == pytest.approx(cov[i, j] / np.sqrt(cov[i, i] * cov[j, j]), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm("y ~ x + z", data, groups="g", re_formula="~x + z").fit(reml=True, method=["lbfgs"])
    # both maximise the same REML likelihood (seen: covariances within 6e-5 relative, ours 2e-8 higher)
    np.testing.assert_allclose(cov, sm.cov_re.to_numpy(), rtol=1e-3)
    assert f.loglik == pytest.approx(sm.llf, abs=1e-6) and f.loglik >= sm.llf - 1e-9
    z = frame.blocks[0].z_matrix()
    V = z @ np.kron(np.eye(len(frame.blocks[0].levels)), cov) @ z.T + f.sigma**2 * np.eye(len(data))
    ll, beta, se = _marginal_reml(frame, V)
    assert f.loglik == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(f.fixef, beta, rtol=1e-10)
    np.testing.assert_allclose(f.se, se, rtol=1e-8)
    # the blockwise (sparse) path agrees
    assert fit_lmm(frame, "reml", dense=False).loglik == pytest.approx(f.loglik, rel=1e-12)
    # tidy lists the same rows in broom.mixed's order; varcorr_table is lme4's print(VarCorr(fit))
    pars = f.tidy(effects=("ran_pars",))
    assert list(pars.term) == list(vc.index)
    table = f.varcorr_table()
    assert list(table.columns) == ["Groups", "Name", "Std.Dev.", "Corr", "Corr.2"]
    assert table.columns.name == "REML estimates"
    assert list(table.Groups) == ["g", "", "", "Residual"] and list(table.Name) == [*coefs, ""]
    np.testing.assert_allclose(table["Std.Dev."], [*np.sqrt(np.diag(cov)), f.sigma], rtol=1e-12)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    np.testing.assert_allclose(table.loc[1:2, "Corr"], corr[1:, 0], rtol=1e-12)
    assert table.at[2, "Corr.2"] == pytest.approx(corr[2, 1], rel=1e-12)
    assert table.loc[[0, 3], "Corr"].isna().all() and table.loc[[0, 1, 3], "Corr.2"].isna().all()


def _perfectly_correlated_data(seed: int = 0) -> pd.DataFrame:
    """6 groups x 10 rows whose intercept and slope effects are one effect (slope = intercept / 2)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), 10)
    x = np.tile(np.linspace(-1, 1, 10), 6)
    u = rng.normal(size=6)
    y = 1 + 0.5 * x + 2 * u[g] + u[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{i}" for i in g])})


def test_correlation_at_the_boundary_is_what_makes_the_fit_singular() -> None:
    """lme4's isSingular is a diagonal element of theta at 0; with both sds away from 0 that is the
    correlation at +-1, and the fit says so (boundary_terms, the note) rather than blaming an sd."""
    frame = model_frame(parse("y ~ x + (x|g)"), _perfectly_correlated_data())
    f = fit_lmm(frame, "reml")
    assert f.singular and f.theta["g.x"] < SINGULAR_TOL and f.theta["g.(Intercept)"] > 0.1
    vc = f.varcorr.set_index("term")["sd"]
    assert vc["sd__x"] > 0.1 * f.sigma and abs(vc["cor__(Intercept).x"]) == pytest.approx(1, abs=1e-6)
    assert f.boundary_terms() == [("g", "cor__(Intercept).x")]
    note = f.singular_note()
    assert "cor__(Intercept).x of (1 + x|g) at +1" in note and "(x||g)" in note and "sd of" not in note
    # slopes that do not vary: uncorrelated, lme4 puts their sd at 0, and the note says that instead
    rng = np.random.default_rng(1)
    data = _perfectly_correlated_data().assign(y=lambda d: 1 + 0.5 * d.x + 2 * rng.normal(size=6)[d.g.cat.codes]
                                               + rng.normal(size=len(d)))
    sd_zero = fit_lmm(model_frame(parse("y ~ x + (x||g)"), data), "reml")
    assert sd_zero.singular and sd_zero.boundary_terms() == [("g", "sd__x")]
    assert "the sd of (0 + x|g) at 0" in sd_zero.singular_note() and "correlation" not in sd_zero.singular_note()


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
