"""The reference engine (a plain PyMC model, random effects included) against the marginal engine.

Bambi cannot fit correlated random effects, so the reference engine is what proves the marginal
engine's ``(x|g)`` posterior right.  Two layers:

* the densities (no sampler): integrating the random effects out of the reference model's log
  density gives the marginal engine's log density, priors, LKJ prior and likelihood included;
* real seeded fits (``slow``): both engines' posteriors agree on a nested correlated design
  (slopes.csv), a crossed one (simulated here) and an uncorrelated ``(x||g)`` one, in the same
  layout, with the same pointwise log-likelihood; a seeded reference run repeats exactly.

Tolerance for engine agreement, as in test_marginal.py: both engines are Monte Carlo estimates of
the same posterior, so the difference of two posterior means has standard deviation
sqrt(mcse_a^2 + mcse_b^2); we accept |diff| < 4 of those (a correct engine fails one comparison
with probability ~6e-5; a wrong prior, a transposed Cholesky factor or a lost centring moves a
mean or sd by far more).  The reference engine mixes slowly in the correlation (its bulk ESS
is a few hundred at 4 x 1000 draws), so its MCSE dominates the tolerance there.  The fits are
seeded, so the outcome is deterministic.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslmm.engines import bayes, marginal, reference
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.bayes import SamplerOptions, build_model, model_data
from bayeslmm.errors import OptionsError
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.model.options import RunOptions
from bayeslmm.model.priors import Priors
from conftest import BEYOND

SLOPES = "reaction ~ day + (day|subject)"
CROSSED = "y ~ x + (1 + x|subject) + (1|item)"
UNCORRELATED = "reaction ~ day + (day||subject)"
OPTIONS = SamplerOptions(seed=21)  # 4 chains x 1000 draws after 1000 tuning steps


def _setup(formula: str, df: pd.DataFrame, priors: Priors | None = None):
    f = parse(formula)
    data = model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(f, data)
    frame = model_frame(f, data)
    return f, model, frame, marginal.spec(f, frame, model, priors)


def simulate_crossed(seed: int, n_subject: int = 30, n_item: int = 15) -> pd.DataFrame:
    """Every subject meets every item once; truth: y = 10 + 2 x + (a + b x | subject) + c | item + e,
    sd(a) = 1, sd(b) = 0.5, cor(a, b) = -0.4, sd(c) = 0.7, sd(e) = 1."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, -0.4 * 0.5], [-0.4 * 0.5, 0.25]])
    ab = rng.multivariate_normal([0.0, 0.0], cov, n_subject)
    c = rng.normal(0.0, 0.7, n_item)
    s = np.repeat(np.arange(n_subject), n_item)
    i = np.tile(np.arange(n_item), n_subject)
    x = rng.normal(0.0, 1.0, s.size)
    y = 10.0 + 2.0 * x + ab[s, 0] + ab[s, 1] * x + c[i] + rng.normal(0.0, 1.0, s.size)
    return pd.DataFrame({"y": y, "x": x, "subject": [f"s{k:02d}" for k in s], "item": [f"i{k:02d}" for k in i]})


# ---------------------------------------------------------------------------------------
# Densities: the reference model with u integrated out is the marginal engine's posterior
# ---------------------------------------------------------------------------------------


def _toy(seed: int = 3, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"y": rng.normal(5.0, 2.0, n), "x": rng.normal(0.0, 1.0, n), "w": rng.normal(1.0, 1.0, n),
                         "g": rng.choice(list("abcdef"), n), "h": rng.choice(list("PQR"), n)})  # fmt: skip


#: Every scale family, in turn, on the sds and sigma (Bambi's defaults are all HalfNormal/HalfStudentT).
_SCALES = [(ml.HALF_STUDENT_T, (3.0, 4.0)), (ml.GAMMA, (2.0, 1.5)), (ml.EXPONENTIAL, (0.7, 0.0)),
           (ml.HALF_CAUCHY, (2.0, 0.0)), (ml.INVERSE_GAMMA, (3.0, 2.0)), (ml.HALF_NORMAL, (2.5, 0.0))]  # fmt: skip


@pytest.mark.parametrize("formula", ["y ~ x + (1 + x|g) + (1|h)", "y ~ x + w + (1 + x + w|g) + (x||h)"])
def test_reference_density_integrated_over_the_effects_is_the_marginal_density(formula):
    """log of the integral over z of the reference model's density = the marginal engine's log density.

    The reference density is quadratic in the innovations z, so the integral is exact:
    ``logp(z*) + q/2 log 2 pi - 1/2 log det H`` at the mode z* (one Newton step), H = -d2 logp / dz2.
    The correlations are parameterised differently (the marginal engine: Stan's canonical partial
    correlations; PyMC: its CholeskyCorr transform), so each side's correlation term -- its LKJ
    density and its transform's log-Jacobian -- is taken off before comparing, and the LKJ
    density itself is checked against the closed form for a 2 x 2 block.
    """
    import pymc as pm
    from scipy.special import betaln

    rng = np.random.default_rng(11)
    _, _, _, sp = _setup(formula, _toy(), Priors.from_texts(["cor ~ LKJ(2)"]))
    p, K = sp.X.shape[1], len(sp.random)
    scode, spar = sp.scode.copy(), sp.spar.copy()
    for k in range(K + 1):
        scode[k], spar[k, :2] = _SCALES[k % len(_SCALES)]
    bcode, bpar = sp.bcode.copy(), sp.bpar.copy()
    bcode[-1], bpar[-1, 2] = ml.STUDENT_T, 5.0
    sp = dataclasses.replace(sp, scode=scode, spar=spar, bcode=bcode, bpar=bpar)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), K)
    theta = marginal.initial_point(sp) + rng.uniform(-0.5, 0.5, sp.n_dim)
    ours = ml.logp_grad(theta, np.empty(sp.n_dim), *stats.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar)

    model = reference.pymc_model(sp)
    fast = {"mode": "FAST_COMPILE"}  # Python mode: these graphs are tiny, C compilation would dominate
    point = {}
    for code in np.unique(sp.bcode):
        point[reference.fixed_name(int(code))] = theta[:p][sp.bcode == code]
    for k in range(K):
        point[f"{reference.sd_name(k)}_log__"] = theta[p + k]
    point[f"{reference.SIGMA}_log__"] = theta[p + K]
    assert sp.blocks
    for i, block in enumerate(sp.blocks):
        k = len(block.coefs)
        nc = k * (k - 1) // 2
        L, dL, dlp = np.zeros((k, k)), np.zeros((nc, k, k)), np.zeros(nc)
        ours -= ml.corr_cholesky(theta[p + K + 1 + block.cor.start :], k, block.eta, L, dL, dlp)
        rv = model[reference.chol_name(i)]
        transform = model.rvs_to_transforms[rv]
        x = transform.forward(L).eval(**fast)
        point[model.rvs_to_values[rv].name] = x
        lkj = float(pm.logp(pm.LKJCorr.dist(n=k, eta=block.eta), L).eval(**fast))
        ours += lkj + float(transform.log_jac_det(x).eval(**fast))
        if k == 2:  # R ~ LKJ(eta) on 2 x 2: (r + 1) / 2 ~ Beta(eta, eta)
            r, eta = L[1, 0], block.eta
            assert lkj == pytest.approx((eta - 1) * np.log1p(-r * r) - (2 * eta - 1) * np.log(2) - betaln(eta, eta),
                                        rel=1e-10)  # fmt: skip

    zs = [model[reference.z_name(f)] for f in range(len(sp.factors))]
    names = [model.rvs_to_values[z].name for z in zs]
    for z, name in zip(zs, names, strict=True):
        point[name] = np.zeros(z.type.shape)
    terms = model.compile_fn([model.logp(), model.dlogp(vars=zs)], **fast)  # log density, its gradient in z

    def shifted(step):
        out = dict(point)
        at = 0
        for name in names:
            out[name] = point[name] + step[at : at + point[name].size].reshape(point[name].shape)
            at += point[name].size
        return out

    _, g = terms(point)
    q = g.size
    # the gradient is affine in z, so unit steps give minus the Hessian exactly (up to rounding)
    H = np.column_stack([g - terms(shifted(np.eye(q)[j]))[1] for j in range(q)])
    logp, g_mode = terms(shifted(np.linalg.solve(H, g)))
    assert np.abs(g_mode).max() < 1e-8  # the mode: the density is quadratic in z
    integrated = logp + 0.5 * q * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(H)[1]
    # PyMC's own constants (log 2 pi, ...) are float32 (test_marginal.py: ~2e-9 per density)
    assert integrated == pytest.approx(ours, rel=1e-10, abs=1e-7)


def test_pymc_engine_is_chosen_only_when_asked():
    import bambi as bmb

    df = pd.read_csv(BEYOND / "slopes.csv")
    f, model, frame, _ = _setup(SLOPES, df)
    assert bayes.choose_engine("pymc", f, frame, model)[0] == "pymc"
    assert bayes.choose_engine("auto", f, frame, model)[0] == "marginal"
    data = model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_model = bmb.Model("reaction ~ day + (day|subject)", data, family="t")
    with pytest.raises(OptionsError, match=r"--engine pymc cannot fit .*non-Gaussian family"):
        bayes.choose_engine("pymc", f, frame, t_model)


# ---------------------------------------------------------------------------------------
# Real seeded fits: the engines agree
# ---------------------------------------------------------------------------------------


#: The data of the two correlated designs.
frame_data = {"nested": pd.read_csv(BEYOND / "slopes.csv"), "crossed": simulate_crossed(7)}


@pytest.fixture(scope="module")
def fits():
    """Both engines, default sampler settings, on the nested and the crossed correlated design."""
    designs = {"nested": (SLOPES, frame_data["nested"]), "crossed": (CROSSED, frame_data["crossed"])}
    out = {}
    for name, (formula, df) in designs.items():
        f, model, frame, _ = _setup(formula, df)
        out[name] = (f, model, frame, marginal.sample(model, frame, OPTIONS, progress=False),
                     reference.sample(model, frame, OPTIONS, progress=False))
    return out


def _scalars(tree) -> list[str]:
    post = tree["posterior"]
    return [v for v in post.data_vars if post[v].ndim == 2]


def _assert_agree(a_tree, b_tree, what: str) -> None:
    """Posterior means and sds of every fixed effect, sd and correlation within 4 MCSE."""
    import arviz as az

    names = _scalars(a_tree)
    assert names == _scalars(b_tree)
    a, b = az.summary(a_tree, var_names=names), az.summary(b_tree, var_names=names)
    for v in names:
        tol = 4 * np.hypot(a.loc[v, "mcse_mean"], b.loc[v, "mcse_mean"])
        assert abs(a.loc[v, "mean"] - b.loc[v, "mean"]) < tol, f"{what} {v}: {a.loc[v, 'mean']} vs {b.loc[v, 'mean']}"
        tol_sd = 4 * np.hypot(a.loc[v, "mcse_sd"], b.loc[v, "mcse_sd"])
        assert abs(a.loc[v, "sd"] - b.loc[v, "sd"]) < tol_sd, f"{what} {v}: sd {a.loc[v, 'sd']} vs {b.loc[v, 'sd']}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested", "crossed"])
def test_engines_agree_on_correlated_effects(fits, name):
    _, _, _, tree_m, tree_r = fits[name]
    assert any(v.startswith("cor__") for v in _scalars(tree_r))
    assert int(tree_r["sample_stats"]["diverging"].sum()) == 0  # a reference with divergences proves nothing
    _assert_agree(tree_m, tree_r, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested", "crossed"])
def test_reference_layout_and_log_likelihood_are_the_marginal_engines(fits, name):
    f, model, frame, tree_m, tree_r = fits[name]
    assert list(tree_r.children) == list(tree_m.children)
    for group in tree_m.children:
        ours, theirs = tree_r[group].to_dataset(), tree_m[group].to_dataset()
        assert list(ours.data_vars) == list(theirs.data_vars), group
        for v in theirs.data_vars:
            assert ours[v].dims == theirs[v].dims, (group, v)
        for c in theirs.coords:
            np.testing.assert_array_equal(ours[c].values, theirs[c].values)
    assert tree_r["posterior"].attrs["modeling_interface"] == "bayeslmm.engines.reference"
    recomputed = marginal.log_likelihood(model, frame, tree_r)
    np.testing.assert_array_equal(recomputed.values, tree_r["log_likelihood"][f.response].values)
    # ... and it is the Normal density of the posterior's own named draws, computed here from the data
    from scipy.stats import norm

    post = tree_r["posterior"].isel(chain=0, draw=slice(0, 50))
    data = frame_data[name]
    slope = "day" if name == "nested" else "x"
    mu = post["Intercept"].values[:, None] + post[slope].values[:, None] * data[slope].to_numpy()
    for group in ("subject", "item"):
        for coef, values in (("1", 1.0), (slope, data[slope].to_numpy())):
            var = f"{coef}|{group}"
            if var in post:
                effects = post[var].sel({f"{group}__factor_dim": data[group].astype(str).to_numpy()}).values
                mu = mu + effects * values
    expected = norm.logpdf(data[f.response].to_numpy(), mu, post["sigma"].values[:, None])
    np.testing.assert_allclose(tree_r["log_likelihood"][f.response].isel(chain=0, draw=slice(0, 50)).values,
                               expected, rtol=1e-9)


@pytest.mark.slow
def test_uncorrelated_reference_fit_agrees_and_repeats_with_its_seed(tmp_path):
    """``(x||g)`` through ``bayes.fit(engine="pymc")``: R = I, no LKJ; same seed, same draws; cached and reloaded."""
    df = pd.read_csv(BEYOND / "slopes.csv")
    opts = dataclasses.replace(OPTIONS, engine="pymc")
    run = RunOptions(progress=False)
    a = bayes.fit(parse(UNCORRELATED), df, opts, run=run, save_dir=tmp_path)
    b = bayes.fit(parse(UNCORRELATED), df, opts, run=run)
    assert (a.engine, b.engine) == ("pymc", "pymc")
    for v in a.idata["posterior"].data_vars:
        np.testing.assert_array_equal(a.idata["posterior"][v].values, b.idata["posterior"][v].values)
    assert not any(v.startswith("cor__") for v in _scalars(a.idata))
    assert int(a.idata["sample_stats"]["diverging"].sum()) == 0
    _, model, frame, _ = _setup(UNCORRELATED, df)
    _assert_agree(marginal.sample(model, frame, OPTIONS, progress=False), a.idata, "uncorrelated")

    reloaded = bayes.fit(parse(UNCORRELATED), df, opts, run=run, cache_dir=tmp_path)
    assert reloaded.cached
    np.testing.assert_array_equal(bayes.log_likelihood(reloaded).values, bayes.log_likelihood(a).values)
