"""The parametric-bootstrap LRT (pbkrtest's PBmodcomp) of nested linear mixed models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeslmm.errors import OptionsError
from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.pbtest import pb_lrt
from bayeslmm.model.formula import model_frame, parse
from bayeslmm.model.options import RunOptions


def _data(site_sd: float, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g, h = np.repeat(np.arange(12), 15), np.repeat(np.arange(36), 5)
    y = 1 + rng.normal(0, 1, 12)[g] + rng.normal(0, site_sd, 36)[h] + rng.normal(0, 1, g.size)
    return pd.DataFrame({"y": y, "g": [f"g{i:02d}" for i in g], "h": [f"h{i:02d}" for i in h]})


def _frames(df):
    return model_frame(parse("y ~ 1 + (1|g)"), df), model_frame(parse("y ~ 1 + (1|g) + (1|h)"), df)


def test_statistic_is_the_lrt_and_a_strong_component_gets_the_smallest_p():
    small, large = _frames(_data(site_sd=1.5))
    fs, fl = frequentist.fit(small, "ml"), frequentist.fit(large, "ml")
    test = pb_lrt(small, large, fs, nsim=40, seed=1)
    assert test.statistic == pytest.approx(2 * (fl.loglik - fs.loglik), rel=1e-6)
    assert test.p_value == 1 / 41 and test.nsim == 40  # no simulated statistic reaches the observed one


def test_at_the_boundary_the_bootstrap_p_is_about_half_the_chi_square_one():
    """A small site sd: the LRT's null distribution is about the 50:50 mixture of chi2(0) and chi2(1)
    (Self & Liang), so PBmodcomp's p is about half the chi-square p. 300 simulations: the Monte Carlo
    sd of the bootstrap p is sqrt(p (1 - p) / 300) ~ 0.017; allow 4 of them (and the mixture is itself
    an approximation at 12 groups)."""
    small, large = _frames(_data(site_sd=0.25))
    fs, fl = frequentist.fit(small, "ml"), frequentist.fit(large, "ml")
    chi2_p = stats.chi2.sf(2 * (fl.loglik - fs.loglik), 1)
    test = pb_lrt(small, large, fs, nsim=300, seed=2)
    mc = np.sqrt(test.p_value * (1 - test.p_value) / 300)
    assert abs(test.p_value - chi2_p / 2) < 4 * mc + 0.02
    assert test.p_value < chi2_p  # the chi-square reference is conservative here


def test_pb_option_is_checked():
    with pytest.raises(OptionsError, match="--pb must be a whole number"):
        RunOptions(pb=-1)
    assert RunOptions(pb=200).pb == 200


def test_cli_takes_pb(capsys):
    from bayeslmm.cli import build_parser, main

    assert build_parser().parse_args(["run", "models/dragons.toml", "--pb", "50"]).pb == 50
    assert main(["run", "models/dragons.toml", "--pb", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pb" in err[0]
