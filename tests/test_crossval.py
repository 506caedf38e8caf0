"""Exact LOO refits where PSIS fails, and leave-one-group-out cross-validation.

Every check here is against an independent computation: the refit's posterior read by hand
(Bambi's variable names) and scipy's densities, never against bayeslmm's own held-out density.
The data are small and seeded; the fits are the marginal and GLMM engines' (seeded, so each
outcome is deterministic).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

from bayeslmm.cli import main
from bayeslmm.engines import bayes
from bayeslmm.errors import OptionsError, StudyError
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import crossval
from bayeslmm.summary.compare import compare_models, loo, pareto_warnings, reading
from bayeslmm.summary.predict import observed
from conftest import STUDY

OPTIONS = SamplerOptions(draws=500, tune=500, chains=2, seed=1)
QUIET = RunOptions(progress=False)


def _draws(fit, var: str) -> np.ndarray:
    """A posterior variable's draws, chains pooled chain-major: shape (draws, ...)."""
    da = fit.idata["posterior"][var]
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    arr = da.transpose("chain", "draw", *extra).values
    return arr.reshape(-1, *arr.shape[2:])


def _level(fit, var: str, label: str) -> np.ndarray:
    """Draws of one level's effect in a group-effect variable (``1|g``)."""
    da = fit.idata["posterior"][var]
    (dim,) = [d for d in da.dims if d not in ("chain", "draw")]
    return da.sel({dim: label}).transpose("chain", "draw").values.reshape(-1)


def _lme(values: np.ndarray) -> float:
    return float(special.logsumexp(values) - np.log(np.size(values)))


@pytest.fixture(scope="module")
def singletons() -> pd.DataFrame:
    """Three groups of one row and five of six, seeded; group sd 2, residual sd 0.3, the first row 8 above its
    mean. Each singleton's row alone sets its group's effect, so PSIS fails there (Pareto k 0.7-1)."""
    rng = np.random.default_rng(1)
    sizes = np.array([1, 1, 1, 6, 6, 6, 6, 6])
    g = np.repeat(np.arange(sizes.size), sizes)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(scale=2.0, size=sizes.size)[g] + rng.normal(scale=0.3, size=g.size)
    y[0] += 8
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{i}" for i in g])})


@pytest.fixture(scope="module")
def singleton_fit(singletons):
    return bayes.fit(parse("y ~ x + (1|g)"), singletons, OPTIONS, run=QUIET)


@pytest.fixture(scope="module")
def crossed() -> pd.DataFrame:
    """4 levels of g crossed with 5 of h, 3 rows per cell, seeded: y = 2 + x + u_g + v_h + e (sds 1.5, 1, 1)."""
    rng = np.random.default_rng(4)
    g, h = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    g, h = np.repeat(g.ravel(), 3), np.repeat(h.ravel(), 3)
    x = rng.normal(size=g.size)
    y = 2 + x + rng.normal(scale=1.5, size=4)[g] + rng.normal(size=5)[h] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{i}" for i in g]),
                         "h": pd.Categorical([f"h{i}" for i in h])})


def test_heldout_density_of_seen_rows_is_the_pointwise_loglik(singleton_fit):
    """With every level seen, the held-out density is the engine's pointwise log-likelihood (bit for bit)."""
    y, _ = observed(singleton_fit)
    mine = np.column_stack([crossval.heldout_log_density(singleton_fit, singleton_fit.data.iloc[[i]], y[[i]])
                            for i in range(10)])
    ref = bayes.log_likelihood(singleton_fit, slice(0, 10)).transpose("chain", "draw", "__obs__").values
    np.testing.assert_allclose(mine, ref.reshape(-1, 10), rtol=1e-12, atol=1e-12)


def test_reloo_matches_a_brute_force_refit(singleton_fit, singletons, tmp_path):
    """The refitted observation's elpd is log mean_s N(y_i | b0 + b1 x_i, sigma^2 + sd_g^2) over the draws of
    a refit without it, made here with bayes.fit: its group, a singleton, is new to the refit."""
    psis = loo(singleton_fit)
    k = np.asarray(psis.pareto_k)
    worst = int(np.argmax(k))
    assert k[worst] > 0.7 and worst < 3  # a singleton's row
    messages = []
    out, info = crossval.reloo(singleton_fit, psis, crossval.Refitter(cache_dir=tmp_path), max_refits=1,
                               echo=messages.append)
    assert info.refitted == (worst,) and info.bad[0] == worst
    assert messages[0].startswith(f"fit: refitting 1/1 without row {worst + 1} (Pareto k ")

    # the refit keeps the full fit's priors (pin), as the refitter does
    brute = bayes.fit(parse("y ~ x + (1|g)"), singletons.drop(index=worst), OPTIONS, run=QUIET,
                      pin=singleton_fit.model)
    assert f"g{worst}" not in brute.data["g"].cat.categories
    mu = _draws(brute, "Intercept") + _draws(brute, "x") * singletons["x"].iloc[worst]
    sd = np.sqrt(_draws(brute, "sigma") ** 2 + _draws(brute, "1|g_sigma") ** 2)
    exact = _lme(stats.norm.logpdf(singletons["y"].iloc[worst], mu, sd))
    elpd_i = np.asarray(out.elpd_i)
    assert elpd_i[worst] == pytest.approx(exact, rel=1e-9)
    assert np.asarray(out.pareto_k)[worst] == 0.0
    others = np.arange(k.size) != worst
    np.testing.assert_array_equal(elpd_i[others], np.asarray(psis.elpd_i)[others])
    assert out.elpd == pytest.approx(elpd_i.sum(), rel=1e-12)
    assert exact != pytest.approx(float(np.asarray(psis.elpd_i)[worst]), abs=1e-3)  # the refit changed something


def test_reloo_bookkeeping_is_arviz_stats_reloo(singleton_fit, tmp_path):
    """The same refits through arviz-stats' own reloo (a SamplingWrapper around them): the same elpd_i, p_loo_i,
    Pareto k and totals as ours, which keeps no whole log-likelihood in memory."""
    import xarray as xr
    from arviz_stats.loo import SamplingWrapper
    from arviz_stats.loo import reloo as az_reloo

    fit, refitter = singleton_fit, crossval.Refitter(cache_dir=tmp_path)
    y, _ = observed(fit)

    class Wrapper(SamplingWrapper):
        def sel_observations(self, idx):
            keep = np.ones(len(fit.data), dtype=bool)
            keep[idx] = False
            return keep, int(idx)

        def sample(self, keep):
            return refitter(fit, keep, "refit")

        def get_inference_data(self, refit):
            return refit

        def log_likelihood__i(self, i, refit):
            ll = crossval.heldout_log_density(refit, fit.data.iloc[[i]], y[[i]])
            post = refit.idata["posterior"]
            return xr.DataArray(ll.reshape(post.sizes["chain"], post.sizes["draw"], 1), dims=("chain", "draw", "obs"))

    # arviz-stats stacks the observation dims into "__obs__", so its copy of them is called "obs"
    ll = bayes.log_likelihood(fit).rename(__obs__="obs")
    tree = xr.DataTree.from_dict({"posterior": fit.idata["posterior"].to_dataset(),
                                  "log_likelihood": xr.Dataset({"y": ll})})
    psis = loo(fit)
    renamed = copy.deepcopy(psis)
    for attr in ("elpd_i", "p_loo_i", "pareto_k"):
        setattr(renamed, attr, getattr(psis, attr).rename(__obs__="obs"))
    theirs = az_reloo(Wrapper(None, idata_orig=tree), loo_orig=renamed, k_threshold=0.7)
    ours, info = crossval.reloo(fit, psis, refitter, max_refits=len(psis.elpd_i))
    assert len(info.refitted) == int(np.sum(np.asarray(psis.pareto_k) > 0.7)) >= 2
    for attr in ("elpd_i", "p_loo_i", "pareto_k"):
        np.testing.assert_allclose(np.asarray(getattr(ours, attr)), np.asarray(getattr(theirs, attr)), rtol=1e-12)
    for attr in ("elpd", "se", "p"):
        assert getattr(ours, attr) == pytest.approx(getattr(theirs, attr), rel=1e-12)


def test_high_k_points_are_refitted_and_counted_up_to_the_cap(singleton_fit, tmp_path):
    """compare_models reports PSIS's count and the refits; a cap below the count leaves the rest, and says so."""
    bad = int(np.sum(np.asarray(loo(singleton_fit).pareto_k) > 0.7))
    assert bad >= 2
    fits = {"a": singleton_fit, "b": singleton_fit}
    for cap, expected in ((bad, bad), (1, 1)):
        messages = []
        cv = crossval.CrossValidation(max_refits=cap, cache_dir=tmp_path, echo=messages.append)
        table = compare_models("c", ("a", "b"), fits, {}, cv)
        assert list(table["pareto_k_bad"]) == [bad, bad] and list(table["loo_refits"]) == [expected, expected]
        assert sum("refitting" in m for m in messages) == expected  # one posterior: refitted once
        summary = [m for m in messages if "LOO: refitted" in m]
        assert len(summary) == 1 and f"each of {expected} observation(s)" in summary[0]
        warnings = pareto_warnings(table)
        if expected == bad:
            assert warnings == [] and f"(a: {bad} of {bad}, b: {bad} of {bad})" in reading(table)
        else:
            assert len(warnings) == 2 and warnings[0].startswith(f"a: {bad} observation(s) with Pareto k > 0.7: 1 "
                                                                 "refitted without them (exact elpd), ")
            assert f"{bad - 1} left at PSIS's estimate" in warnings[0] and "--max-refits" in warnings[0]


@pytest.mark.slow
def test_logo_of_a_gaussian_model_is_the_multivariate_normal_density(crossed, tmp_path):
    """Leaving out a level of g: its rows are jointly normal given each draw, mean b0 + b1 x + v_h (h's levels are
    seen: their draws) and covariance sigma^2 I + sd_g^2 11' (g's level is new). scipy's multivariate normal
    per draw, then log-mean-exp, against the LOGO elpd of each level; a model without g gets none and says so."""
    full = bayes.fit(parse("y ~ x + (1|g) + (1|h)"), crossed, OPTIONS, run=QUIET, name="gh")
    only_h = bayes.fit(parse("y ~ x + (1|h)"), crossed, OPTIONS, run=QUIET, name="h")
    messages = []
    cv = crossval.CrossValidation(cache_dir=tmp_path, echo=messages.append)
    table = compare_models("c", ("gh", "h"), {"gh": full, "h": only_h}, {}, cv, "g").set_index("model")
    assert "gh: refitting 3/4 without g = g2" in messages
    result = cv.logo(full, "g")
    assert result.levels == ("g0", "g1", "g2", "g3") and list(result.rows) == [15] * 4
    for level, elpd in zip(result.levels, result.elpd_i, strict=True):
        rows = crossed[crossed["g"] == level]
        refit = bayes.fit(parse("y ~ x + (1|g) + (1|h)"), crossed[crossed["g"] != level], OPTIONS, run=QUIET,
                          cache_dir=tmp_path, pin=full.model)  # with the full fit's priors, as LOGO refits
        assert refit.cached  # the refit LOGO made, found by its content
        assert level not in set(refit.data["g"].cat.categories)
        v = np.column_stack([_level(refit, "1|h", h) for h in rows["h"].astype(str)])
        mean = _draws(refit, "Intercept")[:, None] + _draws(refit, "x")[:, None] * rows["x"].to_numpy() + v
        s2, g2 = _draws(refit, "sigma") ** 2, _draws(refit, "1|g_sigma") ** 2
        dens = [stats.multivariate_normal.logpdf(rows["y"].to_numpy(), mean[d], s2[d] * np.eye(len(rows)) + g2[d])
                for d in range(mean.shape[0])]
        assert elpd == pytest.approx(_lme(np.array(dens)), rel=1e-9)
    assert table.loc["gh", "elpd_logo"] == pytest.approx(result.elpd_i.sum(), rel=1e-12)
    assert table.loc["gh", "logo_refits"] == 4 and table.loc["gh", "logo_group"] == "g"
    assert np.isnan(table.loc["h", "elpd_logo"]) and table.loc["h", "logo_group"] == ""
    assert "h has no leave-one-g-out: its formula has no g term." in reading(table.reset_index())
    assert "predict a new g" in reading(table.reset_index())


def test_new_level_of_a_correlated_term_is_the_multivariate_normal_density(crossed):
    """Rows of a level the fit never saw, under (1 + x|g) + (1|h): per draw N(b0 + b1 x + v_h, sigma^2 I + Z S Z')
    with Z = [1, x] and S the draw's 2 x 2 covariance (sds and correlation), against scipy."""
    fit = bayes.fit(parse("y ~ x + (1 + x|g) + (1|h)"), crossed, SamplerOptions(draws=200, tune=300, chains=2, seed=2),
                    run=QUIET)
    rows = fit.data[fit.data["g"] == "g1"].assign(g=lambda d: pd.Categorical(["new"] * len(d)))
    mine = crossval.heldout_log_density(fit, rows, rows["y"].to_numpy())
    x = rows["x"].to_numpy()
    z = np.column_stack([np.ones_like(x), x])
    v = np.column_stack([_level(fit, "1|h", h) for h in rows["h"].astype(str)])
    mean = _draws(fit, "Intercept")[:, None] + _draws(fit, "x")[:, None] * x + v
    s0, s1 = _draws(fit, "1|g_sigma"), _draws(fit, "x|g_sigma")
    r, sigma = _draws(fit, "cor__(Intercept).x|g"), _draws(fit, "sigma")
    for d in range(0, mean.shape[0], 7):
        cov_g = np.array([[s0[d] ** 2, r[d] * s0[d] * s1[d]], [r[d] * s0[d] * s1[d], s1[d] ** 2]])
        cov = sigma[d] ** 2 * np.eye(x.size) + z @ cov_g @ z.T
        assert mine[d] == pytest.approx(stats.multivariate_normal.logpdf(rows["y"].to_numpy(), mean[d], cov), rel=1e-9)


@pytest.mark.slow
def test_glmm_new_group_density_matches_quadrature(tmp_path):
    """A binomial model's held-out group, integrated over its new effect by importance sampling, against
    adaptive quadrature of p(y | b) N(b | 0, sd^2) per draw (scipy.integrate.quad), on every 12th draw.
    Monte Carlo error: the per-draw sd is about 0.02 at 100 importance draws (and seeded); a missing prior
    term, a wrong sd or a mode in the wrong place would be off by far more."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(6), 25)
    x = rng.normal(size=g.size)
    p = special.expit(-0.3 + 0.8 * x + rng.normal(scale=1.0, size=6)[g])
    df = pd.DataFrame({"y": rng.binomial(1, p), "x": x, "g": pd.Categorical([f"g{i}" for i in g])})
    fit = bayes.fit(parse("y ~ x + (1|g)", "binomial"), df, SamplerOptions(draws=300, tune=300, chains=2, seed=3),
                    run=QUIET)
    keep = (fit.data["g"] != "g0").to_numpy()
    refit = crossval.Refitter(cache_dir=tmp_path)(fit, keep, "without g0")
    y, trials = observed(fit)
    mine = crossval.heldout_log_density(refit, fit.data.loc[~keep], y[~keep], trials[~keep])
    b0, b1, sd = _draws(refit, "Intercept"), _draws(refit, "x"), _draws(refit, "1|g_sigma")
    xs, ys = fit.data.loc[~keep, "x"].to_numpy(), y[~keep]
    picks = np.arange(0, b0.size, 12)
    quad = []
    for d in picks:
        def log_f(b, d=d):  # log p(y | b) + log N(b | 0, sd^2), b a scalar or a grid
            eta = b0[d] + b1[d] * xs[:, None] + np.atleast_1d(b)[None, :]
            return np.sum(ys[:, None] * eta - np.logaddexp(0, eta), axis=0) + stats.norm.logpdf(b, 0, sd[d])

        grid = np.linspace(-8 * sd[d], 8 * sd[d], 801)
        values = log_f(grid)
        top = values.max()
        val, _ = integrate.quad(lambda b, f=log_f, c=top: np.exp(f(b)[0] - c), -10 * sd[d], 10 * sd[d],
                                points=[grid[np.argmax(values)]], limit=200, epsabs=0, epsrel=1e-10)
        quad.append(np.log(val) + top)
    quad = np.array(quad)
    # measured here: largest per-draw difference 0.049, sd 0.020; log-mean-exp over the draws 0.0014
    assert np.max(np.abs(mine[picks] - quad)) < 0.12
    assert abs(_lme(mine[picks]) - _lme(quad)) < 0.01


def test_data_dependent_columns_are_not_refitted():
    assert crossval.refit_obstacle(parse("y ~ x + (1|g)")) is None
    why = crossval.refit_obstacle(parse("y ~ scale(x) + (1|g)"))
    assert why is not None and "scale(x)" in why and "[prepare]" in why
    assert crossval.refit_obstacle(parse("y ~ poly(x, 2) + (1|g)")) is not None
    assert crossval.refit_obstacle(parse("y ~ log(x) + (1|g)")) is None


def test_bad_logo_group_is_a_one_line_error(tmp_path, capsys):
    """Checked before anything is fitted: the line names the group and the grouping factors there are."""
    code = main(["run", str(STUDY), "--logo", "mountain", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "--logo 'mountain' is not a grouping factor" in lines[0] and "mountainRange" in lines[0]
    assert "fitted" not in err and not (tmp_path / "out").exists()


def test_logo_in_a_study_file_is_checked():
    from bayeslmm.model.study import from_dict

    raw = {"name": "s", "model": [{"name": "a", "formula": "y ~ x + (1|g)"}, {"name": "b", "formula": "y ~ x"}],
           "comparison": [{"name": "c", "models": ["a", "b"], "logo": "g"}]}
    assert from_dict(raw).comparisons[0].logo == "g"
    raw["comparison"][0]["logo"] = "h"
    with pytest.raises(StudyError, match="logo 'h' is not a grouping factor of the compared models; theirs: g"):
        from_dict(raw)


def test_max_refits_must_be_a_count():
    with pytest.raises(OptionsError, match="--max-refits"):
        RunOptions(max_refits=-1)
    assert RunOptions().max_refits == 20
