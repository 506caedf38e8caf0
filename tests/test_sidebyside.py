"""The side-by-side table's rows and its agreement column, on hand-made tidy rows (no fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeslmm.results import conform
from bayeslmm.summary.sidebyside import SIDE_COLUMNS, side_by_side

COR = "cor__(Intercept).x"


def _rows(method: str, rows: list[tuple]) -> pd.DataFrame:
    """Tidy rows ``(effect, group, term, estimate, std_error, conf_low, conf_high[, median])`` of model ``m``."""
    cols = ["effect", "group", "term", "estimate", "std_error", "conf_low", "conf_high", "median"]
    df = pd.DataFrame([r + (np.nan,) * (len(cols) - len(r)) for r in rows], columns=cols)
    return conform(df.assign(model="m", method=method, level=""), ("median",))


def _bayes(cor: tuple[float, float, float, float, float] | None = (-0.5, 0.15, -0.75, -0.2, -0.52),
           sd_x: tuple[float, ...] = (1.0, 0.2, 0.7, 1.4, 0.98)) -> pd.DataFrame:
    rows = [("fixed", "", "x", 0.5, 0.1, 0.3, 0.7, 0.5), ("ran_pars", "g", "sd__(Intercept)", 2.0, 0.3, 1.5, 2.6, 2.0)]
    rows += [("ran_pars", "g", COR, *cor)] if cor is not None else []
    rows += [("ran_pars", "g", "sd__x", *sd_x), ("ran_pars", "Residual", "sd__Observation", 1.0, 0.05, 0.9, 1.1, 1.0)]
    return _rows("bayes", rows)


def _lme4(cor: float = -0.55, cor_ci: tuple[float, float] = (-0.8, -0.25)) -> pd.DataFrame:
    return _rows("reml", [
        ("fixed", "", "x", 0.5, 0.1, 0.3, 0.7), ("ran_pars", "g", "sd__(Intercept)", 2.0, np.nan, 1.5, 2.6),
        ("ran_pars", "g", COR, cor, np.nan, *cor_ci), ("ran_pars", "g", "sd__x", 1.0, np.nan, 0.7, 1.4),
        ("ran_pars", "Residual", "sd__Observation", 1.0, np.nan, 0.9, 1.1)])


def _agreement(side: pd.DataFrame, term: str) -> str:
    return side.set_index("term").at[term, "agreement"]


def test_correlation_row_beside_the_posterior():
    side = side_by_side(_bayes(), _lme4())
    assert list(side.columns) == SIDE_COLUMNS
    assert list(side.term) == ["x", "sd__(Intercept)", COR, "sd__x", "sd__Observation"]
    row = side.set_index("term").loc[COR]
    assert (row.lme4_estimate, row.lme4_conf_low, row.post_mean, row.post_median) == (-0.55, -0.8, -0.5, -0.52)
    assert row.agreement == "agree"


def test_correlation_rules():
    # a shift of more than SHIFT_SD posterior sds, lme4 outside the interval, only one interval excluding 0
    side = side_by_side(_bayes(cor=(0.1, 0.15, -0.2, 0.4, 0.1)), _lme4(cor=-0.55))
    words = _agreement(side, COR)
    assert "posterior mean 4.3 sd from lme4's estimate" in words
    assert "lme4's estimate lies outside the posterior interval" in words and "only lme4's CI excludes 0" in words
    # a wide posterior interval from few groups
    side = side_by_side(_bayes(cor=(-0.5, 0.3, -0.95, 0.3, -0.55)), _lme4(), ngroups={"g": 8})
    ratio = (0.3 + 0.95) / (-0.25 + 0.8)
    assert _agreement(side, COR) == (f"only lme4's CI excludes 0; posterior interval {ratio:.1f}x wider than lme4's "
                                     "(only 8 groups)")


def test_skew_note_is_for_standard_deviations_only():
    """mean > 1.1 median says right skew for a positive sd; a negative correlation has it without any skew."""
    bayes = _bayes(cor=(-0.3, 0.15, -0.6, -0.05, -0.4), sd_x=(1.0, 0.2, 0.7, 1.3, 0.85))
    side = side_by_side(bayes, _lme4(cor=-0.35, cor_ci=(-0.7, -0.02)).assign(conf_low=np.nan, conf_high=np.nan),
                        ngroups={"g": 6})
    assert _agreement(side, "sd__x").startswith("right-skewed posterior from 6 groups")
    assert _agreement(side, COR) == "agree"


@pytest.mark.parametrize(("estimate", "words"), [(-1.0, "correlation = -1"), (1.0, "correlation = +1"),
                                                 (0.6, "correlation matrix at its boundary")])
def test_correlation_at_the_boundary_is_said(estimate, words):
    side = side_by_side(_bayes(), _lme4(cor=estimate), boundary=[("g", COR)])
    assert _agreement(side, COR) == (f"lme4 at the boundary (singular fit: {words}); the posterior puts it "
                                     "between -0.75 and -0.2")
    assert _agreement(side, "sd__x") != _agreement(side, COR)


def test_lme4_row_the_posterior_lacks_is_shown():
    """Bambi's engine drops the correlation of (x|g): lme4's row stays, after its group's rows."""
    side = side_by_side(_bayes(cor=None), _lme4())
    assert list(side.term) == ["x", "sd__(Intercept)", "sd__x", COR, "sd__Observation"]
    row = side.set_index("term").loc[COR]
    assert row.model == "m" and row.lme4_estimate == -0.55 and np.isnan(row.post_mean)
    assert row.agreement == "only lme4 estimates this: the Bayesian model has no such parameter"
    assert (side.agreement[side.term != COR] == "agree").all()
    # and the exported table shows it with empty posterior cells
    from bayeslmm.reporting.export import compact_side, render

    shown = compact_side(side).set_index("parameter").loc[f"{COR} (g)"]
    assert shown["posterior mean"] == "" and shown["95% interval"] == "" and shown["lme4 (SE)"] == "-0.55"
    assert f"{COR} (g)" in render(compact_side(side), "markdown")
