"""The content-hash cache of posteriors: hits, misses, corrupt files, one file per posterior, and
LOO from a posterior saved without its pointwise log-likelihood."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from bayeslmm.engines import bayes, marginal
from bayeslmm.errors import OptionsError
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import compare

FORMULA = parse("testScore ~ bodyLength2 + (1|mountainRange)")
TINY = SamplerOptions(draws=50, tune=50, chains=2, seed=3)

QUIET = RunOptions(progress=False)


def _key(df, options=TINY, formula=FORMULA):
    data = bayes.model_data(formula, df)
    priors = bayes.prior_table(bayes.build_model(formula, data))
    return bayes.cache_key(formula, data, priors, options)


def test_key_is_stable_and_sensitive(builtin):
    k = _key(builtin)
    assert k == _key(builtin.copy())
    changed = builtin.copy()
    changed.loc[0, "testScore"] += 1e-9
    assert _key(changed) != k
    assert _key(builtin, SamplerOptions(draws=50, tune=50, chains=2, seed=4)) != k
    assert _key(builtin, formula=parse("testScore ~ bodyLength2 + (1|site)")) != k
    # Columns the formula does not use do not change the key.
    extra = builtin.assign(unused=1.0)
    assert _key(extra) == k


@pytest.fixture(scope="module")
def cached_fit(builtin, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=cache, run=QUIET)
    return cache, first


def test_second_fit_is_reused(builtin, cached_fit):
    cache, first = cached_fit
    assert not first.cached
    again = bayes.fit(FORMULA, builtin, TINY, name="other-name", cache_dir=cache, run=QUIET)
    assert again.cached and again.key == first.key
    post_a, post_b = again.idata["posterior"], first.idata["posterior"]
    assert float(post_a["bodyLength2"].mean()) == float(post_b["bodyLength2"].mean())
    refit = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=cache, run=RunOptions(refit=True, progress=False))
    assert not refit.cached


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cache_is_refitted(builtin, cached_fit, tmp_path, damage):
    cache, first = cached_fit
    src = bayes.find_cached(cache, first.key)
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    broken = broken_dir / src.name
    raw = src.read_bytes()
    broken.write_bytes(raw[: len(raw) // 3] if damage == "truncate" else b"not a netcdf file" * 100)
    assert bayes.load_cached(broken) is None
    fit = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=broken_dir, run=QUIET)
    assert not fit.cached
    assert bayes.load_cached(broken) is not None  # the refit replaced the damaged file


@pytest.mark.parametrize("kwargs", [{"draws": 0}, {"tune": -1}, {"chains": 1.5}, {"seed": -2},
                                    {"target_accept": 1.2}, {"sampler": "stan"}, {"engine": "x"}])
def test_bad_options(kwargs):
    with pytest.raises(OptionsError):
        SamplerOptions(**kwargs)


def test_marginal_file_without_the_engine_draws_is_refitted(cached_fit, tmp_path):
    _, first = cached_fit
    tree = first.idata.copy()
    del tree[marginal.ENGINE_GROUP]
    path = tmp_path / "no-engine.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    assert bayes.load_cached(path) is not None
    assert bayes.load_cached(path, "marginal") is None  # its log-likelihood could not be recomputed exactly


def test_identical_posteriors_are_stored_once(builtin, tmp_path):
    a = bayes.fit(FORMULA, builtin, TINY, name="mixed.lmer2", cache_dir=tmp_path, run=QUIET)
    b = bayes.fit(FORMULA, builtin, TINY, name="full.lmer", cache_dir=tmp_path, run=QUIET)
    assert not a.cached and b.cached
    files = list(tmp_path.glob("*.nc"))
    assert len(files) == 1
    assert json.loads((tmp_path / bayes.INDEX).read_text()) == {"mixed.lmer2": files[0].name,
                                                                "full.lmer": files[0].name}


@pytest.mark.parametrize("engine", ["marginal", "bambi"])
def test_saved_posterior_has_no_log_likelihood_and_gives_the_same_loo(builtin, tmp_path, engine):
    options = replace(TINY, engine=engine)
    fresh = bayes.fit(FORMULA, builtin, options, cache_dir=tmp_path, run=QUIET)
    again = bayes.fit(FORMULA, builtin, options, cache_dir=tmp_path, run=QUIET)
    assert not fresh.cached and again.cached
    assert "log_likelihood" not in fresh.idata.children
    saved = xr.open_datatree(bayes.find_cached(tmp_path, fresh.key))
    assert "log_likelihood" not in saved.children and saved["posterior"]["bodyLength2"].dtype == np.float64
    saved.close()
    a, b = compare.loo(fresh), compare.loo(again)
    np.testing.assert_array_equal(a.elpd_i.values, b.elpd_i.values)
    np.testing.assert_array_equal(a.pareto_k.values, b.pareto_k.values)
    assert (a.elpd, a.se, a.p) == (b.elpd, b.se, b.p)


@pytest.mark.parametrize(("engine", "rows"), [("marginal", 7), ("bambi", 200)])  # Bambi compiles once a chunk
def test_chunked_loo_is_arviz_loo_of_the_samplers_log_likelihood(builtin, engine, rows, monkeypatch):
    """Recomputed a few rows at a time, LOO is bit for bit ArviZ's LOO of the log-likelihood the sampler computed."""
    import arviz as az

    data = bayes.model_data(FORMULA, builtin)
    model = bayes.build_model(FORMULA, data)
    options = replace(TINY, engine=engine)
    if engine == "marginal":
        tree = marginal.sample(model, model_frame(FORMULA, data), options, progress=False, log_likelihood=True)
    else:
        tree = bayes.sample(model, options, progress=False, log_likelihood=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = az.loo(tree, pointwise=True)
    without = tree.copy()
    del without["log_likelihood"]
    fit = bayes.BayesFit("m", FORMULA, data, without, options, bayes.prior_table(model), engine, 0.0, False, "",
                         model=model)
    asked = []
    recompute = bayes.log_likelihood_blocks

    def spy(f, blocks):
        asked.extend(blocks := list(blocks))
        return recompute(f, blocks)

    monkeypatch.setattr(bayes, "log_likelihood_blocks", spy)
    draws = options.chains * options.draws
    ours = compare.loo(fit, chunk_bytes=rows * draws * 8)
    assert max(r.stop - r.start for r in asked) == rows and len(asked) == -(-len(data) // rows)
    np.testing.assert_array_equal(ours.elpd_i.values, theirs.elpd_i.values)
    np.testing.assert_array_equal(ours.pareto_k.values, theirs.pareto_k.values)
    assert (ours.elpd, ours.se, ours.p, ours.good_k) == (theirs.elpd, theirs.se, theirs.p, theirs.good_k)
