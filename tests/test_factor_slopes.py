"""Factor random slopes: ``(0 + f|g)`` and ``(1 + f|g)`` are correlated blocks, as in lme4.

lme4 codes a term with ``model.matrix``: ``(0 + f|g)`` has a coefficient per level of ``f``
(``fA``, ``fB``, ``fC``), ``(1 + f|g)`` the intercept and treatment contrasts (``fB``, ``fC``), all
correlated. Checked here against the data and against dense linear algebra, never against our own
numbers: the model frame's columns (indicators of the raw labels); lme4's REML fit (its criterion
is the dense REML criterion with V = sigma^2 I + Z Sigma Z' built from the raw data, and an
independent minimisation of that criterion finds nothing lower); the marginal engine's log density
(the dense Gaussian marginal likelihood plus the priors read straight from Bambi's model and the
LKJ prior through Stan's transform, written out here); and a short fit's posterior, laid out as
Bambi lays out the term (one variable ``f|g`` along ``f__expr_dim``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import optimize, stats

from bayeslmm import labels
from bayeslmm.engines import bayes, marginal
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.engines.bayes import build_model, model_data
from bayeslmm.errors import FormulaError, OptionsError
from bayeslmm.lme4 import frequentist
from bayeslmm.model.formula import model_frame, parse, split_notes, to_bambi
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.model.priors import Priors
from bayeslmm.summary import predict

LEVELS = ("A", "B", "C")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    """24 groups x 12 rows; f (3, 4 and 5 rows per group); correlated effects per level of f.

    ``k`` (1, 2, 10) is an integer column for ``factor(k)``: R orders its levels as numbers.
    """
    rng = np.random.default_rng(20)
    groups, per = 24, 12
    n = groups * per
    g = np.repeat([f"s{i:02d}" for i in range(groups)], per)
    f = np.tile(np.repeat(LEVELS, [3, 4, 5]), groups)  # unbalanced: Bambi gives each level its own sd prior
    cor = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    u = rng.normal(size=(groups, 3)) @ np.linalg.cholesky(cor).T * np.array([1.0, 2.0, 0.7])
    x = rng.normal(size=n)
    fi = np.searchsorted(LEVELS, f)
    y = 1.0 + 0.5 * x + u[np.repeat(np.arange(groups), per), fi] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g, "k": rng.choice([10, 1, 2], n)})


def _setup(formula: str, df: pd.DataFrame):
    f = parse(formula)
    d = model_data(f, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(f, d)
    return f, d, model, model_frame(f, d)


def _design(coefs: tuple[str, ...], df: pd.DataFrame) -> np.ndarray:
    """Each coefficient's column from the raw data: ones, x, or the indicator of a label."""
    cols = []
    for c in coefs:
        if c == "(Intercept)":
            cols.append(np.ones(len(df)))
        elif c == "x":
            cols.append(df["x"].to_numpy(dtype=float))
        elif c.startswith("factor(k)"):
            cols.append((df["k"].astype(str) == c[len("factor(k)"):]).to_numpy(dtype=float))
        else:
            cols.append((df["f"] == c[1:]).to_numpy(dtype=float))
    return np.column_stack(cols)


# ---------------------------------------------------------------------------------------
# The model frame: lme4's columns and names
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("term", "coefs", "echo"), [
    ("(0 + f|g)", ("fA", "fB", "fC"), "(0 + f|g)"),
    ("(1 + f|g)", ("(Intercept)", "fB", "fC"), "(1 + f|g)"),
    ("(f|g)", ("(Intercept)", "fB", "fC"), "(1 + f|g)"),
    ("(0 + x + f|g)", ("x", "fA", "fB", "fC"), "(0 + x + f|g)"),  # R: the first factor of a term without intercept
    ("(1 + f + x|g)", ("(Intercept)", "fB", "fC", "x"), "(1 + f + x|g)"),
    ("(0 + factor(k)|g)", ("factor(k)1", "factor(k)2", "factor(k)10"), "(0 + factor(k)|g)"),  # R's numeric order
    ("(1 + factor(k)|g)", ("(Intercept)", "factor(k)2", "factor(k)10"), "(1 + factor(k)|g)"),
])
def test_model_frame_has_lme4s_columns_of_a_factor_slope(data, term, coefs, echo):
    formula = parse(f"y ~ x + {term}")
    frame = model_frame(formula, data)
    (block,) = frame.blocks
    assert block.term.coefs == coefs
    assert frame.formula.random[0].coefs == coefs  # the frame's formula is resolved too
    assert block.term.correlated
    assert block.term.lme4 == echo
    np.testing.assert_array_equal(block.values, _design(coefs, data))
    # Bambi reads the factor as written (its columns are checked against these in the engine tests)
    assert to_bambi(formula) == f"y ~ x + {echo.replace('factor(k)', '`factor(k)`')}"


def test_written_term_is_unresolved_until_it_meets_the_data(data):
    term = parse("y ~ (0 + f|g)").random[0]
    assert term.coefs == ("f",) and not term.correlated and term.may_correlate
    assert not parse("y ~ (0 + log(x + 5)|g)").random[0].may_correlate  # a numeric expression


def test_double_bar_keeps_a_factors_columns_correlated_as_lme4_does(data):
    # lme4's expandDoubleVerts ("split", its default): (0 + f||g) is (0 + f|g), one correlated block
    frame = model_frame(parse("y ~ x + (0 + f + x||g)"), data)
    fterm, xterm = (b.term for b in frame.blocks)
    assert fterm.coefs == ("fA", "fB", "fC") and fterm.correlated and fterm.split
    assert xterm.coefs == ("x",) and not xterm.correlated
    (note,) = split_notes(frame.formula)
    assert "(0 + f|g)" in note and "fA, fB, fC" in note and "(1|g) + (1|g:f)" in note
    assert split_notes(model_frame(parse("y ~ x + (x||g)"), data).formula) == []


def test_a_factor_block_takes_a_cor_prior_and_a_numeric_slope_refuses_it(data):
    lkj2 = Priors.from_texts(["cor(g) ~ LKJ(2)"])
    prep = bayes.prepare(parse("y ~ x + (0 + f|g)"), data, priors=lkj2)  # correlated once the data say f is a factor
    assert prep.priors["cor(g)"] == "LKJ(eta=2)"
    assert marginal.spec(prep.formula, prep.frame, prep.model, prep.user_priors).blocks[0].eta == 2.0
    with pytest.raises(OptionsError, match="g has no correlated random effects"):
        bayes.prepare(parse("y ~ x + (0 + x|g)"), data, priors=lkj2)


def test_two_factors_without_intercept_are_refused(data):
    df = data.assign(h=np.where(data["x"] > 0, "u", "v"))
    refused = r"\(0 \+ f \+ h\|g\) has the factors f and h .*add the intercept, \(1 \+ f \+ h\|g\)"
    with pytest.raises(FormulaError, match=refused):
        model_frame(parse("y ~ (0 + f + h|g)"), df)
    frame = model_frame(parse("y ~ (1 + f + h|g)"), df)  # with the intercept lme4 and Bambi agree
    assert frame.blocks[0].term.coefs == ("(Intercept)", "fB", "fC", "hv")


def test_bambi_coding_that_is_not_lme4s_is_refused(data):
    # Bambi drops f's first level when g has a random intercept in another term; lme4 does not
    for formula in ("y ~ x + (f||g)", "y ~ x + (1|g) + (0 + f|g)"):
        with pytest.raises(FormulaError, match=r"lme4 codes factor f with the columns fA, fB, fC, Bambi with fB, fC"):
            bayes.prepare(parse(formula), data)


# ---------------------------------------------------------------------------------------
# Names: lme4's coefficient, broom.mixed's terms, Bambi's variables and dims
# ---------------------------------------------------------------------------------------


def test_names_of_a_factors_columns_are_bambis_and_lme4s(data):
    _, _, model, frame = _setup("y ~ x + (1 + f|g)", data)
    dims = model.backend.model.named_vars_to_dims
    coords = model.backend.model.coords
    cols = frame.blocks[0].term.columns
    assert [c.name for c in cols] == ["(Intercept)", "fB", "fC"]
    for col in cols:
        var, sd = col.variable("g"), col.sd_variable("g")
        assert tuple(dims[var]) == (labels.factor_dim("g"), *((col.dim,) if col.dim else ()))
        assert tuple(dims.get(sd, ())) == ((col.dim,) if col.dim else ())
        if col.dim:
            assert col.level in coords[col.dim]
        assert labels.classify(sd, col.level) == ("ran_pars", "g", labels.sd_term(col.name))
        assert labels.classify(var, col.level) == ("ran_vals", "g", col.name)
    assert labels.expr_dim("f") == "f__expr_dim" and cols[1].variable("g") == "f|g"
    assert labels.cor_variable("g", "fB", "fC") == "cor__fB.fC|g"


# ---------------------------------------------------------------------------------------
# lme4's side: the REML fit is the optimum of the dense REML criterion
# ---------------------------------------------------------------------------------------


def _rows(df: pd.DataFrame, coefs) -> tuple[np.ndarray, np.ndarray]:
    """The rows' coefficient columns (:func:`_design`) and whether two rows share a group."""
    g = df["g"].to_numpy()
    return _design(coefs, df), (g[:, None] == g[None, :]).astype(float)


def _dense_v(rows: tuple[np.ndarray, np.ndarray], sds, cor, sigma) -> np.ndarray:
    """V = sigma^2 I + Z (I x Sigma) Z', from the raw data: V_ij = [g_i = g_j] z_i' Sigma z_j."""
    z, same = rows
    v = same * (z @ (np.outer(sds, sds) * cor) @ z.T)
    v[np.diag_indices_from(v)] += sigma**2
    return v


def _reml_criterion(y: np.ndarray, X: np.ndarray, V: np.ndarray) -> tuple[float, np.ndarray]:
    """-2 log REML likelihood: log|V| + log|X'V^-1X| + (n - p) log 2 pi + r'V^-1 r, and the GLS beta."""
    from scipy.linalg import cho_factor, cho_solve

    n, p = X.shape
    c = cho_factor(V, lower=True)
    vi_xy = cho_solve(c, np.column_stack([X, y]))
    xvx = X.T @ vi_xy[:, :p]
    beta = np.linalg.solve(xvx, X.T @ vi_xy[:, p])
    r = y - X @ beta
    crit = (2 * np.log(np.diag(c[0])).sum() + np.linalg.slogdet(xvx)[1] + (n - p) * np.log(2 * np.pi)
            + r @ cho_solve(c, r))
    return float(crit), beta


def _cor_from(a: np.ndarray) -> np.ndarray:
    """A correlation matrix from 3 unconstrained numbers (unit-row-normalised lower triangle)."""
    low = np.array([[1.0, 0, 0], [a[0], 1.0, 0], [a[1], a[2], 1.0]])
    low /= np.linalg.norm(low, axis=1, keepdims=True)
    return low @ low.T


def test_lme4_fit_of_a_factor_block_is_the_optimum_of_the_dense_reml_criterion(data):
    frame = model_frame(parse("y ~ x + (0 + f|g)"), data)
    fit = frequentist.fit(frame, "reml")
    vc = fit.varcorr[fit.varcorr["group"] == "g"].set_index("term")["sd"]
    # broom.mixed's order (labels.sdcor_terms): each sd followed by its correlations with the later columns
    assert list(vc.index) == ["sd__fA", "cor__fA.fB", "cor__fA.fC", "sd__fB", "cor__fB.fC", "sd__fC"]
    assert list(fit.ranef["g"].columns) == ["fA", "fB", "fC"]
    coefs = ("fA", "fB", "fC")
    cor = np.eye(3)
    for a, b in labels.cor_pairs(coefs):
        i, j = coefs.index(a), coefs.index(b)
        cor[i, j] = cor[j, i] = vc[labels.cor_term(a, b)]
    sds = vc[[labels.sd_term(c) for c in coefs]].to_numpy()
    X, y, rows = np.column_stack([np.ones(len(data)), data["x"]]), data["y"].to_numpy(), _rows(data, coefs)
    at_fit, beta = _reml_criterion(y, X, _dense_v(rows, sds, cor, fit.sigma))
    assert at_fit == pytest.approx(fit.reml_criterion, rel=1e-10)
    np.testing.assert_allclose(beta, fit.fixef.to_numpy(), rtol=1e-8)

    def crit(t):
        return _reml_criterion(y, X, _dense_v(rows, np.exp(t[:3]), _cor_from(t[3:6]), np.exp(t[6])))[0]

    best = optimize.minimize(crit, np.zeros(7), method="BFGS", options={"gtol": 1e-7})
    # nothing lower than lme4's answer, and the independent optimum is that answer
    assert best.fun >= fit.reml_criterion - 1e-6
    assert best.fun == pytest.approx(fit.reml_criterion, abs=1e-5)
    np.testing.assert_allclose(np.exp(best.x[:3]), sds, rtol=2e-3)


# ---------------------------------------------------------------------------------------
# The marginal engine: log density against dense algebra, and a short fit
# ---------------------------------------------------------------------------------------


def _cpc(y: np.ndarray, k: int, eta: float) -> tuple[np.ndarray, float]:
    """Stan's ``cholesky_corr`` transform: R from k(k-1)/2 unconstrained values (row by row), and the
    log-Jacobian of y -> L plus the LKJ(eta) log density of L (Stan's lkj_corr_cholesky, unnormalised)."""
    L = np.zeros((k, k))
    L[0, 0] = 1.0
    lp, idx = 0.0, 0
    for i in range(1, k):
        ss = 0.0
        for j in range(i):
            z = math.tanh(y[idx])
            lp += math.log1p(-z * z) + (0.5 * math.log(1.0 - ss) if j else 0.0)
            L[i, j] = z * math.sqrt(1.0 - ss)
            ss += L[i, j] ** 2
            idx += 1
        L[i, i] = math.sqrt(1.0 - ss)
        lp += (k - i - 1 + 2.0 * (eta - 1.0)) * math.log(L[i, i])
    return L @ L.T, lp


@pytest.mark.parametrize("formula", ["y ~ x + (0 + f|g)", "y ~ x + (1 + f|g)", "y ~ x + (1 + factor(k)|g)"])
def test_marginal_log_density_is_the_dense_marginal_likelihood(data, formula):
    _, d, model, frame = _setup(formula, data)
    sp = marginal.spec(frame.formula, frame, model)
    (block,) = sp.blocks
    coefs = frame.blocks[0].term.coefs
    assert block.coefs == coefs
    p, K, C = sp.X.shape[1], len(sp.random), sp.n_cor
    rng = np.random.default_rng(5)
    theta = np.concatenate([rng.normal(size=p), rng.normal(-0.2, 0.4, K), [0.1], rng.normal(0, 0.6, C)])
    stats_ = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), K)
    grad = np.empty_like(theta)
    value = ml.logp_grad(theta, grad, *stats_.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar)

    # each coefficient's sd by Bambi's name and level, its prior straight from Bambi's model
    terms = model.conditional_parameters["mu"].group_specific_terms
    sds, prior = np.empty(len(coefs)), 0.0
    for i, col in enumerate(frame.blocks[0].term.columns):
        (k,) = [k for k, r in enumerate(sp.random) if (r.name, r.level) == (col.variable("g"), col.level)]
        s = sds[i] = np.exp(theta[p + k])
        term = terms[col.variable("g")]
        scale = np.atleast_1d(term.prior.args["sigma"].args["sigma"])  # a scale per level for a factor
        scale = scale[[str(v) for v in term.coords[col.dim]].index(col.level)] if col.dim else scale[0]
        prior += stats.halfnorm(scale=scale).logpdf(s) + np.log(s)  # + log-Jacobian of s = exp(theta)
    cor, lkj = _cpc(theta[p + K + 1:], len(coefs), 1.0)
    prior += lkj
    prior += sum(ml.location_prior(sp.bcode[a], sp.bpar[a], theta[a])[0] for a in range(p))  # fixed: not new here
    prior += ml.scale_prior(sp.scode[K], sp.spar[K], theta[p + K])[0]  # residual sigma: not new here
    V = _dense_v(_rows(d, coefs), sds, cor, np.exp(theta[p + K]))
    dense = stats.multivariate_normal(sp.X @ theta[:p], V).logpdf(sp.y - sp.offset - sp.shift)
    assert value == pytest.approx(dense + prior, abs=1e-8)

    eps = 1e-6
    fd = [(ml.logp_grad(theta + h, np.empty_like(theta), *stats_.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar)
           - ml.logp_grad(theta - h, np.empty_like(theta), *stats_.arrays(), sp.bcode, sp.bpar, sp.scode, sp.spar))
          / (2 * eps) for h in eps * np.eye(theta.size)]  # fmt: skip
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


def test_posterior_follows_bambis_order_of_levels(data):
    # Bambi orders factor(k)'s levels as text (10 before 2), lme4 as numbers: the engine's block is
    # lme4's (factor(k)2, factor(k)10), its posterior Bambi's
    _, _, model, frame = _setup("y ~ x + (1 + factor(k)|g)", data)
    assert frame.blocks[0].term.coefs == ("(Intercept)", "factor(k)2", "factor(k)10")
    tree = marginal.sample(model, frame, SamplerOptions(draws=30, tune=30, chains=1, seed=2), progress=False)
    post = tree["posterior"]
    dims = model.backend.model.named_vars_to_dims
    assert [str(v) for v in model.backend.model.coords["factor(k)__expr_dim"]] == ["10", "2"]
    for var in ("factor(k)|g", "factor(k)|g_sigma"):
        assert post[var].dims == ("chain", "draw", *dims[var])
    np.testing.assert_array_equal(post["factor(k)__expr_dim"].values, model.backend.model.coords["factor(k)__expr_dim"])
    assert "cor__factor(k)2.factor(k)10|g" in post
    ll = marginal.log_likelihood(model, frame, tree)  # each level's effects found by label
    np.testing.assert_array_equal(ll.values, tree["log_likelihood"]["y"].values)


@pytest.fixture(scope="module")
def short_fit(data):
    """A short marginal fit of (1 + f|g) through bayeslmm's API (prepare, sample, the fit's tables)."""
    return bayes.fit(parse("y ~ x + (1 + f|g)"), data, SamplerOptions(draws=300, tune=300, chains=2, seed=4),
                     run=RunOptions(progress=False))


def test_short_fit_names_its_variables_as_bambi_would(short_fit):
    fit = short_fit
    assert fit.engine == "marginal"
    assert fit.formula.random[0].coefs == ("(Intercept)", "fB", "fC")  # resolved when prepared
    assert bayes.prior_table(fit.model, fit.formula)["cor(g)"] == "LKJ(eta=1)"
    post = fit.idata["posterior"]
    bambi = build_model(fit.formula, fit.data, fit.model).backend.model  # Bambi given the fit's priors
    bambi_dims = {k: tuple(v) for k, v in bambi.named_vars_to_dims.items()}
    for var in ("1|g", "1|g_sigma", "f|g", "f|g_sigma"):
        assert post[var].dims == ("chain", "draw", *bambi_dims.get(var, ()))
    np.testing.assert_array_equal(post["f__expr_dim"].values, bambi.coords["f__expr_dim"])
    cors = [v for v in post.data_vars if str(v).startswith(labels.COR_PREFIX)]
    assert cors == ["cor__(Intercept).fB|g", "cor__(Intercept).fC|g", "cor__fB.fC|g"]
    # the pointwise log-likelihood recomputed from the posterior (a factor's effects selected by
    # label) is what Bambi computes from the same draws
    ours = bayes.log_likelihood(fit)
    theirs = xr.DataTree.from_dict({"posterior": post.to_dataset()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_model(fit.formula, fit.data, fit.model).compute_log_likelihood(theirs)
    np.testing.assert_allclose(ours.values, theirs["log_likelihood"]["y"].values, rtol=1e-10)


def test_short_fit_agrees_with_lme4_and_predicts_from_each_level(short_fit, data):
    fit = short_fit
    post = fit.idata["posterior"]
    reml = frequentist.fit(model_frame(fit.formula, fit.data), "reml")
    vc = reml.varcorr.set_index("term")["sd"]
    for level in ("B", "C"):
        draws = post["f|g_sigma"].sel(f__expr_dim=level).values.ravel()
        # REML's sd inside the central 99% of the posterior (a seeded short fit; the prior is weak)
        assert np.quantile(draws, 0.005) < vc[f"sd__f{level}"] < np.quantile(draws, 0.995)
    # the linear predictor of row i: Intercept + x b + 1|g[g_i] + f|g[g_i, f_i] (f_i != A)
    eta = predict.linear_predictor(fit, max_draws=20)
    idx = predict.draw_index(fit, 20)

    def flat(var):
        da = post[var]
        return da.values.reshape(-1, *da.shape[2:])[idx]

    g = fit.data["g"].astype(str).to_numpy()
    gi = np.searchsorted(post["g__factor_dim"].values.astype(str), g)
    f = fit.data["f"].astype(str).to_numpy()
    fe = flat("f|g")
    expect = flat("Intercept")[:, None] + flat("x")[:, None] * fit.data["x"].to_numpy()[None, :] + flat("1|g")[:, gi]
    for j, level in enumerate(post["f__expr_dim"].values.astype(str)):
        expect += (f == level)[None, :] * fe[:, gi, j]
    np.testing.assert_allclose(eta, expect, rtol=1e-12, atol=1e-12)
    assert predict.group_effect_draws(fit, "g", "fC")[1].shape == (predict.n_draws(fit), 24)


def test_short_fit_tables_name_each_column_as_lme4(short_fit):
    """A factor's sds and effects are a term per column (sd__fB, fB), as lme4's rows, in both tables
    and in the draws the figures use."""
    from bayeslmm.summary.tables import cor_draws, sd_draws

    fit = short_fit
    tidy = fit.tidy()
    pars = tidy[tidy.effect == "ran_pars"]
    assert list(zip(pars.group, pars.term, strict=True)) == [
        ("g", "sd__(Intercept)"), ("g", "cor__(Intercept).fB"), ("g", "cor__(Intercept).fC"), ("g", "sd__fB"),
        ("g", "cor__fB.fC"), ("g", "sd__fC"), ("Residual", "sd__Observation")]
    post = fit.idata["posterior"]
    row = pars.set_index("term").loc["sd__fC"]
    assert row.estimate == pytest.approx(float(post["f|g_sigma"].sel(f__expr_dim="C").mean()), rel=1e-12)
    vals = tidy[tidy.effect == "ran_vals"]
    assert set(vals.term) == {"(Intercept)", "fB", "fC"} and (vals.groupby("term").size() == 24).all()
    one = vals[(vals.term == "fB") & (vals.level == "s03")].estimate.item()
    assert one == pytest.approx(float(post["f|g"].sel(f__expr_dim="B", g__factor_dim="s03").mean()), rel=1e-12)
    assert list(sd_draws(fit)) == [("g", "sd__(Intercept)"), ("g", "sd__fB"), ("g", "sd__fC"),
                                   ("Residual", "sd__Observation")]
    assert len(cor_draws(fit)) == 3


def test_priors_of_a_factors_sds_are_per_column(short_fit):
    """The prior-vs-posterior figure's priors: one per column of the factor (it crashed the report), each
    column's own scale from Bambi's vector argument (``HalfNormal(sigma=[...])``, in Bambi's order of levels)."""
    from bayeslmm.engines.prior_density import sd_priors

    prior = sd_priors(short_fit)
    assert list(prior) == [("g", "sd__(Intercept)"), ("g", "sd__fB"), ("g", "sd__fC"), ("Residual", "sd__Observation")]
    bambi = build_model(short_fit.formula, short_fit.data, short_fit.model)  # Bambi's model, as its engine gets it
    term = bambi.conditional_parameters["mu"].group_specific_terms["f|g"]
    scales = dict(zip(term.coords["f__expr_dim"], np.asarray(term.prior.args["sigma"].args["sigma"]), strict=True))
    for level in ("B", "C"):  # a half-normal's sd is its scale times sqrt(1 - 2/pi)
        assert prior[("g", f"sd__f{level}")].std() == pytest.approx(scales[level] * math.sqrt(1 - 2 / math.pi),
                                                                    rel=1e-12)
