"""Data loading and the tutorial's preparation, checked against R's own results."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm.errors import DataError
from bayeslmm.model import data
from bayeslmm.model.simulate import TRUTH, simulate_dragons
from conftest import DRAGONS_RDATA, require


def test_scale_matches_r():
    # R: as.vector(scale(c(1, 2, 3, 4))) -> -1.1618950 -0.3872983 0.3872983 1.1618950 (sd with n - 1)
    np.testing.assert_allclose(data.scale([1, 2, 3, 4]), [-1.1618950, -0.3872983, 0.3872983, 1.1618950], atol=1e-7)


def test_nest_matches_r_factor():
    # R: factor(factor(c("x","y","x")):factor(c("b","a","a"))) -> x:b y:a x:a, levels x:a x:b y:a
    df = pd.DataFrame({"r": pd.Categorical(["x", "y", "x"]), "s": pd.Categorical(["b", "a", "a"])})
    nested = data.nest(df, ["r", "s"])
    assert list(nested.astype(str)) == ["x:b", "y:a", "x:a"]
    assert list(nested.cat.categories) == ["x:a", "x:b", "y:a"]


def test_prepared_tutorial_data(dragons, reference):
    assert len(dragons) == 480
    assert dragons["bodyLength2"].mean() == pytest.approx(0, abs=1e-12)
    assert dragons["bodyLength2"].std(ddof=1) == pytest.approx(1, rel=1e-12)
    # The 24 sample levels are exactly R's factor(mountainRange:site) levels, in R's order.
    assert list(dragons["sample"].cat.categories) == list(reference["mixed.lmer2"]["ranef"]["sample"])
    assert dragons["sample"].nunique() == 24


def test_simulator_design_and_seed():
    a, b = simulate_dragons(1), simulate_dragons(1)
    pd.testing.assert_frame_equal(a, b)
    assert not simulate_dragons(2).equals(a)
    assert a.shape == (480, 8)
    assert a.groupby(["mountainRange", "site"], observed=True).size().eq(20).all()
    assert set(TRUTH) >= {"(Intercept)", "bodyLength2", "sigma"}


def test_simulator_teaches_the_lesson(builtin):
    # Pooled, body length "matters"; within ranges, it does not (the truth is a slope of 0).
    pooled = np.polyfit(builtin["bodyLength2"], builtin["testScore"], 1)[0]
    within = builtin.groupby("mountainRange", observed=True)[["bodyLength2", "testScore"]].transform(
        lambda c: c - c.mean())
    within_slope = np.polyfit(within["bodyLength2"], within["testScore"], 1)[0]
    assert pooled > 5
    assert abs(within_slope) < 2.5


def test_read_formats(tmp_path, builtin):
    csv = tmp_path / "d.csv"
    builtin.to_csv(csv, index=False)
    back = data.load(csv)
    assert isinstance(back["mountainRange"].dtype, pd.CategoricalDtype)
    pq = tmp_path / "d.parquet"
    builtin.to_parquet(pq)
    assert len(data.load(pq)) == len(builtin)


def test_read_rdata(reference):
    """The tutorial's .RData as stored, against R: factors keep R's levels, numbers R's values."""
    require(DRAGONS_RDATA)
    raw = data.load(DRAGONS_RDATA)
    assert len(raw) == 480 and {"testScore", "bodyLength", "mountainRange", "site"} <= set(raw.columns)
    assert list(raw["mountainRange"].cat.categories) == list(reference["mixed.lmer"]["ranef"]["mountainRange"])
    assert list(raw["site"].cat.categories) == list(reference["mixed.WRONG"]["ranef"]["site"])
    # lm(testScore ~ scale(bodyLength)): the intercept is the mean test score (R's, to its 11 digits)
    assert raw["testScore"].mean() == pytest.approx(reference["basic.lm"]["coef"]["(Intercept)"], rel=1e-10)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 50])
def test_bad_files(tmp_path, content):
    p = tmp_path / "bad.RData"
    p.write_bytes(content)
    with pytest.raises(DataError):
        data.load(p)
