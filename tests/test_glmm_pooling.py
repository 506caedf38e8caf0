"""Partial-pooling figures of binomial and Poisson models, on the link scale.

The no-pooling GLM (:mod:`bayeslmm.summary.pooling`) is checked against statsmodels' GLM (an
independent maximum-likelihood fit) on dense designs, its separation against data built to have it and
against the linear programme of the separation warning; the figures by structure (points, triangles
at the edge, arrows, labels, finite limits) on "point" fits (posteriors at fixed values,
tests/test_glmm_checks.py's idea: no sampler). Reports with these figures: tests/test_plots_glmm.py
and tests/test_nagq.py (slow).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr
from matplotlib.collections import PathCollection
from matplotlib.text import Annotation
from scipy import special

from bayeslmm.graphics import figures, plots_pooling
from bayeslmm.model.formula import group_codes
from bayeslmm.summary import pooling
from test_glmm_checks import PointFit, point_fit


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


# ---------------------------------------------------------------------------------------
# No pooling by maximum likelihood, and separation
# ---------------------------------------------------------------------------------------


def _binomial_levels(seed: int = 2) -> tuple[pd.DataFrame, dict[str, str]]:
    """12 levels x 10 rows of successes out of 5 trials, a slope on x, a common covariate z, and levels built to be
    special: all successes, all failures, split by x, x constant (slope undetermined), and z constant per level
    in ``w`` (absorbed by the levels' own intercepts)."""
    rng = np.random.default_rng(seed)
    levels, per = 12, 10
    g = np.repeat(np.arange(levels), per)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    eta = -0.3 + rng.normal(scale=0.8, size=levels)[g] + 0.5 * x + 0.4 * z
    s = rng.binomial(5, special.expit(eta)).astype(float)
    s[g == 0] = 5  # all successes
    s[g == 1] = 0  # all failures
    two = g == 2  # successes only above x = 0, failures only below
    s[two] = np.where(x[two] > 0, 5, 0)
    x[g == 3] = 0.7  # no slope to estimate
    df = pd.DataFrame({"s": s, "f": 5 - s, "x": x, "z": z, "w": rng.normal(size=levels)[g],
                       "g": [f"g{i:02d}" for i in g]})
    return df, {"g00": pooling.ALL_SUCCESSES, "g01": pooling.ALL_FAILURES, "g02": pooling.SPLIT_BINOMIAL}


def test_glm_no_pooling_is_statsmodels_glm_on_the_dense_design():
    """Own intercepts and slopes per level, z and w shared: the finite levels' coefficients are those of the dense GLM
    (dummies for every level's own columns) fitted by statsmodels on the other levels' rows."""
    df, special_levels = _binomial_levels()
    levels, pos = group_codes(df, "g")
    own = np.column_stack([np.ones(len(df)), df["x"]])
    common = df[["z", "w"]].to_numpy()
    res = pooling.glm_no_pooling("binomial", df["s"].to_numpy(), np.full(len(df), 5.0), None, common, own, pos,
                                 len(levels))
    assert {lv: r for lv, r in zip(levels, res.reason, strict=True) if r} == special_levels
    assert res.common[1] == 0.0  # w is constant within each level: the own intercepts absorb it
    # the dense design: z, then each level's intercept and (where x varies) slope, rows of the unseparated levels
    keep = ~np.isin(np.asarray(levels)[pos], list(special_levels))
    cols, names = [df["z"].to_numpy()], ["z"]
    for i, lv in enumerate(levels):
        if lv in special_levels:
            continue
        cols.append((pos == i).astype(float))
        names.append((lv, 0))
        if lv != "g03":
            cols.append((pos == i) * df["x"].to_numpy())
            names.append((lv, 1))
    dense = np.column_stack(cols)[keep]
    ref = sm.GLM(np.column_stack([df["s"], df["f"]])[keep], dense, family=sm.families.Binomial()).fit(tol=1e-13)
    got = dict(zip(names, ref.params, strict=True))
    assert res.common[0] == pytest.approx(got["z"], rel=1e-8)
    for i, lv in enumerate(levels):
        if lv in special_levels:
            continue
        if lv == "g03":  # the intercept is estimated (its rows count) but the level's line is not determined
            assert np.isnan(res.coefs[i]).all()
            continue
        assert res.coefs[i] == pytest.approx([got[(lv, 0)], got[(lv, 1)]], rel=1e-7, abs=1e-9)
    # the separated levels run off where their data say, and no further than the data say
    assert res.coefs[0, 0] == np.inf and np.isnan(res.coefs[0, 1]) and res.direction[0].tolist() == [1.0, 0.0]
    assert res.coefs[1, 0] == -np.inf and np.isnan(res.coefs[1, 1]) and res.direction[1].tolist() == [-1.0, 0.0]
    d = res.direction[2]
    assert np.linalg.norm(d) == pytest.approx(1.0) and d[1] > 0  # successes above: the slope runs to +inf
    rows = pos == 2
    eta = own[rows] @ d
    assert np.all(np.where(df["s"][rows] == 5, eta >= -1e-9, eta <= 1e-9))  # a separating direction indeed
    assert res.coefs[2, 1] == np.inf


def test_poisson_no_pooling_with_an_offset_and_its_separation():
    rng = np.random.default_rng(5)
    levels, per = 10, 12
    g = np.repeat(np.arange(levels), per)
    x = rng.normal(size=g.size)
    hours = rng.uniform(1, 4, size=g.size)
    y = rng.poisson(hours * np.exp(0.2 + rng.normal(scale=0.5, size=levels)[g] + 0.3 * x)).astype(float)
    y[g == 0] = 0  # all zero counts
    one = g == 1  # counts only at the level's largest x: zero counts at one end
    y[one] = 0
    y[np.flatnonzero(one)[np.argmax(x[one])]] = 3
    res = pooling.glm_no_pooling("poisson", y, None, np.log(hours), np.zeros((g.size, 0)),
                                 np.column_stack([np.ones(g.size), x]), g, levels)
    assert res.reason[:2] == (pooling.ALL_ZERO, pooling.SPLIT_POISSON) and not any(res.reason[2:])
    assert res.coefs[0, 0] == -np.inf and res.direction[1, 1] > 0
    for lv in range(2, levels):
        rows = g == lv
        ref = sm.GLM(y[rows], np.column_stack([np.ones(rows.sum()), x[rows]]), family=sm.families.Poisson(),
                     offset=np.log(hours[rows])).fit(tol=1e-13)
        assert res.coefs[lv] == pytest.approx(ref.params, rel=1e-7, abs=1e-9)


def test_separation_finds_directions_only_where_the_maximum_is_not_attained():
    x = np.column_stack([np.ones(6), [-2.0, -1, 0, 0, 1, 2]])
    assert pooling.separation("binomial", x, np.array([0, 0, 1, 0, 1, 1.0])) is not None  # quasi-complete (tie at 0)
    assert pooling.separation("binomial", x, np.array([0, 1, 0, 1, 0, 1.0])) is None  # overlap
    d = pooling.separation("binomial", x, np.array([0, 0, 0, 1, 1, 1.0]))
    assert d is not None and d[1] > 0 and np.linalg.norm(d) == pytest.approx(1.0)
    assert pooling.separation("poisson", x, np.array([0, 0, 0, 0, 2, 3.0])) is None  # two x values with counts
    d = pooling.separation("poisson", x, np.array([0, 0, 0, 0, 0, 3.0]))
    assert d is not None and d[1] > 0  # counts only at the largest x
    with pytest.raises(ValueError, match="families"):
        pooling.separation("gaussian", x, np.zeros(6))


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_the_closed_form_for_an_intercept_and_a_slope_is_the_linear_programme(family):
    """For own columns (1, x) separation is found in closed form; on 400 small random levels (ties in x, rows with
    both outcomes, all one kind) it finds a direction exactly when the linear programme does, and a valid one."""
    from bayeslmm.model.checks import separating_direction

    rng = np.random.default_rng(0 if family == "binomial" else 1)
    found = 0
    for _ in range(400):
        n = int(rng.integers(2, 8))
        x = rng.integers(-3, 4, size=n).astype(float)
        if np.ptp(x) == 0:
            continue
        if family == "binomial":
            m = rng.integers(1, 3, size=n).astype(float)
            y = rng.integers(0, m + 1).astype(float)
            sign = np.where(y >= m, 1.0, np.where(y <= 0, -1.0, 0.0))
        else:
            m, y = None, rng.poisson(0.6, size=n).astype(float)
            sign = np.where(y > 0, 0.0, -1.0)
        design = np.column_stack([np.ones(n), x])
        d = pooling.separation(family, design, y, m)
        assert (d is None) == (separating_direction(design, sign) is None), (x, y)
        if d is not None:
            found += 1
            eta = design @ d
            assert np.all(eta[sign > 0] >= -1e-12) and np.all(eta[sign < 0] <= 1e-12)
            assert np.all(np.abs(eta[sign == 0]) <= 1e-12) and np.abs(eta).max() > 1e-9
    assert 40 < found < 360  # both answers were exercised


# ---------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------


def _bernoulli_fit():
    """A yes/no point fit y ~ x + (1|g), 10 levels x 12 rows: g00 all yes, g01 and g02 all no."""
    rng = np.random.default_rng(7)
    levels, per = 10, 12
    g = np.repeat(np.arange(levels), per)
    x = rng.normal(size=g.size)
    u = rng.normal(scale=0.9, size=levels)
    y = rng.binomial(1, special.expit(0.2 + 0.6 * x + u[g]))
    y[g == 0], y[g == 1], y[g == 2] = 1, 0, 0
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g]})
    fit = point_fit("y ~ x + (1|g)", "binomial", df, {"Intercept": 0.2, "x": 0.6}, {"g": 0.9}, {"g": u})
    lme4 = pd.DataFrame([{"model": "truth", "method": "laplace", "effect": "fixed", "group": "", "level": "",
                          "term": "(Intercept)", "estimate": 0.25}]
                        + [{"model": "truth", "method": "laplace", "effect": "ran_vals", "group": "g",
                            "level": f"g{i:02d}", "term": "(Intercept)", "estimate": 0.8 * u[i]}
                           for i in range(levels)])
    return fit, lme4, u


def _edge_points(ax) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection) and not c.get_clip_on()]


def _arrows(ax) -> list[Annotation]:
    return [c for c in ax.get_children() if isinstance(c, Annotation) and c.arrow_patch is not None]


def _legend(fig) -> list[str]:
    (lg,) = fig.legends
    return [t.get_text() for t in lg.get_texts()]


def test_shrinkage_table_of_a_glmm_is_on_the_link_scale():
    fit, lme4, u = _bernoulli_fit()
    t = plots_pooling.shrinkage_table(fit, "g", lme4=lme4).set_index("level")
    assert t.loc["g00", "no_pooling"] == np.inf and t.loc["g00", "separation"] == pooling.ALL_SUCCESSES
    assert (t.loc[["g01", "g02"], "no_pooling"] == -np.inf).all()
    assert (t.drop(index=["g00", "g01", "g02"])["separation"] == "").all()
    # no pooling: glm(y ~ x + g) by statsmodels, on the rows of the levels with an estimate
    df = fit.data
    rows = ~df["g"].astype(str).isin(["g00", "g01", "g02"]).to_numpy()
    sub = df[rows]
    dummies = pd.get_dummies(sub["g"].astype(str)).astype(float)
    ref = sm.GLM(sub["y"].astype(float), pd.concat([sub[["x"]], dummies], axis=1),
                 family=sm.families.Binomial()).fit(tol=1e-13)
    for lv in dummies.columns:
        assert t.loc[lv, "no_pooling"] == pytest.approx(ref.params[lv], rel=1e-7)
    pooled = sm.GLM(df["y"].astype(float), sm.add_constant(df[["x"]]), family=sm.families.Binomial()).fit(tol=1e-13)
    assert t["complete_pooling"].iloc[0] == pytest.approx(pooled.params["const"], rel=1e-7)
    # partial pooling: the posterior (a point here) and lme4's intercept plus its conditional modes
    levels = [f"g{i:02d}" for i in range(10)]
    np.testing.assert_allclose(t.loc[levels, "partial"], 0.2 + u)
    np.testing.assert_allclose(t.loc[levels, "lme4"], 0.25 + 0.8 * u)


def test_shrinkage_of_a_glmm_puts_the_infinite_levels_at_the_edge():
    fit, lme4, _ = _bernoulli_fit()
    fig = plots_pooling.shrinkage(fit, "g", lme4=lme4)
    (ax,) = fig.axes
    t = plots_pooling.shrinkage_table(fit, "g", lme4=lme4)
    lo, hi = ax.get_xlim()
    assert np.isfinite([lo, hi]).all()
    finite = t["no_pooling"][np.isfinite(t["no_pooling"])]
    assert lo < min(finite.min(), t["partial_low"].min()) and hi > max(finite.max(), t["partial_high"].max())
    assert hi - lo < 3 * (max(finite.max(), t["partial_high"].max()) - min(finite.min(), t["partial_low"].min()))
    edges = _edge_points(ax)
    xs = sorted(float(v) for c in edges for v in c.get_offsets()[:, 0])
    assert xs == pytest.approx([lo, lo, hi])  # two levels at -inf, one at +inf, on the axis' ends
    assert len(_arrows(ax)) == len(t)  # every level moves, from its own estimate or from the edge
    (crosses,) = [c for c in ax.collections if c.get_zorder() == 6]  # lme4's marks, above everything else
    np.testing.assert_allclose(np.sort(crosses.get_offsets()[:, 0]), np.sort(t["lme4"]))
    labels = _legend(fig)
    assert "no pooling +inf: all successes (1 level)" in labels and "no pooling -inf: all failures (2 levels)" in labels
    assert "no pooling: the level's own maximum-likelihood (GLM) intercept" in labels
    assert "lme4 glmer (Laplace): fixed intercept + conditional modes" in labels
    assert ax.get_xlabel() == "log-odds of y at x = 0 (the level's intercept)"


def test_far_out_finite_estimates_are_the_tukey_far_outliers():
    v = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 5.0, -np.inf])
    assert plots_pooling._far_out(v).tolist() == [False] * 6 + [True, False]  # 5 > 0.425 + 3 x 0.25
    assert not plots_pooling._far_out(v[:3]).any()  # too few to say


def _slopes_fit(n_levels: int = 14, per: int = 20):
    """A yes/no point fit y ~ x + (1 + x|g) whose posterior is a point: g00 all yes, g01 split by x at 0."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(n_levels), per)
    x = rng.normal(size=g.size)
    u = rng.multivariate_normal([0, 0], [[0.6, -0.1], [-0.1, 0.09]], size=n_levels)
    y = rng.binomial(1, special.expit(0.3 + 0.8 * x + u[g, 0] + u[g, 1] * x))
    y[g == 0] = 1
    y[g == 1] = (x[g == 1] > 0).astype(int)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g]})
    base = point_fit("y ~ x + (1 + x|g)", "binomial", df, {"Intercept": 0.3, "x": 0.8})
    post = dict(base.idata["posterior"].data_vars)
    levels = list(group_codes(base.data, "g")[0])
    dims = ("chain", "draw", "g__factor_dim")
    post["1|g"] = (dims, np.tile(u[:, 0], (1, base.idata["posterior"].sizes["draw"], 1)))
    post["x|g"] = (dims, np.tile(u[:, 1], (1, base.idata["posterior"].sizes["draw"], 1)))
    shape = (1, base.idata["posterior"].sizes["draw"])
    post["1|g_sigma"] = (("chain", "draw"), np.full(shape, np.sqrt(0.6)))
    post["x|g_sigma"] = (("chain", "draw"), np.full(shape, 0.3))
    post["cor__(Intercept).x|g"] = (("chain", "draw"), np.full(shape, -0.1 / (np.sqrt(0.6) * 0.3)))
    tree = xr.DataTree.from_dict({"posterior": xr.Dataset(post, coords={"g__factor_dim": levels})})
    return PointFit("slopes", base.formula, base.data, tree), u


def test_shrinkage_2d_of_a_glmm_draws_separated_levels_on_the_edge():
    fit, u = _slopes_fit()
    t = plots_pooling.shrinkage_table_2d(fit, "g")
    assert t["separation"].tolist()[:2] == [pooling.ALL_SUCCESSES, pooling.SPLIT_BINOMIAL]
    assert (t["separation"][2:] == "").all() and np.isfinite(t.loc[2:, ["no_pooling_intercept",
                                                                        "no_pooling_slope"]]).all().all()
    # each finite level's own line: its own logistic regression (no other fixed covariate)
    for lv in range(2, len(t)):
        rows = fit.data["g"].astype(str) == t["level"][lv]
        ref = sm.GLM(fit.data["y"][rows].astype(float), sm.add_constant(fit.data["x"][rows]),
                     family=sm.families.Binomial()).fit(tol=1e-13)
        assert (t["no_pooling_intercept"][lv], t["no_pooling_slope"][lv]) == pytest.approx(tuple(ref.params), rel=1e-6)
    np.testing.assert_allclose(t["partial_slope"], 0.8 + u[:, 1])
    fig = plots_pooling.shrinkage_2d(fit, "g")
    (ax,) = fig.axes
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert np.isfinite([x0, x1, y0, y1]).all()
    triangles = [ln for ln in ax.lines if isinstance(ln.get_marker(), tuple)]
    shown = (t["separation"] == "").to_numpy()
    far = plots_pooling._far_out(t[["no_pooling_intercept", "no_pooling_slope"]].to_numpy())
    assert len(triangles) >= 2 and len(triangles) == 2 + int((far & shown & _outside(t, ax)).sum())
    for ln in triangles:  # on the boundary of the axes
        (px,), (py,) = ln.get_xdata(), ln.get_ydata()
        assert min(abs(px - x0), abs(px - x1), abs(py - y0), abs(py - y1)) < 1e-9 * max(x1 - x0, y1 - y0)
    all_successes = triangles[0]
    assert all_successes.get_xdata()[0] == pytest.approx(x1)  # the intercept runs off to the right
    assert all_successes.get_ydata()[0] == pytest.approx(t["partial_slope"][0])  # the slope is undetermined
    assert len(_arrows(ax)) == len(t)
    labels = _legend(fig)
    assert "no pooling infinite: all successes (1 level)" in labels
    assert f"no pooling infinite: {pooling.SPLIT_BINOMIAL} (1 level)" in labels
    assert ax.get_xlabel() == "intercept: log-odds of y at x = 0"


def _outside(t: pd.DataFrame, ax) -> np.ndarray:
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    a, b = t["no_pooling_intercept"].to_numpy(), t["no_pooling_slope"].to_numpy()
    return (a < x0) | (a > x1) | (b < y0) | (b > y1)


def test_no_shrinkage_figure_for_an_observation_level_effect():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.poisson(2.0, size=60), "g": np.repeat([f"g{i}" for i in range(6)], 10),
                       "obs": [f"o{i:02d}" for i in range(60)]})
    fit = point_fit("y ~ 1 + (1|g) + (1|obs)", "poisson", df, {"Intercept": 0.7}, {"g": 0.3, "obs": 0.2},
                    {"g": np.zeros(6), "obs": np.zeros(60)})
    said: list[str] = []
    terms = {t.group: t for t in fit.formula.random}
    assert figures._glm_pooling(fit, terms["g"], said.append) and not said
    assert not figures._glm_pooling(fit, terms["obs"], said.append)
    assert said == ["No shrinkage plot of obs in truth: a level per row (an observation-level effect) has no "
                    "estimate of its own to shrink."]


def test_a_poisson_shrinkage_axis_is_the_log_rate_per_unit_of_exposure():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(8), 10)
    u = rng.normal(scale=0.4, size=8)
    hours = rng.uniform(1, 3, size=g.size)
    df = pd.DataFrame({"y": rng.poisson(hours * np.exp(0.5 + u[g])), "hours": hours, "g": [f"g{i}" for i in g]})
    fit = point_fit("y ~ 1 + offset(log(hours)) + (1|g)", "poisson", df, {"Intercept": 0.5}, {"g": 0.4}, {"g": u})
    t = plots_pooling.shrinkage_table(fit, "g")
    for lv, own in zip(t["level"], t["no_pooling"], strict=True):  # log(sum y / sum hours): Poisson's own MLE
        rows = df["g"] == lv
        assert own == pytest.approx(np.log(df["y"][rows].sum() / df["hours"][rows].sum()), rel=1e-9)
    fig = plots_pooling.shrinkage(fit, "g")
    assert fig.axes[0].get_xlabel() == "log of the mean y per hours of the level"
    assert not _edge_points(fig.axes[0]) and len(_legend(fig)) == 4

