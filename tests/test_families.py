"""Families beyond the Gaussian: how responses are read, what Bambi is given, and the latent-scale shares.

Data: tests/data/beyond/{binomial,bernoulli,counts}.csv (provenance in the README there), read as R
reads them (conftest.beyond).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayeslmm.engines import bayes
from bayeslmm.errors import DataError, FormulaError, OptionsError
from bayeslmm.labels import TRIALS_COLUMN
from bayeslmm.model import checks
from bayeslmm.model.formula import binary_response, model_frame, parse, to_bambi
from bayeslmm.model.options import SamplerOptions
from bayeslmm.results import latent_residual_variance
from bayeslmm.summary.tables import variance_partition_draws
from conftest import beyond

BINOMIAL = "cbind(sick, size - sick) ~ season + (1|farm)"
BERNOULLI = "passed ~ hours + urban + (1|school)"
POISSON = "birds ~ temp + offset(log(hours)) + (1|site)"


def test_cbind_gives_successes_trials_and_the_observed_proportion():
    _, df = beyond("binomial_trials")
    f = parse(BINOMIAL, "binomial")
    frame = model_frame(f, df)
    np.testing.assert_array_equal(frame.y, df["sick"])
    np.testing.assert_array_equal(frame.trials, df["size"])
    assert frame.family == "binomial" and frame.x_names == ("(Intercept)", "seasonspring", "seasonsummer",
                                                            "seasonwinter")  # R's order: autumn first
    data = bayes.model_data(f, df)
    np.testing.assert_allclose(data[f.response], df["sick"] / df["size"])
    np.testing.assert_array_equal(data[TRIALS_COLUMN], df["size"])
    assert to_bambi(f) == "p(sick, `(trials)`) ~ season + (1|farm)" and bayes.bambi_family(f) == "binomial"


def test_yes_no_is_zero_one_with_the_first_level_a_failure():
    _, df = beyond("bernoulli_yes_no")
    f = parse(BERNOULLI, "binomial")
    frame = model_frame(f, df)
    np.testing.assert_array_equal(frame.y, (df["passed"] == "yes").astype(float))
    assert (frame.trials == 1).all() and bayes.bambi_family(f) == "bernoulli"
    assert bayes.model_data(f, df)["passed"].tolist() == frame.y.tolist()
    y, levels = binary_response(pd.Series(["b", "a", "b"]))
    assert levels == ("a", "b") and y.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match=r"values other than 0 and 1.*cbind"):
        binary_response(pd.Series([0, 1, 2]), "y")
    with pytest.raises(DataError, match="3 levels"):
        binary_response(pd.Series(["a", "b", "c"]), "y")


def test_poisson_keeps_counts_and_puts_the_offset_on_the_log_scale():
    _, df = beyond("poisson_offset")
    frame = model_frame(parse(POISSON, "poisson"), df)
    np.testing.assert_array_equal(frame.y, df["birds"])
    np.testing.assert_allclose(frame.offset, np.log(df["hours"]))
    assert frame.trials is None


def test_family_is_checked_and_named():
    with pytest.raises(OptionsError, match="--family must be one of gaussian, binomial, poisson"):
        parse("y ~ x", "gamma")
    with pytest.raises(FormulaError, match="--family binomial"):
        parse(BINOMIAL)


def test_responses_a_family_cannot_describe_are_refused():
    _, counts = beyond("poisson_offset")
    with pytest.raises(DataError, match=r"counts .* for --family poisson"):
        checks.validate(parse("temp ~ hours + (1|site)", "poisson"), counts.assign(temp=counts["temp"] - 30))
    _, binom = beyond("binomial_trials")
    with pytest.raises(DataError, match=r"failures of .* whole numbers"):
        checks.validate(parse(BINOMIAL, "binomial"), binom.assign(size=binom["size"] - 100))


def test_the_family_enters_the_cache_key():
    _, df = beyond("poisson_offset")
    f = "birds ~ temp + (1|site)"
    gauss = bayes.prepare(parse(f), df, SamplerOptions())
    pois = bayes.prepare(parse(f, "poisson"), df, SamplerOptions())
    assert gauss.key != pois.key and pois.model.family == "poisson"
    assert any("--family poisson" in n for n in gauss.notes) and not any("counts" in n for n in pois.notes)


def _fit_with(family: str, sd: float, data: pd.DataFrame, response: str):
    """A stand-in fit: a posterior with one group sd (constant draws) and the formula's family."""
    f = parse(f"{response} ~ 1 + (1|g)", family)
    post = xr.Dataset({"1|g_sigma": (("chain", "draw"), np.full((1, 4), sd))})
    return SimpleNamespace(formula=f, data=data, idata={"posterior": post})


def test_glmm_shares_are_on_the_latent_scale():
    """Nakagawa, Johnson & Schielzeth (2017): pi^2/3 for the logit link, ln(1 + 1/lambda) for the log link."""
    assert latent_residual_variance("binomial") == pytest.approx(np.pi**2 / 3)
    assert latent_residual_variance("poisson", 4.0) == pytest.approx(np.log(1.25))
    share = variance_partition_draws(_fit_with("binomial", 0.8, pd.DataFrame({"y": [0, 1]}), "y"))
    assert share["g"] == pytest.approx(np.full(4, 0.64 / (0.64 + np.pi**2 / 3)))
    share = variance_partition_draws(_fit_with("poisson", 0.5, pd.DataFrame({"c": [1, 3]}), "c"))
    assert share["g"] == pytest.approx(np.full(4, 0.25 / (0.25 + np.log(1.5))))
    assert list(share) == ["g", "Residual"]
