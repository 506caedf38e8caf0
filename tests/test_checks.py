"""Data checks that teach: reused labels vs crossed factors, counts and yes/no responses, integer predictors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm.errors import DataError
from bayeslmm.model import checks
from bayeslmm.model.formula import group_codes, parse

ROOT = Path(__file__).resolve().parents[1]
WRONG = "testScore ~ bodyLength2 + (1|mountainRange) + (1|site)"


def _bench():
    """benchmarks/nesting_check.py, whose seeded designs measured the rates in checks.label_reuse."""
    spec = importlib.util.spec_from_file_location("nesting_check", ROOT / "benchmarks" / "nesting_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _warnings(formula: str, df: pd.DataFrame, family: str = "gaussian") -> list[str]:
    return checks.validate(parse(formula, family), df)[1]


def _nesting(notes: list[str]) -> list[str]:
    return [n for n in notes if "(1|" in n]


# --- reused labels vs crossed factors -------------------------------------------------------------

@pytest.fixture(scope="module")
def pastes() -> pd.DataFrame:
    """Pastes-like: 10 batches x 3 casks (a, b, c reused in every batch) x 2 samples, seeded.

    Standard deviations of lme4's nested fit of Pastes (batch 1.29, cask:batch 2.90, residual
    0.82); the cask labels have no effect of their own.
    """
    rng = np.random.default_rng(11)
    batch, cask = np.repeat(np.arange(10), 6), np.tile(np.repeat(np.arange(3), 2), 10)
    strength = 60 + rng.normal(0, 1.29, 10)[batch] + rng.normal(0, 2.90, (10, 3))[batch, cask] + rng.normal(0, 0.82, 60)
    return pd.DataFrame({"strength": strength, "batch": pd.Categorical(np.array(list("ABCDEFGHIJ"))[batch]),
                         "cask": pd.Categorical(np.array(list("abc"))[cask])})


@pytest.mark.parametrize("formula", ["strength ~ 1 + (1|batch) + (1|cask)", "strength ~ 1 + (1|cask) + (1|batch)"])
def test_pastes_gets_only_the_batch_cask_advice(pastes, formula):
    notes = _nesting(_warnings(formula, pastes))
    assert len(notes) == 1, notes
    assert "labels of 'cask' recur within every level of 'batch'" in notes[0]
    assert "(1|batch/cask)" in notes[0] and "(1|cask/batch)" not in notes[0]


def test_nested_pastes_is_left_alone(pastes):
    df = pastes.assign(sample=pastes["batch"].astype(str) + ":" + pastes["cask"].astype(str))
    assert not _nesting(_warnings("strength ~ 1 + (1|batch) + (1|sample)", df))
    assert not _nesting(_warnings("strength ~ 1 + (1|batch/cask)", pastes))
    assert not _nesting(_warnings("strength ~ 1 + (1|batch) + (1|cask) + (1|batch:cask)", pastes))


def test_mixed_wrong_on_the_builtin_data(builtin):
    notes = _nesting(_warnings(WRONG, builtin))
    assert len(notes) == 1 and "(1|mountainRange/site)" in notes[0], notes
    assert not _nesting(_warnings("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)", builtin))


def test_mixed_wrong_on_the_real_data(dragons):
    notes = _nesting(_warnings(WRONG, dragons))
    assert len(notes) == 1 and "(1|mountainRange/site)" in notes[0], notes
    assert not _nesting(_warnings("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)", dragons))


def test_crossed_designs_rarely_alarm():
    # 5 seeded data sets of each of the benchmark's 62 crossed designs (zero, small and large
    # sds, balanced and not, animals nested in the cells); `python benchmarks/nesting_check.py
    # --reps 5` counts 2 false alarms on exactly these, in line with NESTING_ALPHA = 0.01.
    total, n, per = _bench().count_false_alarms(reps=5)
    assert n == 310
    assert total <= 2, {k: v for k, v in per.items() if v[0]}


def test_crossed_factor_with_zero_variance_does_not_alarm():
    # The case of the issue: h truly crossed with g, sd(h) = 0; the old rule compared two noisy
    # variance estimates and fired whenever the interaction's came out larger.
    bench = _bench()
    fired = [bool(checks.nesting_warnings(bench.CROSSED, bench.crossed(np.random.default_rng(s), 8, 3, 20, 1.0, 0.0)))
             for s in range(50)]
    assert sum(fired) <= 1  # 50 draws at a 1% false-alarm rate; these seeds give 1 (the old rule: 25)


def test_cell_tests_match_least_squares_with_dummies():
    # The F statistic from cross-products equals the one from explicit dummy regressions.
    rng = np.random.default_rng(3)
    df = _bench().crossed(rng, 7, 4, 3, 1.0, 0.5, keep=0.7)
    y, x = df["y"].to_numpy(), df["x"].to_numpy()
    _, a = group_codes(df, "g")
    _, b = group_codes(df, "h")
    X = np.column_stack([np.ones(len(y)), x])
    test = checks.cell_tests(y, X, a, b)

    def rss_rank(*blocks):
        design = np.column_stack(blocks)
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((y - design @ beta) ** 2)), int(np.linalg.matrix_rank(design))

    da, db = np.eye(a.max() + 1)[a], np.eye(b.max() + 1)[b]
    cell = np.unique(a * 10 + b, return_inverse=True)[1]
    rss_add, r_add = rss_rank(X, da, db)
    rss_cell, r_cell = rss_rank(X, np.eye(cell.max() + 1)[cell])
    f = ((rss_add - rss_cell) / (r_cell - r_add)) / (rss_cell / (len(y) - r_cell))
    assert (test.df_num, test.df_den) == (r_cell - r_add, len(y) - r_cell)
    assert test.f == pytest.approx(f, rel=1e-8)


def test_labels_already_nested_are_not_questioned():
    # Each cask label lies within one batch: nested in effect, whatever the response does.
    rng = np.random.default_rng(5)
    batch = np.repeat(np.arange(10), 6)
    cask = batch * 3 + np.tile(np.repeat(np.arange(3), 2), 10)
    df = pd.DataFrame({"y": rng.normal(0, 3, 30)[cask] + rng.normal(size=60), "batch": batch.astype(str),
                       "cask": cask.astype(str)})
    assert not _nesting(_warnings("y ~ 1 + (1|batch) + (1|cask)", df))


# --- counts and yes/no responses ----------------------------------------------------------------

@pytest.fixture(scope="module")
def counts() -> pd.DataFrame:
    """25 sites x 12 visits, Poisson counts with a site effect (mean 1.3, a third zeros), and a 0/1 column; seeded."""
    rng = np.random.default_rng(2)
    site = np.repeat(np.arange(25), 12)
    rate = np.exp(np.log(1.2) + rng.normal(0, 0.6, 25)[site])
    return pd.DataFrame({"birds": rng.poisson(rate), "site": site.astype(str), "temp": rng.normal(15, 5, 300),
                         "passed01": (rng.random(300) < 0.4).astype(int)})


def test_counts_are_warned(counts):
    assert 0.15 < (counts["birds"] == 0).mean() < 0.5  # the shape of the column
    notes = _warnings("birds ~ temp + (1|site)", counts)
    hits = [n for n in notes if "looks like counts" in n]
    assert len(hits) == 1 and "glmer" in hits[0] and "--family poisson" in hits[0]
    # with the family given, the response is what it is: no warning
    assert not any("looks like counts" in n for n in _warnings("birds ~ temp + (1|site)", counts, "poisson"))


def test_zero_one_response_is_warned(counts):
    notes = _warnings("passed01 ~ temp + (1|site)", counts)
    hits = [n for n in notes if "takes only the values 0 and 1" in n]
    assert len(hits) == 1 and "--family binomial" in hits[0] and "glmer" in hits[0]
    assert not any("looks like counts" in n for n in notes)
    assert not any("only the values" in n for n in _warnings("passed01 ~ temp + (1|site)", counts, "binomial"))


def test_continuous_scores_are_not_called_counts(builtin):
    assert checks.response_warning(builtin, "testScore") is None
    rounded = builtin.assign(testScore=builtin["testScore"].round().clip(0, 100))  # integers, many distinct values
    assert checks.response_warning(rounded, "testScore") is None


def test_real_scores_are_not_called_counts(dragons):
    assert checks.response_warning(dragons, "testScore") is None


@pytest.mark.parametrize("values", [["yes", "no"], [True, False]])
def test_yes_no_response_is_refused_with_the_reason(counts, values):
    df = counts.assign(passed=np.where(counts["passed01"] == 1, values[0], values[1]))
    with pytest.raises(DataError, match=r"is not numeric.*yes/no outcome: fit it with --family binomial"):
        checks.validate(parse("passed ~ temp + (1|site)"), df)
    rows, _ = checks.validate(parse("passed ~ temp + (1|site)", "binomial"), df)  # with the family: fitted
    assert len(rows) == len(df)


def test_yes_no_response_through_the_cli(counts, tmp_path, capsys):
    from bayeslmm.cli import main

    path = tmp_path / "passed.csv"
    counts.assign(passed=np.where(counts["passed01"] == 1, "yes", "no")).to_csv(path, index=False)
    code = main(["fit", str(path), "passed ~ temp + (1|site)", "--draws", "10", "--tune", "10", "--chains", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "('no', 'yes')" in lines[0] and "--family binomial" in lines[0], err


# --- integer predictors ---------------------------------------------------------------------------

def test_integer_predictor_gets_the_factor_hint(counts):
    df = counts.assign(period=np.tile([1, 2, 3, 4], 75), dose=np.tile([0, 1], 150))
    notes = _warnings("birds ~ period + dose + temp + (1|site)", df)
    hint = [n for n in notes if "factor(" in n]
    assert len(hint) == 1 and "'period' takes only 4 integer values (1, 2, 3, 4)" in hint[0], hint
    assert "factor(period)" in hint[0] and "straight-line trend" in hint[0]
    many = df.assign(period=np.tile(np.arange(1, 11), 30))
    assert not any("factor(" in n for n in _warnings("birds ~ period + (1|site)", many))


# --- correlated terms -----------------------------------------------------------------------------

def _covariance(notes: list[str]) -> list[str]:
    return [n for n in notes if "covariance parameters" in n]


def test_correlated_term_with_too_few_levels_is_warned(builtin):
    """(1 + x|g) has 3 covariance parameters: 8 mountain ranges (< 5 per parameter) draw the advice, in
    lme4's syntax; 24 sites, the same term uncorrelated, or a single coefficient do not."""
    notes = _covariance(_warnings("testScore ~ bodyLength2 + (1 + bodyLength2|mountainRange)", builtin))
    assert len(notes) == 1 and notes[0].startswith("(1 + bodyLength2|mountainRange) has 3 covariance parameters "
                                                   "(2 sds, 1 correlation) for 8 levels of 'mountainRange'")
    assert "consider (1 + bodyLength2||mountainRange) or fewer terms" in notes[0]
    assert checks.LEVELS_PER_COVARIANCE * 3 > 8  # the rule, not the wording, decides
    for quiet in ("testScore ~ bodyLength2 + (1 + bodyLength2|sample)",
                  "testScore ~ bodyLength2 + (bodyLength2||mountainRange)",
                  "testScore ~ bodyLength2 + (0 + bodyLength2|mountainRange)"):
        assert not _covariance(_warnings(quiet, builtin)), quiet
    assert len(set(builtin["sample"])) >= checks.LEVELS_PER_COVARIANCE * 3


def test_three_coefficients_count_six_parameters(three_slopes):
    notes = _covariance(_warnings("y ~ x + z + (1 + x + z|g)", three_slopes))
    assert notes == []  # 30 levels = 5 x 6
    fewer = three_slopes[three_slopes["g"].cat.codes < 29]
    (note,) = _covariance(_warnings("y ~ x + z + (1 + x + z|g)", fewer))
    assert "6 covariance parameters (3 sds, 3 correlations) for 29 levels" in note
    assert "(1 + x + z||g)" in note


def test_slope_constant_within_groups_in_a_correlated_term(builtin):
    df = builtin.assign(rangeLevel=builtin.groupby("mountainRange", observed=True)["bodyLength2"].transform("mean"))
    notes = _warnings("testScore ~ bodyLength2 + (1 + rangeLevel|mountainRange)", df)
    (note,) = [n for n in notes if "does not vary" in n]
    assert "'rangeLevel' does not vary within levels of 'mountainRange'" in note
    assert "(1 + rangeLevel|mountainRange) (and its correlations)" in note


def test_more_random_effects_than_rows_is_refused_as_lme4_does(builtin):
    """lme4's check.nobs.vs.nRE: n <= levels x coefficients of a term stops the fit."""
    two_per_site = builtin.groupby("sample", observed=True).head(2)
    with pytest.raises(DataError, match=r"48 rows for 48 random effects of \(1 \+ bodyLength2\|sample\)"):
        checks.validate(parse("testScore ~ bodyLength2 + (1 + bodyLength2|sample)"), two_per_site)
    three_per_site = builtin.groupby("sample", observed=True).head(3)
    checks.validate(parse("testScore ~ bodyLength2 + (1 + bodyLength2|sample)"), three_per_site)


def test_an_observation_level_effect_is_allowed_in_a_glmm_only(builtin):
    """glmer checks with allow.n = TRUE (n < random effects stops, n == allowed): one effect per row,
    the observation-level effect for overdispersed counts, has no residual to be confused with."""
    olre = "flames ~ bodyLength2 + offset(log(hoursObserved)) + (1|mountainRange) + (1|dragon)"
    checks.validate(parse(olre, "poisson"), builtin)
    with pytest.raises(DataError, match=r"480 rows for 480 random effects of \(1\|dragon\)"):
        checks.validate(parse("testScore ~ bodyLength2 + (1|dragon)"), builtin)
    with pytest.raises(DataError, match=r"480 rows for 960 random effects of \(1 \+ bodyLength2\|dragon\)"):
        checks.validate(parse("flames ~ 1 + (1 + bodyLength2|dragon)", "poisson"), builtin)
