"""Data sets users bring after the tutorial, through the CLI as they would meet them (issue 9)."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm.cli import main

SMALL = ["--draws", "150", "--tune", "200", "--chains", "2", "--no-progress"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    rng = np.random.default_rng(5)
    n = 240
    g = np.repeat(np.arange(1, 25), 10)
    x = rng.normal(size=n)
    df = pd.DataFrame({"g": g, "x": x, "x2": 2 * x + 1, "z": rng.uniform(1, 3, n), "x val": rng.normal(size=n),
                       "period": rng.integers(1, 5, n)})
    df["y"] = 1 + 0.5 * x + rng.normal(size=25)[g] + rng.normal(size=n)
    path = tmp_path_factory.mktemp("data") / "real.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def singular_csv(tmp_path_factory):
    """A crossed factor h with no variance: its REML sd is 0 (checked in the test)."""
    rng = np.random.default_rng(8)
    n = 300
    g, h = np.repeat(np.arange(1, 31), 10), np.tile(np.arange(1, 11), 30)
    x = rng.normal(size=n)
    df = pd.DataFrame({"g": g, "h": h, "x": x})
    df["y"] = 1 + 0.5 * x + rng.normal(size=31)[g] + rng.normal(size=n)
    path = tmp_path_factory.mktemp("data") / "singular.csv"
    df.to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def side(out):
    return pd.read_csv(out / "sidebyside.csv", keep_default_na=False, na_values=[""])


def test_r_idioms_and_offset_with_a_report(csv, tmp_path, capsys):
    out = tmp_path / "r"
    formula = "log(y + 10) ~ log(z) + factor(period) + I(x^2) + `x val` + offset(z) + (1|g)"
    code, printed, err = run(["fit", str(csv), formula, "--out", str(out), *SMALL], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    for term in ("log(z)", "factor(period)2", "factor(period)4", "I(x^2)", "x val"):
        assert term in printed
    s = side(out)
    fixed = s[s["effect"] == "fixed"]
    assert set(fixed["term"]) == {"(Intercept)", "log(z)", "factor(period)2", "factor(period)3", "factor(period)4",
                                  "I(x^2)", "x val"}
    assert fixed["lme4_estimate"].notna().all()
    assert (out / "report.html").is_file() and "offset" not in " ".join(fixed["term"])
    assert "marginal engine" in err  # a Gaussian offset is y minus the offset: the fast engine applies


def test_poly_terms_named_as_r(csv, capsys):
    code, printed, err = run(["fit", str(csv), "y ~ poly(x, 2) + (1|g)", *SMALL], capsys)
    assert code == 0, err
    assert "poly(x, 2)1" in printed and "poly(x, 2)2" in printed and "poly(x, 2)0" not in printed


def test_collinear_column_dropped_before_fitting(csv, tmp_path, capsys):
    out = tmp_path / "c"
    code, printed, err = run(["fit", str(csv), "y ~ x + x2 + (1|g)", "--out", str(out), *SMALL], capsys)
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:") and "rank deficient" in ln]
    assert len(warn) == 1 and "x2" in warn[0]
    assert not [ln for ln in printed.splitlines()[1:] if ln.split()[:2] == ["fixed", "x2"]]
    tidy = pd.read_csv(out / "tidy.csv", keep_default_na=False, na_values=[""])
    assert "x2" not in set(tidy["term"]) and {"bayes", "reml", "ml"} <= set(tidy["method"])


def test_singular_fit_is_said(singular_csv, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run(["fit", str(singular_csv), "y ~ x + (1|g) + (1|h)", "--out", str(out), *SMALL], capsys)
    assert code == 0, err
    assert any(ln.startswith("warning:") and "boundary (singular) fit" in ln and "(1|h)" in ln
               for ln in err.splitlines()), err
    s = side(out)
    h = s[(s["group"] == "h") & (s["term"] == "sd__(Intercept)")].iloc[0]
    assert h["lme4_estimate"] < 1e-3
    assert "singular" in h["agreement"] and "outside the posterior interval" not in h["agreement"]
    assert "boundary (singular) fit" in (out / "report.md").read_text()


def test_log_of_nonpositive_is_one_line(csv, capsys):
    code, _, err = run(["fit", str(csv), "log(x) ~ z + (1|g)", *SMALL], capsys)
    assert code == 2 and "Traceback" not in err
    assert next(ln for ln in err.splitlines() if ln.startswith("error:")).count("not finite") == 1


def test_cbind_response_without_family_names_the_flag(csv, capsys):
    code, _, err = run(["fit", str(csv), "cbind(period, z) ~ x + (1|g)", *SMALL], capsys)
    assert code == 2 and "is a binomial response" in err and "--family binomial" in err
    assert len(err.strip().splitlines()) == 1
