"""The naming rules of :mod:`bayeslmm.labels`: Bambi's posterior names, lme4's terms, formulae's columns.

Every rule is checked against the library that owns the other side: formulae's design (which
Bambi builds its model from), Bambi's own model variables, and a real (tiny) posterior.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslmm import labels
from bayeslmm.engines.bayes import build_model, model_data
from bayeslmm.engines.bayes import fit as bayes_fit
from bayeslmm.model.formula import fixed_design, parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import predict
from bayeslmm.summary.tables import fixed_draws, fixed_terms, tidy_posterior

QUIET = RunOptions(progress=False)

FORMULA = ("y ~ x*factor(period) + factor(period):`x val` + poly(z, 2) + f*h + I(z^2)"
           " + (1|g) + (0 + x|g) + (1|g:k) + (`x val`||k)")
#: lme4's names of FORMULA's fixed columns, as R's colnames(model.matrix(...)) writes them, with
#: backticked names written bare (bayeslmm's convention, README). factor(period) without a main
#: effect of `x val` is coded with a dummy per level, as R does.
LME4_NAMES = ("(Intercept)", "x", "factor(period)2", "factor(period)3", "poly(z, 2)1", "poly(z, 2)2", "fb", "fc",
              "hv", "I(z^2)", "x:factor(period)2", "x:factor(period)3", "factor(period)1:x val",
              "factor(period)2:x val", "factor(period)3:x val", "fb:hv", "fc:hv")
#: (group, coefficient) of FORMULA's random effects, as lme4 names them.
RANDOM = (("g", "(Intercept)"), ("g", "x"), ("g:k", "(Intercept)"), ("k", "(Intercept)"), ("k", "x val"))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 240
    df = pd.DataFrame({"x": rng.normal(size=n), "x val": rng.normal(size=n), "z": rng.normal(size=n),
                       "period": rng.integers(1, 4, n), "f": rng.choice(["a", "b", "c"], n),
                       "h": rng.choice(["u", "v"], n), "g": rng.choice(list("ABCDEF"), n),
                       "k": rng.choice(list("PQRS"), n)})
    df["y"] = df["x"] + (df["f"] == "b") + rng.normal(size=n)
    return model_data(parse(FORMULA), df)


@pytest.fixture(scope="module")
def model(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_model(parse(FORMULA), data)
        m.build()
    return m


@pytest.fixture(scope="module")
def tiny_fit(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bayes_fit(parse(FORMULA), data, SamplerOptions(draws=60, tune=100, chains=2, seed=5), run=QUIET)


def test_fixed_names_round_trip(data, model):
    design = fixed_design(parse(FORMULA), data)
    assert sorted(design.names) == sorted(LME4_NAMES) and len(set(design.names)) == len(LME4_NAMES)
    # the columns in the design matrix's order, each lme4 name from formulae's column label
    assert design.names == tuple(labels.lme4_name(c) for c in design.common.as_dataframe().columns)
    assert design.X.shape == (len(data), len(LME4_NAMES))
    # lme4 name -> (Bambi variable, level) -> lme4 name
    back = design.terms()
    for name in LME4_NAMES:
        column = design.column(name)
        assert back[(column.variable, column.level)] == name
    assert design.column("factor(period)2") == labels.FixedColumn("factor(period)2", "factor(period)", "2")
    assert design.column("x:factor(period)2") == labels.FixedColumn("x:factor(period)2", "x:factor(period)", "2")
    assert design.column("factor(period)2:x val") == labels.FixedColumn("factor(period)2:x val",
                                                                        "factor(period):x val", "2")
    assert design.column("fc:hv") == labels.FixedColumn("fc:hv", "f:h", "c, v")
    assert design.column("poly(z, 2)1") == labels.FixedColumn("poly(z, 2)1", "poly(z, 2)1")
    assert design.column("(Intercept)") == labels.FixedColumn("(Intercept)", "Intercept")
    with pytest.raises(KeyError, match="no fixed effect 'factor\\(period\\)4'"):
        design.column("factor(period)4")
    # the (variable, level) pairs are exactly Bambi's: its variables and their level coordinates
    mu = model.conditional_parameters["mu"]
    bambi = {(labels.bambi_variable(mu.intercept_term), "")}
    for term in mu.common_terms.values():
        levels = next(iter(term.coords.values()), [""])
        bambi |= {(labels.bambi_variable(term), str(lv)) for lv in levels}
    assert set(back) == bambi
    assert {c.variable for c in design.columns} <= set(model.backend.model.named_vars)
    # an unlevelled variable is classified under the name the design gives it
    for c in design.columns:
        if not c.level:
            assert labels.classify(c.variable) == ("fixed", "", c.name)


def test_random_and_residual_names_round_trip(model):
    named = set(model.backend.model.named_vars)
    for group, coef in RANDOM:
        effect = labels.effect_variable(group, coef)
        sd = labels.sd_variable(group, labels.sd_term(coef))
        assert {effect, sd} <= named, (group, coef)
        assert labels.classify(effect) == ("ran_vals", group, coef)
        assert labels.classify(sd) == ("ran_pars", group, labels.sd_term(coef))
        assert labels.sd_variable(*labels.classify(sd)[1:]) == sd
    mu = model.conditional_parameters["mu"]
    assert [labels.bambi_variable(t) for t in mu.group_specific_terms.values()] == [
        labels.effect_variable(g, c) for g, c in RANDOM]
    assert labels.effect_variable("g", "(Intercept)") == "1|g" and labels.sd_term("x") == "sd__x"
    assert labels.classify("sigma") == ("ran_pars", "Residual", "sd__Observation")
    assert labels.sd_variable("Residual", "sd__Observation") == "sigma" and "sigma" in named
    with pytest.raises(ValueError, match="not the term of a standard deviation"):
        labels.sd_variable("g", "x")


def test_lme4_name_of_formulae_columns():
    assert labels.lme4_name("mountainRange[Central]") == "mountainRangeCentral"
    assert labels.lme4_name("f[b]:h[v]") == "fb:hv"
    assert labels.lme4_name("Intercept") == "(Intercept)"
    assert labels.lme4_name("x val") == "x val"


def test_posterior_names_in_tidy_and_draws(tiny_fit):
    """A real posterior: every fixed column is found under its lme4 name, with its own draws."""
    design = fixed_design(tiny_fit.formula, tiny_fit.data)
    post = tiny_fit.idata["posterior"]
    tidy = tiny_fit.tidy()
    fixed = tidy[tidy["effect"] == "fixed"]
    assert list(fixed["term"]) == list(design.names)
    for column in design.columns:
        da = post[column.variable]
        if column.level:
            (dim,) = [d for d in da.dims if d not in labels.SAMPLE_DIMS]
            da = da.sel({dim: column.level})
        want = da.values.reshape(-1)
        np.testing.assert_array_equal(fixed_draws(tiny_fit, column.name), want)
        assert fixed.set_index("term").loc[column.name, "estimate"] == pytest.approx(want.mean(), rel=1e-12)
    names, draws = predict.fixed_effect_draws(tiny_fit)
    assert names == design.names and draws.shape == (post.sizes["chain"] * post.sizes["draw"], len(names))
    pars = tidy[tidy["effect"] == "ran_pars"]
    assert set(zip(pars["group"], pars["term"], strict=True)) == {
        (g, labels.sd_term(c)) for g, c in RANDOM} | {("Residual", "sd__Observation")}
    vals = tidy[tidy["effect"] == "ran_vals"]
    assert set(zip(vals["group"], vals["term"], strict=True)) == set(RANDOM)


def test_tidy_posterior_needs_the_design_for_levels(tiny_fit):
    post = tiny_fit.idata["posterior"]
    with pytest.raises(ValueError, match="fixed_terms"):
        tidy_posterior(post, "m")
    plain = tidy_posterior(post.to_dataset()[["Intercept", "x", "sigma"]], "m")
    assert list(plain["term"]) == ["(Intercept)", "x", "sd__Observation"]
    full = tidy_posterior(post, "m", fixed_terms=fixed_terms(tiny_fit))
    assert "x:factor(period)2" in set(full["term"])


def test_sdcor_terms_follow_lme4s_lower_triangle():
    """broom.mixed's ran_pars order is as.data.frame(VarCorr(fit), order = "lower.tri"): the
    covariance matrix's lower triangle column by column (theta's and confint's order), checked here
    against that definition rather than a hand-written list."""
    coefs = ("(Intercept)", "x", "z")
    lower_tri = [(i, j) for j in range(3) for i in range(j, 3)]  # (row, column), column-major
    want = [labels.sd_term(coefs[i]) if i == j else labels.cor_term(coefs[j], coefs[i]) for i, j in lower_tri]
    assert labels.sdcor_terms(coefs) == want
    assert want[:3] == ["sd__(Intercept)", "cor__(Intercept).x", "cor__(Intercept).z"]
    assert labels.sdcor_terms(coefs, correlated=False) == ["sd__(Intercept)", "sd__x", "sd__z"]
    assert labels.sdcor_terms(("(Intercept)",)) == ["sd__(Intercept)"]
    # every correlation pair of cor_pairs appears once, in the same relative order
    cors = [t for t in labels.sdcor_terms(coefs) if t.startswith(labels.COR_PREFIX)]
    assert cors == [labels.cor_term(a, b) for a, b in labels.cor_pairs(coefs)]
