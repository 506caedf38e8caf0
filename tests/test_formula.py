"""lmer syntax: parsing, translation to Bambi, and the model frame (no sampling)."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm.errors import FormulaError
from bayeslmm.model.formula import correlation_note, model_frame, parse, to_bambi


@pytest.mark.parametrize(
    ("lmer", "bambi"),
    [
        ("testScore ~ bodyLength2", "testScore ~ bodyLength2"),
        ("testScore ~ bodyLength2 + (1|mountainRange)", "testScore ~ bodyLength2 + (1|mountainRange)"),
        ("y ~ x + (x|g)", "y ~ x + (1 + x|g)"),
        ("y ~ x + (1 + x | g)", "y ~ x + (1 + x|g)"),
        ("y ~ x + (x||g)", "y ~ x + (1|g) + (0 + x|g)"),
        ("y ~ x + (0 + x|g)", "y ~ x + (0 + x|g)"),
        ("y ~ x + (1|a/b)", "y ~ x + (1|a) + (1|a:b)"),
        ("y ~ x + (1|a:b)", "y ~ x + (1|a:b)"),
        ("y ~ 0 + x + (1|g)", "y ~ 0 + x + (1|g)"),
        ("y ~ x-1 + (1|g)", "y ~ 0 + x + (1|g)"),
        ("y ~ x - 1 + (1|g)", "y ~ 0 + x + (1|g)"),
        ("y ~ 1 + (1|g)", "y ~ 1 + (1|g)"),
        ("y ~ x + f + (1|a) + (1|b)", "y ~ x + f + (1|a) + (1|b)"),
    ],
)
def test_translation(lmer, bambi):
    assert to_bambi(parse(lmer)) == bambi


def test_parse_structure():
    f = parse("testScore ~ bodyLength2 + (1|mountainRange/site) + (bodyLength2||mountainRange)")
    assert f.response == "testScore"
    assert f.fixed == ("bodyLength2",)
    assert [r.group for r in f.random] == ["mountainRange", "mountainRange:site", "mountainRange", "mountainRange"]
    assert [r.coefs for r in f.random] == [("(Intercept)",), ("(Intercept)",), ("(Intercept)",), ("bodyLength2",)]
    assert f.variables == ("testScore", "bodyLength2", "mountainRange", "site")
    assert not any(r.correlated for r in f.random)


def test_correlated_slope_warns():
    assert parse("y ~ x + (x|g)").random[0].correlated
    assert "no correlation" in correlation_note(parse("y ~ x + (x|g)"))
    assert correlation_note(parse("y ~ x + (x||g)")) is None


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("", "empty formula"),
        ("y x", "exactly one '~'"),
        ("~ x", "no response"),
        ("y ~", "nothing after"),
        ("y ~ x + (1|g", "unbalanced '('"),
        ("y ~ x + 1|g", "must be in parentheses"),
        ("y ~ x + + z", "position 9"),
        ("y ~ (|g)", "nothing before '|'"),
        ("y ~ x + (1|)", "no grouping factor"),
    ],
)
def test_malformed(bad, fragment):
    with pytest.raises(FormulaError, match=fragment.replace("(", r"\(").replace("|", r"\|")):
        parse(bad)


def test_model_frame_layout():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6], "x": [0.5, 1, 1.5, 2, 2.5, 3],
                       "g": ["b", "a", "b", "a", "c", "c"], "f": pd.Categorical(list("uvuvuv"))})
    mf = model_frame(parse("y ~ x + f + (x||g)"), df)
    assert mf.x_names == ("(Intercept)", "x", "fv")
    np.testing.assert_array_equal(mf.X[:, 2], [0, 1, 0, 1, 0, 1])
    intercept, slope = mf.blocks
    assert intercept.levels == ("a", "b", "c")
    np.testing.assert_array_equal(intercept.index, [1, 0, 1, 0, 2, 2])
    z = slope.z_matrix()
    assert z.shape == (6, 3)
    np.testing.assert_allclose(z[:, 1], [0.5, 0, 1.5, 0, 0, 0])
