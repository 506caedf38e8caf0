"""Predictions for new rows: existing, new and population groups; credible and prediction intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslmm.cli import main
from bayeslmm.engines import bayes
from bayeslmm.errors import OptionsError
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import predict as pr
from bayeslmm.summary.tables import fixed_draws
from conftest import BEYOND, beyond

NEW = pd.DataFrame({"day": [0, 5, 5], "subject": ["s01", "s01", "zz"]})


@pytest.fixture(scope="module")
def fit():
    _, df = beyond("slopes_correlated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bayes.fit(parse("reaction ~ day + (day|subject)"), df, SamplerOptions(draws=300, tune=300, chains=2,
                                                                                       seed=1),
                         run=RunOptions(progress=False))


def test_population_prediction_is_the_fixed_part(fit):
    p = fit.predict(NEW, re_form="population")
    beta0, beta1 = fixed_draws(fit, "(Intercept)"), fixed_draws(fit, "day")
    # 2000 evenly spaced draws of 600: all of them, so the mean is exact
    np.testing.assert_allclose(p["estimate"], [beta0.mean(), (beta0 + 5 * beta1).mean(), (beta0 + 5 * beta1).mean()],
                               rtol=1e-12)


def test_existing_groups_are_lme4s_predict(fit):
    p = fit.predict(NEW.iloc[:2])
    rows = fit.data.reset_index(drop=True)
    at = rows[(rows["subject"] == "s01") & rows["day"].isin([0, 5])].sort_values("day").index
    np.testing.assert_allclose(p["estimate"], pr.fitted(fit)[at], rtol=1e-12)  # the fitted rows' means
    assert (p["pred_low"] < p["conf_low"]).all() and (p["pred_high"] > p["conf_high"]).all()


def test_a_new_group_carries_the_group_variance(fit):
    """A new subject's mean is uncertain by the subjects' sd (about 30 at day 0) on top of the fixed
    part's: its credible interval is wider than the population's and the seen subject's."""
    new, pop = fit.predict(NEW, re_form="new"), fit.predict(NEW, re_form="population")
    width = lambda t: (t["conf_high"] - t["conf_low"]).to_numpy()  # noqa: E731
    assert width(new)[2] > 3 * width(pop)[2] and width(new)[2] > 3 * width(new)[1]
    np.testing.assert_allclose(new["estimate"][:2], fit.predict(NEW.iloc[:2])["estimate"], rtol=1e-12)


def test_unseen_levels_and_missing_columns_are_one_line_errors(fit):
    with pytest.raises(OptionsError, match="level\\(s\\) zz of 'subject' were not in the fitted data; predict with "
                                           "re_form='new'"):
        fit.predict(NEW)
    with pytest.raises(OptionsError, match="new data lacks column\\(s\\) day"):
        fit.predict(NEW[["subject"]])
    with pytest.raises(OptionsError, match="re_form must be one of existing, new, population"):
        fit.predict(NEW, re_form="all")


def test_repr_and_summary_are_short_and_lme4_like(fit):
    assert repr(fit).startswith("<BayesFit fit: reaction ~ day + (day|subject) (gaussian); marginal engine")
    text = repr(fit.summary())
    assert "Random effects" in text and "Fixed effects:" in text and "Number of obs: 400, groups:  subject, 40" in text
    assert len(text.splitlines()) < 25


def test_cli_predicts_a_csv_of_new_rows(tmp_path, capsys):
    NEW.to_csv(tmp_path / "new.csv", index=False)
    code = main(["fit", str(BEYOND / "slopes.csv"), "reaction ~ day + (day|subject)", "--newdata",
                 str(tmp_path / "new.csv"), "--re-form", "new", "--draws", "100", "--tune", "150", "--chains", "2",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "predictions (new groups" in out and "zz" in out
    pd.DataFrame({"subject": ["s01"]}).to_csv(tmp_path / "bad.csv", index=False)
    code = main(["fit", str(BEYOND / "slopes.csv"), "reaction ~ day + (day|subject)", "--newdata",
                 str(tmp_path / "bad.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lacks column(s) day" in err[0]
