"""The equal-tailed interval every table and figure shows, and how its mass is written."""

from __future__ import annotations

import arviz_stats
import numpy as np
import pytest

from bayeslmm.intervals import eti, percent


def test_eti_is_the_central_quantiles():
    # 0, 1, ..., 1000: the 5% and 95% quantiles (linear interpolation) are 50 and 950, up to the
    # rounding of (1 - 0.9) / 2 = 0.04999999999999999 in floating point.
    lo, hi = eti(np.arange(1001), 0.9)
    assert (float(lo), float(hi)) == (pytest.approx(50.0, rel=1e-14), pytest.approx(950.0, rel=1e-14))
    lo, hi = eti(np.arange(1001), 0.5)
    assert (float(lo), float(hi)) == (250.0, 750.0)


def test_eti_is_arviz_eti_along_an_axis():
    draws = np.random.default_rng(1).standard_gamma(2.0, size=(4000, 3))
    for ci in (0.5, 0.9, 0.95, 0.975):
        lo, hi = eti(draws, ci)
        assert lo.shape == hi.shape == (3,)
        for j in range(3):
            np.testing.assert_array_equal([lo[j], hi[j]], arviz_stats.eti(draws[:, j], ci))
        np.testing.assert_allclose(np.stack([lo, hi]), np.quantile(draws, [(1 - ci) / 2, (1 + ci) / 2], axis=0),
                                   rtol=1e-14)
    lo, hi = eti(draws.T, 0.9, axis=1)
    np.testing.assert_array_equal(np.stack([lo, hi]), np.stack(eti(draws, 0.9)))


def test_eti_refuses_a_mass_outside_0_1():
    with pytest.raises(ValueError, match="between 0 and 1"):
        eti(np.arange(10), 95)


def test_percent():
    assert [percent(c) for c in (0.95, 0.9, 0.5, 0.975, 0.89)] == ["95%", "90%", "50%", "97.5%", "89%"]
