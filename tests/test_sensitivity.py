"""Power-scaling sensitivity: which parameters are prior-sensitive, in the tables, the report and --strict-prior.

The acceptance test of issue 13 (``slow``: default-size seeded fits): on the dragons study, the sd of
``site`` in ``mixed.WRONG`` (3 levels) is prior-sensitive and the fixed effect of ``mixed.lmer2`` is
not, on the built-in simulated data and on the tutorial's data. Measured margins (4 chains x 1000
draws, seeds 1-6 on the built-in data): the site sd's prior sensitivity 0.064-0.133, the body-length
effect's 0.001-0.002, against the threshold 0.05; the fits are seeded, so the outcome is fixed.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bayeslmm.cli import main
from bayeslmm.engines import bayes
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import sensitivity
from bayeslmm.summary.sensitivity import CONFLICT, THRESHOLD, WEAK


def _model(study, name):
    return next(m for m in study.models if m.name == name)


def _row(table: pd.DataFrame, group: str, term: str) -> pd.Series:
    return table[(table["group"] == group) & (table["term"] == term)].iloc[0]


def _acceptance(study, df, fits=None):
    fits = fits or {}
    tables = {}
    for name in ("mixed.WRONG", "mixed.lmer2"):
        fit = fits.get(name) or bayes.fit(_model(study, name).formula, df, SamplerOptions(seed=3),
                                          run=RunOptions(progress=False))
        tables[name] = sensitivity.power_scaling(fit)
    site = _row(tables["mixed.WRONG"], "site", "sd__(Intercept)")
    assert site["prior_sensitivity"] >= THRESHOLD and site["diagnosis"] in (CONFLICT, WEAK)
    effect = _row(tables["mixed.lmer2"], "", "bodyLength2")
    assert effect["prior_sensitivity"] < THRESHOLD and effect["diagnosis"] == ""
    return tables


@pytest.mark.slow
def test_site_sd_of_the_wrong_model_is_prior_sensitive_and_the_effect_is_not(study, builtin):
    tables = _acceptance(study, builtin)
    lines = sensitivity.findings(tables["mixed.WRONG"], {"site": 3, "mountainRange": 8})
    assert any(line.startswith("site: 3 levels; its sd is prior-sensitive") for line in lines)


@pytest.mark.slow
def test_on_the_tutorials_data(study, real_fits):
    _acceptance(study, None, real_fits)


def test_findings_say_why():
    table = pd.DataFrame([
        ("fixed", "", "(Intercept)", 0.01, 0.2, ""),
        ("fixed", "", "x", 0.09, 0.01, WEAK),
        ("ran_pars", "site", "sd__(Intercept)", 0.08, 0.07, CONFLICT),
        ("ran_pars", "range", "sd__x", 0.06, 0.01, WEAK),
        ("ran_pars", "range", "cor__(Intercept).x", 0.07, 0.02, WEAK),
        ("ran_pars", "Residual", "sd__Observation", 0.049, 0.3, ""),
    ], columns=sensitivity.COLUMNS)  # fmt: skip
    lines = sensitivity.findings(table, {"site": 3, "range": 8})
    assert len(lines) == 4  # 0.049 is not sensitive
    assert lines[0].startswith("x is prior-sensitive (0.09 to the prior, 0.01 to the likelihood; priorsense's "
                               "'strong prior / weak likelihood')")
    assert lines[1] == ("site: 3 levels; its sd is prior-sensitive (0.08 to the prior, 0.07 to the likelihood; "
                        "priorsense's 'prior-data conflict': the prior and the likelihood pull it different ways): "
                        "the data cannot pin it down (fewer than 5 levels: consider site a fixed effect)")
    assert lines[2].startswith("range: 8 levels; the sd of its x effects is prior-sensitive")
    assert not lines[2].endswith("fixed effect)")
    assert lines[3].startswith("range: 8 levels; the correlation (Intercept).x is prior-sensitive")


def _with_table(fit, rows):
    """The fit with its power-scaling table set (it is kept per fit, so later calls read it)."""
    fit._summaries[("power_scaling",)] = pd.DataFrame(rows, columns=sensitivity.COLUMNS)
    return fit


def test_strict_prior_fails_on_a_conflict_only(builtin, monkeypatch, capsys, tmp_path):
    """``--strict-prior`` exits 3 after the run when a parameter is in prior-data conflict, and 0 otherwise."""
    verdict = {}

    def fake(fit):
        return pd.DataFrame([("ran_pars", "mountainRange", "sd__(Intercept)", 0.09, 0.08, verdict["d"])],
                            columns=sensitivity.COLUMNS)

    monkeypatch.setattr(sensitivity, "power_scaling", fake)
    csv = tmp_path / "d.csv"
    builtin.to_csv(csv, index=False)
    argv = ["fit", str(csv), "testScore ~ bodyLength2 + (1|mountainRange)", "--draws", "30", "--tune", "60",
            "--chains", "1", "--no-progress", "--strict-prior"]
    verdict["d"] = CONFLICT
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: prior-data conflict (--strict-prior): sd of mountainRange (Intercept): "
                          "prior-data conflict (power-scaling sensitivity to the prior 0.090")
    verdict["d"] = WEAK
    assert main(argv) == 0
    assert main(argv[:-1]) == 0  # without the flag, never


def test_report_shows_the_sensitivity_column_and_section(study_run):
    side = pd.read_csv(study_run.out / "sidebyside.csv", keep_default_na=False, na_values=[""])
    assert {"prior_sensitivity", "likelihood_sensitivity", "sensitivity"} <= set(side.columns)
    core = side[side["post_mean"].notna()]
    assert core["prior_sensitivity"].notna().all() and core["likelihood_sensitivity"].notna().all()
    assert set(core["sensitivity"].fillna("")) <= {"", CONFLICT, WEAK}  # none: an empty cell
    table = (study_run.out / "tables" / "mixed.WRONG.txt").read_text()
    assert "sensitivity: prior / likelihood" in table
    report = (study_run.out / "report.md").read_text()
    section = report.split("## Prior sensitivity", 1)[1].split("\n## ", 1)[0]
    assert "Power-scaling" in section
    flagged = side[side["prior_sensitivity"] >= THRESHOLD]
    for _, r in flagged.iterrows():  # every flagged parameter's model, and group, is named in the section
        assert f"{r['model']}" in section
        if r["effect"] == "ran_pars" and r["group"] != "Residual":
            assert f"{r['group']}: " in section
    if flagged.empty:
        assert "No fixed effect, sd or correlation of any model is prior-sensitive" in section
