"""The content-hash cache of posteriors: hits, misses, and corrupt files."""

import pytest

from bayeslmm import bayes
from bayeslmm.bayes import SamplerOptions
from bayeslmm.errors import OptionsError
from bayeslmm.formula import parse

FORMULA = parse("testScore ~ bodyLength2 + (1|mountainRange)")
TINY = SamplerOptions(draws=50, tune=50, chains=2, seed=3)


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
    first = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=cache, progress=False)
    return cache, first


def test_second_fit_is_reused(builtin, cached_fit):
    cache, first = cached_fit
    assert not first.cached
    again = bayes.fit(FORMULA, builtin, TINY, name="other-name", cache_dir=cache, progress=False)
    assert again.cached and again.key == first.key
    post_a, post_b = again.idata["posterior"], first.idata["posterior"]
    assert float(post_a["bodyLength2"].mean()) == float(post_b["bodyLength2"].mean())
    refit = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=cache, refit=True, progress=False)
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
    fit = bayes.fit(FORMULA, builtin, TINY, name="m", cache_dir=broken_dir, progress=False)
    assert not fit.cached
    assert bayes.load_cached(broken) is not None  # the refit replaced the damaged file


@pytest.mark.parametrize("kwargs", [{"draws": 0}, {"tune": -1}, {"chains": 1.5}, {"seed": -2},
                                    {"target_accept": 1.2}, {"sampler": "stan"}, {"engine": "x"}])
def test_bad_options(kwargs):
    with pytest.raises(OptionsError):
        SamplerOptions(**kwargs)


@pytest.mark.parametrize("engine", ["marginal", "bambi"])
def test_without_log_likelihood_nothing_is_cached(builtin, tmp_path, engine):
    options = SamplerOptions(draws=50, tune=50, chains=2, seed=3, engine=engine)
    fit = bayes.fit(FORMULA, builtin, options, cache_dir=tmp_path, progress=False, log_likelihood=False)
    assert "log_likelihood" not in fit.idata.children
    assert "posterior" in fit.idata.children and fit.idata["posterior"]["bodyLength2"].size == 100
    assert not list(tmp_path.glob("*.nc"))  # a cached posterior must serve LOO too
