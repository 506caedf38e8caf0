"""Priors the user sets (so far the LKJ shape of correlations): statements, their errors, and their way
into the cache key, the engine and the posterior."""

from __future__ import annotations

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
    ("sd(g) ~ HalfNormal(10)", "class 'sd' cannot be set; settable classes: cor"),
    ("cor ~ Normal(0, 1)", "cor takes LKJ, not Normal"),
    ("cor ~ LKJ(1, 2)", "one argument, eta"),
    ("cor ~ LKJ(shape = 2)", "argument is eta, not 'shape'"),
    ("cor ~ LKJ(two)", "eta must be a number"),
    ("cor ~ LKJ(0)", "positive"),
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


def test_study_file_takes_priors_per_model():
    raw = {"model": [{"name": "m", "formula": CORRELATED, "prior": "cor(subject) ~ LKJ(3)"},
                     {"name": "n", "formula": CORRELATED}]}
    study = from_dict(raw)
    assert study.model("m").priors.lkj_eta("subject") == 3.0 and study.model("n").priors.lkj_eta("subject") == 1.0
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
