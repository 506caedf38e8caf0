"""The negative binomial on the Bayesian side: Bambi's "negativebinomial" family is the reference posterior.

Bambi 0.21's ``negativebinomial`` (log link) is PyMC's ``NegativeBinomial(mu, alpha)``, variance
``mu + mu^2 / alpha``: ``alpha`` is MASS's and lme4's theta (checked below against MASS's log-likelihood as
bayeslmm reproduces it), with Bambi's default prior ``HalfCauchy(beta = 1)`` on it. The GLMM engine samples
``log alpha`` with the other parameters; its posterior variable is Bambi's ``alpha``, its tidy row
``ran_pars``/``Residual``/``theta`` (broom.mixed has none: lme4's ``VarCorr`` of a glmer.nb fit has no
residual, and brms's ``shape`` matches none of its prefixes; bayeslmm keeps one so that lme4's theta and
the posterior's stand side by side).

As tests/test_glmm_engine.py does for the other families: the kernel against the PyMC model Bambi builds,
the pointwise log-likelihood against Bambi's ``compute_log_likelihood``, the residual checks on "point"
fits (tests/test_glmm_checks.py), and a seeded slow comparison of the GLMM engine with Bambi's NUTS on
``tests/data/beyond/counts.csv`` in Monte Carlo standard errors (same rule: 4 combined MCSE for means and
sds of the population parameters, the family-wise z for every level's effect).
"""

from __future__ import annotations

import ctypes
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from bayeslmm.engines import bayes, glmm
from bayeslmm.engines import glmm_lik as gl
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.errors import DataError
from bayeslmm.labels import NB_SIZE_TERM, NB_SIZE_VARIABLE, RESIDUAL
from bayeslmm.lme4 import glmer
from bayeslmm.model import checks
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.model.options import SamplerOptions
from bayeslmm.summary import residuals
from bayeslmm.summary.sidebyside import ratio_table
from bayeslmm.summary.tables import tidy_posterior, variance_partition_draws
from conftest import BEYOND, ROOT, beyond
from test_glmm_checks import TRUTH, _side, counts_data, point_fit

FORMULA = "birds ~ temp + offset(log(hours)) + (1|site)"
LME4 = json.loads((ROOT / "tests" / "data" / "glmer_nb_lme4.json").read_text())["models"]["nb_offset"]


def _case(text: str = FORMULA):
    f = parse(text, "negbinomial")
    data = bayes.model_data(f, beyond("poisson_offset")[1])
    return f, bayes.build_model(f, data), model_frame(f, data)


def _logp(sp, theta):
    grad = np.empty(theta.size)
    return gl.logp_grad(theta, grad, *sp.kernel_args()), grad


def _fd(sp, theta, eps=1e-6):
    return np.array([(_logp(sp, theta + h)[0] - _logp(sp, theta - h)[0]) / (2 * eps) for h in eps * np.eye(theta.size)])


# ---------------------------------------------------------------------------------------
# The family, Bambi's model and its prior
# ---------------------------------------------------------------------------------------


def test_counts_are_read_as_bambis_negativebinomial():
    _, df = beyond("poisson_offset")
    f = parse(FORMULA, "negbinomial")
    frame = model_frame(f, df)
    np.testing.assert_array_equal(frame.y, df["birds"])
    np.testing.assert_allclose(frame.offset, np.log(df["hours"]))
    assert frame.trials is None and f.is_glmm and bayes.bambi_family(f) == "negativebinomial"
    prep = bayes.prepare(f, df, SamplerOptions())
    pois = bayes.prepare(parse(FORMULA, "poisson"), df, SamplerOptions())
    assert prep.engine == "glmm" and prep.model.family == "negativebinomial" and prep.key != pois.key
    assert prep.priors["alpha"] == "HalfCauchy(beta=1)"
    assert not any("counts" in n for n in prep.notes)
    with pytest.raises(DataError, match=r"counts .* for --family negbinomial"):
        checks.validate(parse("temp ~ hours + (1|site)", "negbinomial"), df)


def test_alpha_is_lme4s_theta_with_bambis_default_prior():
    """PyMC's NegativeBinomial(mu, alpha) log-likelihood is MASS's negative.binomial(theta = alpha) as
    bayeslmm's glmer computes it (lme4's aic()), and the engine reads Bambi's prior on alpha."""
    import pymc as pm

    y = np.array([0.0, 1, 3, 8, 25])  # as floats, as Bambi passes them (integer counts take a less exact path)
    eta = np.array([0.1, -0.4, 1.2, 2.0, 2.9])
    for alpha in np.array([0.7, 7.8, 300.0]):  # float64 (PyTensor stores the Python float 300.0 as an integer)
        theirs = pm.logp(pm.NegativeBinomial.dist(mu=np.exp(eta), alpha=alpha), y).eval().sum()
        assert -glmer.neg2loglik(glmer.NegBinomial(alpha), eta, y, None) / 2 == pytest.approx(theirs, rel=1e-12)
    _, model, _ = _case()
    code, par = glmm.nb_alpha_prior(model)
    assert code == ml.HALF_CAUCHY and par[0] == 1.0
    assert str(model.marginal_parameters[NB_SIZE_VARIABLE].prior) == "HalfCauchy(beta: 1.0)"


def test_log_density_and_gradient_are_the_pymc_model_bambis():
    """At random points, the kernel's log density (every constant) and gradient, log alpha's included,
    equal those of the PyMC model Bambi builds; the gradient equals finite differences; the partially
    centred parameterisation is the same posterior (the change of variables' log-Jacobian)."""
    f, model, frame = _case()
    sp = glmm.spec(f, frame, model, centring_rule="noncentred")
    assert sp.n_aux == 1 and sp.n_dim == 2 + 1 + 25 + 1
    pm_model = model.backend.model
    names = [v.name for v in pm_model.value_vars]
    assert names == ["alpha_log__", "Intercept", "temp", "1|site_sigma_log__", "1|site_offset"]
    fns = pm_model.compile_fn([pm_model.logp(), pm_model.dlogp()], mode="FAST_COMPILE")
    shapes = {k: np.shape(v) for k, v in pm_model.initial_point().items()}
    (r,) = sp.random
    cols = 2 + 1 + sp.layout.columns[r.factor][r.order, r.slot]

    def to_theta(point):
        theta = np.empty(sp.n_dim)
        theta[:2] = point["Intercept"], point["temp"]
        theta[2] = point["1|site_sigma_log__"]
        theta[cols] = point["1|site_offset"]
        theta[-1] = point["alpha_log__"]
        return theta

    rng = np.random.default_rng(3)
    for _ in range(3):
        point = {n: rng.normal(0, 0.7, size=shapes[n]) for n in names}
        # a temperature slope of degrees' scale: with |eta| near 18, FAST_COMPILE's PyMC (without its sigmoid
        # rewrites) loses 1e-7 to log(1 - p) (scipy's nbinom too); the kernel does not
        point["temp"] = rng.normal(0, 0.05)
        theta = to_theta(point)
        ours, grad = _logp(sp, theta)
        theirs, dtheirs = fns(point)
        assert ours == pytest.approx(float(theirs), rel=1e-11)
        sizes = np.cumsum([np.size(point[n]) for n in names])[:-1]
        parts = {n: g.reshape(np.shape(point[n])) for n, g in zip(names, np.split(dtheirs, sizes), strict=True)}
        np.testing.assert_allclose(grad, to_theta(parts), rtol=1e-9, atol=1e-9 * np.abs(grad).max())
        np.testing.assert_allclose(grad, _fd(sp, theta), rtol=1e-6, atol=1e-6 * np.abs(grad).max())
    auto = glmm.spec(f, frame, model)
    assert 0 < auto.weight.mean() <= 1  # the sites carry data: (partly) centred
    beta, sds, u, _ = glmm.draws(sp, theta[None])
    w = np.empty(sp.layout.q)
    w[sp.layout.icol] = auto.weight
    other = theta.copy()
    other[3:-1] = (u[0] + w * (auto.H @ beta[0])) / sds[0, 0] ** (1.0 - w)
    assert _logp(auto, other)[0] == pytest.approx(_logp(sp, theta)[0] - np.sum(w * np.log(sds[0, 0])), rel=1e-12)
    grad = _logp(auto, other)[1]
    np.testing.assert_allclose(grad, _fd(auto, other), rtol=1e-5, atol=1e-6 * np.abs(grad).max())


def test_special_functions_and_the_poisson_limit():
    """digamma and log Gamma(a + y) - log Gamma(a) to rounding error (Stirling's series above 1e5); above
    alpha = 1e10 a row's log-likelihood is the Poisson's, as PyMC switches to it."""
    for x in (1e-3, 0.3, 1.0, 9.99, 10.0, 37.2, 1e4, 1e8):
        assert gl.digamma(x) == pytest.approx(special.digamma(x), rel=2e-15, abs=1e-15)
    for a in (0.4, 7.8, 9.9e4, 1.1e5, 3e7):
        for y in (0.0, 1.0, 17.0, 400.0):
            v, d = gl.log_rising(a, y)
            exact = float(np.sum(np.log(a + np.arange(y)))) if y else 0.0
            assert v == pytest.approx(exact, rel=1e-12, abs=1e-12)
            h = a * 1e-5
            assert d == pytest.approx((gl.log_rising(a + h, y)[0] - gl.log_rising(a - h, y)[0]) / (2 * h),
                                      rel=1e-5, abs=1e-13)
    for y, eta in ((0.0, 0.3), (4.0, 1.1), (30.0, 3.0)):
        assert gl.row_loglik(gl.NEGBIN_LOG, y, 1.0, eta, 2e10) == gl.row_loglik(gl.POISSON_LOG, y, 1.0, eta, 1.0)
        assert gl.row_loglik(gl.NEGBIN_LOG, y, 1.0, eta, 5.0) - special.gammaln(y + 1) == pytest.approx(
            stats.nbinom.logpmf(y, 5.0, 5.0 / (5.0 + np.exp(eta))), rel=1e-13)


def test_c_entry_point_gives_the_python_kernel_value():
    f, model, frame = _case()
    sp = glmm.spec(f, frame, model)
    buf = sp.packed()
    x = np.random.default_rng(2).normal(0, 0.3, sp.n_dim)
    want, gwant = _logp(sp, x)
    fn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_double),
                          ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
                          ctypes.c_void_p)(gl.c_logp.address)  # fmt: skip
    grad, lp = np.empty(sp.n_dim), np.empty(1)
    ptr = ctypes.POINTER(ctypes.c_double)
    assert fn(sp.n_dim, x.ctypes.data_as(ptr), grad.ctypes.data_as(ptr), lp.ctypes.data_as(ptr), buf.ctypes.data) == 0
    assert lp[0] == pytest.approx(want, rel=1e-13)
    np.testing.assert_allclose(grad, gwant, rtol=1e-12, atol=1e-10)
    assert fn(sp.n_dim - 1, x.ctypes.data_as(ptr), grad.ctypes.data_as(ptr), lp.ctypes.data_as(ptr),
              buf.ctypes.data) == -1  # fmt: skip


def test_cli_names_the_family_and_refuses_its_other_names(capsys):
    from bayeslmm.cli import main

    path = str(ROOT / "tests" / "data" / "beyond" / "counts.csv")
    for alias in ("negativebinomial", "nb"):
        assert main(["fit", path, FORMULA, "--family", alias]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "use --family negbinomial" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "negbinomial (counts more variable than Poisson's" in " ".join(capsys.readouterr().out.split())


def test_study_files_take_the_family():
    from bayeslmm.errors import StudyError
    from bayeslmm.model.study import from_dict

    raw = {"name": "s", "data": {"source": "counts.csv"},
           "model": [{"name": "nb", "formula": FORMULA, "family": "negbinomial"}]}
    (spec,) = from_dict(raw).models
    assert spec.formula.family == "negbinomial" and spec.formula.is_glmm
    raw["model"][0]["family"] = "negativebinomial"
    with pytest.raises(StudyError, match="negbinomial, not 'negativebinomial'"):
        from_dict(raw)


# ---------------------------------------------------------------------------------------
# A short fit: Bambi's layout and log-likelihood, tidy rows
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_fit():
    f, model, frame = _case()
    tree = glmm.sample(model, frame, SamplerOptions(draws=100, tune=200, chains=2, seed=3), progress=False)
    return f, model, frame, tree


def test_log_likelihood_is_what_bambi_computes(short_fit):
    """The pointwise log-likelihood equals Bambi's ``compute_log_likelihood`` on the same draws to 1e-10
    (log Gamma terms included), and its recomputation from the saved posterior equals the fit's bit for bit."""
    _, model, frame, tree = short_fit
    theirs = tree.copy(deep=True)
    del theirs["log_likelihood"]
    model.compute_log_likelihood(theirs)
    ours = tree["log_likelihood"]["birds"].values
    np.testing.assert_allclose(ours, theirs["log_likelihood"]["birds"].values, rtol=1e-10, atol=1e-10)
    again = glmm.log_likelihood(model, frame, tree, slice(7, 60))
    np.testing.assert_array_equal(again.values, ours[:, :, 7:60])


def test_posterior_layout_is_bambis(short_fit):
    """Names (alpha first, as Bambi's), dims and coords are Bambi's."""
    _, model, _, tree = short_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bayes.sample(model, SamplerOptions(draws=20, tune=20, chains=1, seed=1), progress=False)
    for group in ("posterior", "log_likelihood", "observed_data"):
        ours, theirs = tree[group].to_dataset(), ref[group].to_dataset()
        assert list(ours.data_vars) == list(theirs.data_vars), group
        for v in ours.data_vars:
            assert ours[v].dims == theirs[v].dims, (group, v)
    assert next(iter(tree["posterior"].data_vars)) == NB_SIZE_VARIABLE


def test_tidy_row_of_alpha_and_the_latent_shares(short_fit):
    """alpha's tidy row is (ran_pars, Residual, theta), after the sds; the varcorr table leaves it out, as
    lme4's VarCorr; a fixed effect named alpha in another family stays a fixed effect; the latent
    residual variance is ln(1 + 1/lambda + 1/alpha) draw by draw."""
    f, model, _, tree = short_fit
    fit = bayes.BayesFit("nb", f, model.data, tree, SamplerOptions(), {}, "glmm", 0.0, False, "")
    pars = fit.tidy(effects=("ran_pars",))
    assert list(zip(pars["group"], pars["term"], strict=True)) == [("site", "sd__(Intercept)"),
                                                                   (RESIDUAL, NB_SIZE_TERM)]
    alpha = tree["posterior"][NB_SIZE_VARIABLE].values.ravel()
    assert pars["estimate"].iloc[1] == pytest.approx(alpha.mean()) and pars["r_hat"].notna().all()
    assert list(fit.varcorr()["Groups"]) == ["site"]
    other = tidy_posterior(tree["posterior"], "m", effects=("fixed",))
    assert NB_SIZE_VARIABLE in set(other["term"])  # by name alone, alpha would be a fixed effect
    share = variance_partition_draws(fit)
    s2 = tree["posterior"]["1|site_sigma"].values.ravel() ** 2
    lam = model.data["birds"].mean()
    np.testing.assert_allclose(share["site"], s2 / (s2 + np.log1p(1 / lam + 1 / alpha)), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Residual checks on point fits (tests/test_glmm_checks.py's method)
# ---------------------------------------------------------------------------------------


def nb_counts(seed: int = 5, theta: float = 2.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Negative binomial counts (theta 2) around counts_data's log means: 40 groups x 10 rows."""
    df, u = counts_data(seed)
    rng = np.random.default_rng(seed + 100)
    mu = np.exp(0.3 + 0.4 * df["x"].to_numpy() + np.repeat(u, 10))
    return df.assign(y=rng.negative_binomial(theta, theta / (theta + mu))), u


def test_a_right_negative_binomial_model_passes_where_poisson_fails():
    """On negative binomial counts, the negative binomial at the truth passes every test; the Poisson at
    the same means is overdispersed, and its note names --family negbinomial; the replicates' mean and
    variance are mu and mu + mu^2 / theta."""
    df, u = nb_counts()
    nb = point_fit("y ~ x + (1|g)", "negbinomial", df, {**TRUTH, NB_SIZE_VARIABLE: 2.0}, {"g": 0.3}, {"g": u})
    res = residuals.simulate_residuals(nb, seed=1)
    tests = {t.name: t for t in residuals.residual_tests(res)}
    assert not any(t.flagged for t in tests.values()), tests
    assert residuals.check_notes(nb, res) == []
    pois = point_fit("y ~ x + (1|g)", "poisson", df, TRUTH, {"g": 0.3}, {"g": u})
    notes = residuals.check_notes(pois)
    assert notes and notes[0].startswith("overdispersion") and "--family negbinomial" in notes[0]
    from bayeslmm.summary import predict

    mean, reps, var = predict.predictive_draws(nb, 400, seed=3, variance=True)
    mu = np.exp(0.3 + 0.4 * df["x"].to_numpy() + np.repeat(u, 10))
    np.testing.assert_allclose(mean[0], mu, rtol=1e-12)
    np.testing.assert_allclose(var[0], mu + mu**2 / 2.0, rtol=1e-12)
    z = (reps.mean(axis=0) - mu) / np.sqrt(var[0] / reps.shape[0])
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2  # 400 replicates per row: their mean is mu
    assert 0.85 < np.mean(reps.var(axis=0, ddof=1) / var[0]) < 1.15


def test_rate_ratios_of_a_negative_binomial_model():
    df, u = nb_counts()
    fit = point_fit("y ~ x + (1|g)", "negbinomial", df, {**TRUTH, NB_SIZE_VARIABLE: 2.0}, {"g": 0.3}, {"g": u})
    table = ratio_table(fit, _side("m", [("(Intercept)", 0.3, 0.1, 0.5), ("x", 0.4, 0.3, 0.5)]))
    assert list(table["scale"]) == ["rate", "rate ratio"]
    assert table["post_mean"].tolist() == pytest.approx([np.exp(0.3), np.exp(0.4)])


# ---------------------------------------------------------------------------------------
# Real seeded fits: the GLMM engine and Bambi's NUTS agree; lme4's glmer.nb and the truths inside
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_fits():
    _, model, frame = _case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bayes.sample(model, SamplerOptions(seed=21), progress=False, log_likelihood=False)
    tree = glmm.sample(model, frame, SamplerOptions(seed=22), progress=False, log_likelihood=False)
    return ref, tree


def _family_z(m: int, alpha: float = 1e-3) -> float:
    return float(stats.norm.isf(alpha / (2 * m)))


@pytest.mark.slow
def test_engines_agree(engine_fits):
    """alpha, the fixed effects and the sd (means and posterior sds within 4 combined MCSE), and every site's
    effect (within the family-wise z of 50 comparisons, 3.5)."""
    import arviz as az

    ref, tree = engine_fits
    names = [NB_SIZE_VARIABLE, "Intercept", "temp", "1|site_sigma"]
    a, b = az.summary(ref, var_names=names), az.summary(tree, var_names=names)
    for v in names:
        for stat in ("mean", "sd"):
            tol = 4 * np.hypot(a.loc[v, f"mcse_{stat}"], b.loc[v, f"mcse_{stat}"])
            assert abs(a.loc[v, stat] - b.loc[v, stat]) < tol, f"{v} {stat}: {a.loc[v, stat]}, {b.loc[v, stat]}"
    a, b = az.summary(ref, var_names=["1|site"]), az.summary(tree, var_names=["1|site"])
    z = _family_z(2 * len(a))
    for stat in ("mean", "sd"):
        bad = abs(a[stat] - b[stat]) >= z * np.hypot(a[f"mcse_{stat}"], b[f"mcse_{stat}"])
        assert not bad.any(), f"effects' {stat}: {list(a.index[bad])}"


@pytest.mark.slow
def test_glmm_fit_is_clean_and_holds_lme4_and_the_truths(engine_fits):
    """No divergences, r_hat <= 1.01, bulk ESS >= 1000; glmer.nb's estimates (theta included) and the
    simulation's truths (tests/data/beyond/README.md: log rate 0.5 + 0.05 (temp - 15), site sd 0.6) inside
    the 95% intervals."""
    import arviz as az

    _, tree = engine_fits
    post = tree["posterior"]
    assert int(tree["sample_stats"]["diverging"].sum()) == 0
    s = az.summary(tree, var_names=[NB_SIZE_VARIABLE, "Intercept", "temp", "1|site_sigma"])
    assert (s["r_hat"] <= 1.01).all() and (s["ess_bulk"] >= 1000).all()
    lme4 = {"Intercept": LME4["fixef"]["(Intercept)"], "temp": LME4["fixef"]["temp"],
            "1|site_sigma": LME4["varcorr"][0]["sdcor"], NB_SIZE_VARIABLE: LME4["theta"]}
    truth = {"Intercept": -0.25, "temp": 0.05, "1|site_sigma": 0.6}
    for what, values in (("lme4", lme4), ("truth", truth)):
        for var, value in values.items():
            lo, hi = np.quantile(post[var].values.ravel(), [0.025, 0.975])
            assert lo < value < hi, f"{what} {var} = {value} outside ({lo}, {hi})"


def test_a_negative_binomial_report_has_every_section(tmp_path):
    """The report of a negative binomial fit: theta's row, its R² on the latent scale (with theta), the
    prior sensitivity of theta, and a prior predictive check (they crashed on its alpha before)."""
    from bayeslmm.cli import main

    out = tmp_path / "nb"
    code = main(["fit", str(BEYOND / "counts.csv"), FORMULA, "--family", "negbinomial", "--out", str(out),
                 "--draws", "200", "--tune", "300", "--chains", "2", "--no-progress"])
    md = (out / "report.md").read_text()
    assert code == 0 and "theta (Residual)" in md and "**R²**" in md and "prior_predictive" in md
    side = pd.read_csv(out / "sidebyside.csv")
    theta = side[side["term"] == "theta"].iloc[0]
    assert np.isfinite(theta["prior_sensitivity"])
