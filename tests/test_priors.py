"""Priors the user sets in brms's classes (b, Intercept, sd, sigma, cor): statements, their errors, and
their way into the prior model, the cache key, both engines and the posterior."""

from __future__ import annotations

import re
import warnings

import pytest

from bayeslmm.cli import main
from bayeslmm.engines import bayes, marginal
from bayeslmm.errors import OptionsError, StudyError
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.model.priors import Priors, parse_prior
from bayeslmm.model.study import from_dict
from conftest import BEYOND, beyond

CORRELATED = "reaction ~ day + (day|subject)"


@pytest.mark.parametrize(("text", "group", "eta"), [
    ("cor ~ LKJ(2)", "", 2.0), ("cor(subject) ~ LKJ(eta = 4)", "subject", 4.0),
    ("  cor ( subject )~LKJ( 0.5 ) ", "subject", 0.5)])
def test_statements_are_read(text, group, eta):
    s = parse_prior(text)
    assert (s.cls, s.group, s.dist, s.value) == ("cor", group, "LKJ", eta)
    assert parse_prior(s.text) == s  # what bayeslmm writes, it reads back


@pytest.mark.parametrize(("text", "says"), [
    ("cor = LKJ(2)", "write it as"),
    ("tau ~ HalfNormal(10)", "class 'tau' is not one bayeslmm knows; the classes are b, Intercept, sd, sigma, "
                             "cor, shape"),
    ("cor ~ Normal(0, 1)", "cor takes LKJ, not Normal"),
    ("sd ~ Normal(0, 1)", "sd takes HalfNormal, HalfStudentT, HalfCauchy, Exponential, Gamma, InverseGamma"),
    ("b ~ Laplace(0, 1)", "b takes Normal, StudentT, Cauchy, not Laplace"),
    ("cor ~ LKJ(1, 2)", "LKJ(eta) has no argument '2'"),
    ("cor ~ LKJ(shape = 2)", "LKJ(eta) has no argument 'shape'"),
    ("cor ~ LKJ(two)", "eta must be a number"),
    ("cor ~ LKJ(0)", "eta must be a positive number"),
    ("sd(g) ~ HalfNormal(-1)", "sigma must be a positive number"),
    ("b ~ Normal(0)", "Normal(mu, sigma) needs sigma"),
    ("b ~ Normal(0, sigma = 1, mu = 2)", "argument mu given twice"),
    ("sigma(g) ~ HalfNormal(1)", "sigma takes nothing in parentheses"),
    ("sd(g, x, z) ~ HalfNormal(1)", "sd names a group, and optionally a coefficient"),
])
def test_bad_statements_say_what_is_wrong(text, says):
    with pytest.raises(OptionsError) as exc:
        parse_prior(text)
    assert says in str(exc.value) and "\n" not in str(exc.value)


def test_a_groups_statement_wins_over_the_class():
    priors = Priors.from_texts(["cor ~ LKJ(2)", "cor(subject) ~ LKJ(5)"])
    assert priors.lkj_eta("subject") == 5.0 and priors.lkj_eta("item") == 2.0 and Priors().lkj_eta("x") == 1.0


def test_groups_are_checked_against_the_formula():
    f = parse("y ~ x + (1 + x|g) + (1|h)")
    with pytest.raises(OptionsError, match="no grouping factor 'k'; its grouping factors are g, h"):
        Priors.from_texts("cor(k) ~ LKJ(2)").check_groups(f.grouping_factors, ("g",))
    with pytest.raises(OptionsError, match="h has no correlated random effects"):
        Priors.from_texts("cor(h) ~ LKJ(2)").check_groups(f.grouping_factors, ("g",))
    with pytest.raises(OptionsError, match="the formula has no correlated random effects"):
        Priors.from_texts("cor ~ LKJ(2)").check_groups(f.grouping_factors, ())


def test_study_file_takes_priors_per_model():
    raw = {"model": [{"name": "m", "formula": CORRELATED, "prior": ["cor(subject) ~ LKJ(3)", "sd ~ HalfNormal(9)"]},
                     {"name": "n", "formula": CORRELATED}]}
    study = from_dict(raw)
    assert study.model("m").priors.lkj_eta("subject") == 3.0 and study.model("n").priors.lkj_eta("subject") == 1.0
    assert study.model("m").priors.chosen("sd", "subject", "day").kwargs == {"sigma": 9.0}
    with pytest.raises(StudyError, match=r"model 'm': .*no grouping factor 'site'"):
        from_dict({"model": [{"name": "m", "formula": CORRELATED, "prior": ["cor(site) ~ LKJ(3)"]}]})


def test_the_prior_reaches_the_table_the_cache_key_and_the_engine():
    _, df = beyond("slopes_correlated")
    f = parse(CORRELATED)
    default = bayes.prepare(f, df, SamplerOptions())
    strong = bayes.prepare(f, df, SamplerOptions(), priors=Priors.from_texts("cor ~ LKJ(50)"))
    assert default.priors["cor(subject)"] == "LKJ(eta=1)" and strong.priors["cor(subject)"] == "LKJ(eta=50)"
    assert default.key != strong.key
    (block,) = marginal.spec(strong.formula, strong.frame, strong.model, strong.user_priors).blocks
    assert block.eta == 50.0
    # Bambi's engine drops the correlation: no LKJ prior in its table
    assert "cor(subject)" not in bayes.prepare(f, df, SamplerOptions(engine="bambi")).priors


def test_a_strong_lkj_prior_pulls_the_correlation_to_zero():
    """LKJ(eta) for a 2 x 2 matrix is Beta(eta, eta) on (r + 1) / 2: eta = 200 has prior sd 0.05, so the
    posterior of the correlation (-0.55 under LKJ(1) on these data) must sit near 0."""
    _, df = beyond("slopes_correlated")
    opts = SamplerOptions(draws=300, tune=300, chains=2, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bayes.fit(parse(CORRELATED), df, opts, run=RunOptions(progress=False),
                        priors=Priors.from_texts("cor ~ LKJ(200)"))
    r = fit.idata["posterior"]["cor__(Intercept).day|subject"].values
    assert abs(r.mean()) < 0.1 and r.std() < 0.08


def test_cli_prior_errors_are_one_line(capsys):
    code = main(["fit", str(BEYOND / "slopes.csv"), CORRELATED, "--prior", "cor(day) ~ LKJ(2)", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: prior 'cor(day) ~ LKJ(eta = 2)'")


@pytest.mark.parametrize(("text", "fields"), [
    ("b ~ Normal(0, 5)", ("b", "", "", "Normal", {"mu": 0.0, "sigma": 5.0})),
    ("b(day) ~ StudentT(3, 0, 2.5)", ("b", "", "day", "StudentT", {"nu": 3.0, "mu": 0.0, "sigma": 2.5})),
    ("Intercept ~ Normal(sigma = 20, mu = 250)", ("Intercept", "", "", "Normal", {"mu": 250.0, "sigma": 20.0})),
    ("sd(subject, day) ~ Exponential(0.1)", ("sd", "subject", "day", "Exponential", {"lam": 0.1})),
    ("sigma ~ HalfStudentT(4, 30)", ("sigma", "", "", "HalfStudentT", {"nu": 4.0, "sigma": 30.0})),
])
def test_every_class_is_read(text, fields):
    s = parse_prior(text)
    assert (s.cls, s.group, s.coef, s.dist, s.kwargs) == fields
    assert parse_prior(s.text) == s


def _prepared(texts, formula="reaction ~ day + (day|subject)", engine="auto"):
    _, df = beyond("slopes_correlated")
    return bayes.prepare(parse(formula), df, SamplerOptions(engine=engine), priors=Priors.from_texts(texts))


def test_priors_replace_bambis_defaults_where_they_reach():
    default = _prepared([])
    prep = _prepared(["b ~ Normal(0, 5)", "sd ~ HalfNormal(100)", "sd(subject, day) ~ HalfNormal(7)",
                      "sigma ~ Exponential(0.05)", "Intercept ~ Normal(250, 50)"])
    assert prep.priors["day"] == "Normal(mu=0, sigma=5)"
    assert prep.priors["Intercept"] == "Normal(mu=250, sigma=50)"
    assert prep.priors["1|subject"] == "Normal(mu=0, sigma=HalfNormal(sigma=100))"  # the class statement
    assert prep.priors["day|subject"] == "Normal(mu=0, sigma=HalfNormal(sigma=7))"  # the coefficient's wins
    assert prep.priors["sigma"] == "Exponential(lam=0.05)"
    assert default.priors["sigma"].startswith("HalfStudentT(nu=4, sigma=")  # Bambi's data-scaled default
    assert len({default.key, prep.key, _prepared(["b ~ Normal(0, 6)"]).key}) == 3
    sp = marginal.spec(prep.formula, prep.frame, prep.model, prep.user_priors)
    assert sp.bpar[1, 1] == 5.0 and sp.spar[-1, 0] == 0.05  # day's sigma; the residual sd's lambda


def test_a_factor_terms_columns_take_one_distribution():
    df = beyond("binomial_trials")[1]
    text = "cbind(sick, size - sick) ~ season + (1|farm)"
    f = parse(text, "binomial")
    prep = bayes.prepare(f, df, priors=Priors.from_texts(["b(seasonsummer) ~ Normal(0, 3)"]))
    assert prep.priors["season"] == "Normal(mu=0, sigma=[1, 3, 1])"  # Bambi's 1 for the other columns
    prep = bayes.prepare(f, df, priors=Priors.from_texts(["b(season) ~ Normal(0.5, 2)"]))
    assert prep.priors["season"] == "Normal(mu=0.5, sigma=2)"
    with pytest.raises(OptionsError, match="columns of one factor term share one distribution"):
        bayes.prepare(f, df, priors=Priors.from_texts(["b(seasonsummer) ~ StudentT(3, 0, 1)"]))


@pytest.mark.parametrize(("texts", "says"), [
    (["b(weight) ~ Normal(0, 1)"], "no fixed effect 'weight'; the fixed effects are day"),
    (["sd(subject, age) ~ HalfNormal(1)"], "subject has no random coefficient 'age'; its coefficients are "
                                           "(Intercept), day"),
    (["sd(site) ~ HalfNormal(1)"], "no grouping factor 'site'"),
])
def test_priors_that_reach_nothing_say_what_exists(texts, says):
    with pytest.raises(OptionsError, match=re.escape(says)):
        _prepared(texts)
    with pytest.raises(OptionsError, match="a poisson model has no residual sd"):
        bayes.prepare(parse("birds ~ temp + (1|site)", "poisson"), beyond("poisson_offset")[1],
                      priors=Priors.from_texts("sigma ~ HalfNormal(1)"))
    with pytest.raises(OptionsError, match="the model has no intercept"):
        _prepared(["Intercept ~ Normal(0, 1)"], "reaction ~ 0 + day + (1|subject)")


def test_both_engines_compile_the_same_log_prior():
    """The marginal engine's prior terms (its numba densities on the spec's codes) equal PyMC's log
    density of each prior in the Bambi model Bambi's engine samples, at a point."""
    import numpy as np

    from bayeslmm.engines import marginal_lik as ml

    texts = ["b ~ StudentT(5, 1, 4)", "sd(subject) ~ Gamma(2, 0.1)", "sd(subject, day) ~ HalfCauchy(3)",
             "sigma ~ InverseGamma(3, 40)"]
    formula = "reaction ~ day + (1|subject) + (0 + day|subject)"
    spec = from_dict({"model": [{"name": "m", "formula": formula, "prior": texts}]}).model("m")  # a study file's
    _, df = beyond("slopes_correlated")
    prep = bayes.prepare(spec.formula, df, SamplerOptions(), priors=spec.priors)
    sp = marginal.spec(prep.formula, prep.frame, prep.model, prep.user_priors)
    pm_model = bayes.build_model(prep.formula, prep.data, prep.model).backend.model
    point = {"day": 3.3, "1|subject_sigma": 21.0, "day|subject_sigma": 4.2, "sigma": 27.0}
    ours = {"day": ml.location_prior(sp.bcode[1], sp.bpar[1], point["day"])[0]}
    for r, k in zip(sp.random, range(len(sp.random)), strict=True):
        t = np.log(point[r.sigma_name])
        ours[r.sigma_name] = ml.scale_prior(sp.scode[k], sp.spar[k], t)[0] - t  # without the log-Jacobian
    t = np.log(point["sigma"])
    ours["sigma"] = ml.scale_prior(sp.scode[-1], sp.spar[-1], t)[0] - t
    for name, value in point.items():
        rv = pm_model[name]
        theirs = float(pm_model.compile_fn(pm_model.logp(vars=[rv], jacobian=False, sum=True),
                                           inputs=[pm_model.rvs_to_values[rv]], on_unused_input="ignore")(
            {pm_model.rvs_to_values[rv].name: np.log(value) if name != "day" else value}))
        # 1e-8: PyTensor's HalfCauchy and numba's (fastmath) differ by ~1e-9 relative in rounding; a wrong
        # argument would be off in the first digits
        np.testing.assert_allclose(ours[name], theirs, rtol=1e-8, err_msg=name)


def test_the_bambi_engine_is_given_the_users_priors():
    prep = _prepared(["sd ~ Exponential(0.02)"], engine="bambi")
    model = bayes.build_model(prep.formula, prep.data, prep.model)
    assert str(model.components["mu"].group_specific_terms["1|subject"].prior.args["sigma"]) == \
        "Exponential(lam: 0.02)"


def test_the_report_marks_the_priors_a_user_set():
    from types import SimpleNamespace

    from bayeslmm.reporting.report import priors_text

    prep = _prepared(["sd(subject, day) ~ HalfNormal(7)", "cor ~ LKJ(2)"])
    text = priors_text(SimpleNamespace(model=prep.model, priors=prep.priors))
    assert "`day|subject` ~ Normal(mu=0, sigma=HalfNormal(sigma=7)) (**set**)" in text
    assert "`cor(subject)` ~ LKJ(eta=2) (favours correlations near 0) (**set**)" in text
    assert "`1|subject` ~ Normal(mu=0, sigma=HalfNormal(sigma=" in text and text.count("(**set**)") == 2
    default = _prepared([])
    assert priors_text(SimpleNamespace(model=default.model, priors=default.priors)).startswith(
        "Priors (Bambi's defaults, scaled to the data): ")


def test_shape_sets_the_negative_binomials_theta():
    df = beyond("poisson_offset")[1]
    f = parse("birds ~ temp + offset(log(hours)) + (1|site)", "negbinomial")
    prep = bayes.prepare(f, df, priors=Priors.from_texts("shape ~ Exponential(0.1)"))
    assert prep.priors["alpha"] == "Exponential(lam=0.1)" and prep.model.user_set == ("alpha",)
    from bayeslmm.engines import glmm

    _, par = glmm.nb_alpha_prior(prep.model)
    assert par[0] == 0.1
    with pytest.raises(OptionsError, match="only a negative binomial model has a shape"):
        _prepared(["shape ~ Exponential(0.1)"])
