"""R's formula idioms: factor(), I(x^2), log/exp/sqrt/scale/poly, backticks, offset(), numeric ids."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm.engines import bayes
from bayeslmm.errors import DataError, FormulaError
from bayeslmm.lme4 import frequentist
from bayeslmm.model import rterms
from bayeslmm.model.formula import aliased_columns, drop_aliased, group_codes, model_frame, parse, to_bambi


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(11)
    n = 240
    g = np.repeat(np.arange(1, 25), 10)  # numeric ids 1..24: R sorts them as numbers
    x = rng.normal(size=n)
    out = pd.DataFrame({"g": g, "x": x, "x2": 2 * x + 1, "z": rng.uniform(1, 3, n), "x val": rng.normal(size=n),
                        "period": rng.integers(1, 5, n)})
    out["y"] = 1 + 0.5 * x + 0.3 * out["z"] + rng.normal(size=25)[g] + rng.normal(size=n)
    return out


def test_r_poly_matches_r():
    # R 4.x: round(poly(1:5, 2), 7)
    z = rterms.r_poly(np.arange(1.0, 6.0), 2)
    r = np.array([[-0.6324555, 0.5345225], [-0.3162278, -0.2672612], [0.0, -0.5345225],
                  [0.3162278, -0.2672612], [0.6324555, 0.5345225]])
    np.testing.assert_allclose(z, r, atol=1e-7)


def test_r_names():
    assert rterms.r_name("I(x ^ 2)") == "I(x^2)"
    assert rterms.r_name("I(x**2)") == "I(x^2)"
    assert rterms.r_name("poly(x,2)") == "poly(x, 2)"
    assert rterms.r_name("`x val`") == "x val"
    assert rterms.r_name("log( z )") == "log(z)"
    assert rterms.column_names("poly(x, 3)") == ["poly(x, 3)1", "poly(x, 3)2", "poly(x, 3)3"]


def test_source_columns():
    assert rterms.source_columns("I(x^2 + log(`x val`))") == ["x", "x val"]
    assert rterms.source_columns("poly(x, degree = 2)") == ["x"]
    assert rterms.source_columns("np.log(z)") == ["z"]


def test_numeric_ids_sort_as_numbers(df):
    levels, codes = group_codes(df, "g")
    assert levels[:12] == tuple(str(i) for i in range(1, 13))
    assert levels[codes[df["g"].to_numpy() == 10][0]] == "10"
    data = bayes.model_data(parse("y ~ x + (1|g)"), df)
    assert list(data["g"].cat.categories[:11]) == [str(i) for i in range(1, 12)]


def test_factor_levels_numeric_order():
    cat = rterms.as_factor(pd.Series([10, 2, 1, 2]))
    assert list(cat.categories) == ["1", "2", "10"]


def test_r_idioms_give_r_term_names(df):
    f = parse("log(y + 10) ~ log(z) + factor(period) + I(x^2) + poly(x, 2) + `x val` + scale(z) + (1|g)")
    frame = model_frame(f, bayes.model_data(f, df))
    assert frame.x_names == ("(Intercept)", "log(z)", "factor(period)2", "factor(period)3", "factor(period)4",
                             "I(x^2)", "poly(x, 2)1", "poly(x, 2)2", "x val", "scale(z)")
    np.testing.assert_allclose(frame.y, np.log(df["y"] + 10))
    j = frame.x_names.index("scale(z)")
    np.testing.assert_allclose(frame.X[:, j], (df["z"] - df["z"].mean()) / df["z"].std(ddof=1))
    np.testing.assert_allclose(frame.X[:, frame.x_names.index("I(x^2)")], df["x"] ** 2)


def test_interaction_with_factor_names(df):
    f = parse("y ~ x*factor(period) + (1|g)")
    frame = model_frame(f, bayes.model_data(f, df))
    assert "x:factor(period)2" in frame.x_names


def test_offset_is_subtracted_for_the_gaussian_lme4_fit(df):
    with_offset = parse("y ~ x + offset(0.3 * z) + (1|g)")
    frame = model_frame(with_offset, bayes.model_data(with_offset, df))
    np.testing.assert_allclose(frame.y, df["y"] - 0.3 * df["z"])
    assert "offset(0.3 * z)" in to_bambi(with_offset)
    manual = df.assign(w=df["y"] - 0.3 * df["z"])
    plain = parse("w ~ x + (1|g)")
    a = frequentist.fit(frame, "reml")
    b = frequentist.fit(model_frame(plain, bayes.model_data(plain, manual)), "reml")
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=1e-8)


def test_binomial_response_needs_the_binomial_family():
    with pytest.raises(FormulaError, match=r"binomial response .*: fit it with --family binomial"):
        parse("cbind(s, f) ~ x + (1|g)")
    assert parse("cbind(s, n - s) ~ x + (1|g)", "binomial").cbind == ("s", "n - s")
    with pytest.raises(FormulaError, match="cbind\\(\\) takes two columns"):
        parse("cbind(s) ~ x + (1|g)", "binomial")


def test_unknown_function_is_one_line(df):
    f = parse("y ~ foo(x) + (1|g)")
    with pytest.raises(FormulaError, match="'foo' is neither a column nor a function"):
        bayes.model_data(f, df)


def test_log_of_zero_is_a_data_error(df):
    f = parse("y ~ log(x) + (1|g)")
    with pytest.raises(DataError, match="not finite"):
        bayes.model_data(f, df)


def test_aliased_columns_as_r_drops_them():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    X = np.column_stack([np.ones(50), x, 2 * x + 1, rng.normal(size=50)])
    assert aliased_columns(X) == [2]


def test_drop_aliased_drops_the_later_term(df):
    f, notes = drop_aliased(parse("y ~ x + x2 + (1|g)"), df)
    assert f.fixed == ("x",) and f.text == "y ~ x + x2 + (1|g)"
    assert len(notes) == 1 and "x2" in notes[0] and "rank deficient" in notes[0]
    same, none = drop_aliased(parse("y ~ x + z + (1|g)"), df)
    assert same.fixed == ("x", "z") and none == []


def test_partly_aliased_term_is_an_error(df):
    d = df.assign(f=np.where(df["period"] == 1, "a", "b"), p1=(df["period"] == 1).astype(float))
    with pytest.raises(DataError, match="linearly dependent"):
        drop_aliased(parse("y ~ p1 + factor(period) + (1|g)"), d)


def _pasted(df: pd.DataFrame, group: str) -> tuple[tuple[str, ...], np.ndarray]:
    """R's ``factor(paste(a, b, sep = ":"))`` row by row (each row's label built and then sorted): the definition
    :func:`group_codes` reaches by labelling each distinct value or combination once."""
    cols = group.split(":")
    if len(cols) == 1:
        v = pd.Series(df[cols[0]])
        levels = [rterms._label(x) for x in rterms.r_levels(v.cat.remove_unused_categories()
                                                             if isinstance(v.dtype, pd.CategoricalDtype) else v)]
        cat = pd.Categorical(v.astype(object).map(lambda x: x if pd.isna(x) else rterms._label(x)), categories=levels)
    else:
        labels = df[cols[0]].astype(str)
        for c in cols[1:]:
            labels = labels + ":" + df[c].astype(str)
        cat = pd.Categorical(labels)
    return tuple(str(x) for x in cat.categories), np.asarray(cat.codes, dtype=np.int64)


@pytest.mark.parametrize("group", ["i", "f", "fn", "s", "c", "b", "fl", "o", "i:s", "c:f", "s:i:b", "fn:s"])
def test_group_codes_are_the_row_by_row_labels(group):
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({
        "i": rng.integers(1, 12, n), "f": rng.integers(1, 12, n).astype(float),
        "fn": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 5, n).astype(float)),
        "s": rng.choice(["b", "a", "B", "10", "2"], n),
        "c": pd.Categorical(rng.choice(["x", "y", "z"], n), categories=["z", "y", "x", "w"]),
        "b": rng.random(n) < 0.5, "fl": rng.choice([0.5, 1.25, 3.0], n),
        "o": pd.Series(rng.choice(np.array([1, 2.0, "a"], dtype=object), n), dtype=object),
    })  # fmt: skip
    levels, codes = group_codes(df, group)
    want_levels, want_codes = _pasted(df, group)
    assert levels == want_levels
    np.testing.assert_array_equal(codes, want_codes)
    assert (codes < 0).any() == (group == "fn:s" or group == "fn")  # missing values stay missing (-1)
