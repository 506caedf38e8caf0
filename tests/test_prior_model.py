"""bayeslmm's prior model (Bambi's default priors, computed without Bambi) is Bambi's model.

Each case builds both from the same formula and data: :func:`prior_model.default_model` from the
model frame and :func:`prior_model.from_bambi` from ``bambi.Model(...).build()``; names, dims,
levels in Bambi's order, columns and every prior argument must agree (priors to 1e-10 relative:
the same arithmetic in another order).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeslmm.engines.bayes import build_model, model_data
from bayeslmm.model.checks import validate
from bayeslmm.model.formula import drop_aliased, model_frame, parse
from bayeslmm.model.prior_model import Dist, default_model, from_bambi
from conftest import BEYOND, read_csv_as_r


def _both(text: str, df: pd.DataFrame, family: str = "gaussian"):
    formula = parse(text, family)
    rows, _ = validate(formula, df, "drop")
    formula, _ = drop_aliased(formula, rows)
    data = model_data(formula, rows)
    frame = model_frame(formula, data)
    return default_model(frame, data), from_bambi(build_model(formula, data))


def _same_dist(ours, theirs, where):
    if not isinstance(theirs, Dist):
        assert ours == theirs, where
        return
    assert ours.name == theirs.name, where
    assert set(ours.args) == set(theirs.args), where
    for k, v in theirs.args.items():
        if isinstance(v, Dist):
            _same_dist(ours.args[k], v, f"{where}.{k}")
        else:
            np.testing.assert_allclose(np.broadcast_to(ours.args[k], np.shape(v)), v, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{where}.{k}")


def _assert_same(ours, theirs):
    assert (ours.family, ours.response, ours.center) == (theirs.family, theirs.response, theirs.center)
    np.testing.assert_array_equal(ours.y.reshape(theirs.y.shape), theirs.y)
    np.testing.assert_allclose(ours.offset, theirs.offset)
    assert (ours.intercept is None) == (theirs.intercept is None)
    if theirs.intercept is not None:
        _same_dist(ours.intercept.prior, theirs.intercept.prior, "Intercept")
    assert [t.name for t in ours.common] == [t.name for t in theirs.common]
    for a, b in zip(ours.common, theirs.common, strict=True):
        np.testing.assert_allclose(a.data, b.data, err_msg=a.name)
        assert {k: list(v) for k, v in a.coords.items()} == {k: list(v) for k, v in b.coords.items()}, a.name
        _same_dist(a.prior, b.prior, a.name)
    assert [t.name for t in ours.group] == [t.name for t in theirs.group]
    for a, b in zip(ours.group, theirs.group, strict=True):
        assert (a.group, a.groups, a.level_dim, a.levels) == (b.group, b.groups, b.level_dim, b.levels), a.name
        np.testing.assert_allclose(a.predictor, b.predictor, err_msg=a.name)
        _same_dist(a.prior, b.prior, a.name)
    assert set(ours.aux) == set(theirs.aux)
    for k in theirs.aux:
        _same_dist(ours.aux[k], theirs.aux[k], k)
    assert ours.texts() == theirs.texts()
    assert list(ours.texts()) == list(theirs.texts())


def _slopes() -> pd.DataFrame:
    df = read_csv_as_r(BEYOND / "slopes.csv")
    rng = np.random.default_rng(3)
    df["k"] = rng.choice([10, 1, 2], len(df))
    df["f"] = rng.choice(["b", "a", "c"], len(df))
    df["num"] = (np.arange(len(df)) // 10) % 12 + 1
    df["w"] = rng.normal(size=len(df))
    return df


GAUSSIAN = [
    "reaction ~ day + (day|subject)",
    "reaction ~ day + I(day^2) + (day||subject)",
    "reaction ~ factor(k) * day + (1|num)",
    "reaction ~ f:day + w + (1|subject/f)",
    "reaction ~ f * w + (1 + f|subject)",
    "reaction ~ day + (0 + f|subject)",
    "reaction ~ day + (1 + factor(k)|subject)",
    "reaction ~ 0 + day + (1|subject)",
    "log(reaction) ~ poly(day, 2) + (1|subject) + (0 + w|num)",
    "reaction ~ 1 + (1|subject)",
]


@pytest.mark.parametrize("text", GAUSSIAN)
def test_gaussian_priors_are_bambis(text):
    _assert_same(*_both(text, _slopes()))


def test_dragons_priors_are_bambis(builtin):
    df = builtin
    for text in ("testScore ~ bodyLength2 + (1|mountainRange) + (1|mountainRange:site)",
                 "testScore ~ bodyLength2 + mountainRange + (1|site)"):
        _assert_same(*_both(text, df))


@pytest.mark.parametrize(("file", "text"), [
    ("binomial.csv", "cbind(sick, size - sick) ~ season + (1|farm)"),
    ("bernoulli.csv", "passed ~ hours * urban + (1|school)"),
    ("bernoulli.csv", "passed ~ hours + urban + (1 + hours|school)"),
    ("counts.csv", "birds ~ temp + offset(log(hours)) + (1|site) + (1|obs)"),
    ("counts.csv", "birds ~ temp * factor(visit) + (temp|site)"),
    ("counts.csv", "birds ~ temp + offset(log(hours)) + (1|site) + nb"),
])
def test_glmm_priors_are_bambis(file, text):
    df = read_csv_as_r(BEYOND / file)
    family = "poisson" if file == "counts.csv" else "binomial"
    if text.endswith(" + nb"):  # the negative binomial: alpha's prior too
        text, family = text.removesuffix(" + nb"), "negbinomial"
    _assert_same(*_both(text, df, family))


def test_groups_are_in_bambis_text_order_even_for_categoricals():
    df = _slopes()
    df["subject"] = pd.Categorical(df["subject"], categories=sorted(df["subject"].unique(), reverse=True))
    ours, theirs = _both("reaction ~ day + (1|subject) + (1|num)", df)
    _assert_same(ours, theirs)
    assert ours.group[1].groups[:3] == ("1", "10", "11")


@pytest.mark.parametrize("text", GAUSSIAN[:6])
def test_bambi_given_the_prior_model_has_the_same_priors(text):
    # Bambi's engine is handed the prior model's priors (bambi_priors): its model must be the default one
    df = _slopes()
    formula = parse(text)
    rows, _ = validate(formula, df, "drop")
    data = model_data(formula, rows)
    ours = default_model(model_frame(formula, data), data)
    _assert_same(ours, from_bambi(build_model(formula, data, ours)))


def test_a_refit_on_some_rows_keeps_the_full_fits_priors():
    """Cross-validation refits pin the full data's priors (Bambi's are scaled to the data they see)."""
    from bayeslmm.engines import bayes

    df = _slopes()
    formula = parse("reaction ~ day + (day|subject)")
    full = bayes.prepare(formula, df)
    part = df[df["subject"] != "s01"].reset_index(drop=True)
    own = bayes.prepare(formula, part)
    pinned = bayes.prepare(formula, part, pin=full.model)
    assert own.priors != full.priors  # the sds and slopes of other rows
    assert pinned.priors == full.priors and pinned.key != full.key  # the same priors, other data
