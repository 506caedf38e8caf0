"""glmer's nAGQ chosen in a study file (``nagq``) and on the command line (``--nagq``).

The study key and the flag reach lme4's side: compared with lme4's own ``binomial_trials_agq`` and
``binomial_trials`` fits in tests/data/beyond/lme4_reference.json (R 4.x, lme4 1.1; provenance in the
README there), through the runner's data and the report's frequentist fits. Every bad value is one
line naming the problem. The end-to-end run (``bayeslmm fit --nagq 25 --out``) is marked slow.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bayeslmm import cli
from bayeslmm.errors import StudyError
from bayeslmm.model.study import from_dict
from bayeslmm.runner import prepared_data
from bayeslmm.store import Store
from bayeslmm.summary import analysis
from conftest import BEYOND, ROOT

ENTRIES = {e["name"]: e for e in json.loads((BEYOND / "lme4_reference.json").read_text())}
BINOMIAL = "cbind(sick, size - sick) ~ season + (1|farm)"
#: test_glmer.py's tolerance on lme4's estimates, sds and SEs (relative; its table says what it reaches).
FIT_REL = 1e-4


def _study(models: list[dict]):
    return from_dict({"data": {"source": str(BEYOND / "binomial.csv")}, "model": models})


# ---------------------------------------------------------------------------------------
# nAGQ in a study file and on the command line
# ---------------------------------------------------------------------------------------


def test_the_study_key_reaches_lme4s_agq_fit():
    """``nagq = 25`` in a study file: lme4's side is glmer's 25-node AGQ fit (R's binomial_trials_agq), the
    default stays Laplace (R's binomial_trials), through the runner's data and the report's frequentist fits."""
    study = _study([{"name": "agq", "formula": BINOMIAL, "family": "binomial", "nagq": 25},
                    {"name": "laplace", "formula": BINOMIAL, "family": "binomial"}])
    agq, laplace = study.models
    assert (agq.nagq, laplace.nagq) == (25, 1)
    assert [analysis.lme4_method(s) for s in study.models] == ["agq", "laplace"]
    assert [analysis.lme4_label(s) for s in study.models] == ["AGQ, nAGQ = 25", "Laplace"]
    df = prepared_data(study)
    stand_ins = {s.name: type("Fit", (), {"formula": s.formula, "data": df, "store": Store()})() for s in study.models}
    freq = analysis.frequentist_fits(stand_ins, {s.name: s.nagq for s in study.models})
    assert set(freq) == {("agq", "agq"), ("laplace", "laplace")}
    for (name, _), entry in ((("agq", "agq"), ENTRIES["binomial_trials_agq"]),
                             (("laplace", "laplace"), ENTRIES["binomial_trials"])):
        fit = freq[(name, name)]
        assert fit.nagq == (25 if name == "agq" else 1) and fit.method == name
        assert fit.fixef.to_dict() == pytest.approx(entry["fixef"], rel=FIT_REL, abs=0)
        assert fit.se.to_dict() == pytest.approx(entry["se"], rel=FIT_REL, abs=0)
        assert fit.varcorr["sd"].iloc[0] == pytest.approx(entry["varcorr"][0]["sdcor"], rel=FIT_REL, abs=0)
    # the two fits differ by more than the tolerance: the key is what made the difference
    assert abs(freq[("agq", "agq")].varcorr["sd"].iloc[0] / freq[("laplace", "laplace")].varcorr["sd"].iloc[0]
               - 1) > 10 * FIT_REL
    # the variance partition and the likelihood-ratio test read the AGQ fit of that model
    assert analysis.ml_fit(freq, "agq") is freq[("agq", "agq")]


@pytest.mark.parametrize(("model", "message"), [
    ({"nagq": 0}, "nAGQ must be a whole number from 1 (Laplace) to 100, not 0"),
    ({"nagq": 101}, "not 101"),
    ({"nagq": 2.5}, "not 2.5"),
    ({"nagq": "25"}, "not '25'"),
    ({"nagq": True}, "not True"),
    ({"nagq": 25, "family": "gaussian", "formula": "sick ~ season + (1|farm)"}, "is Gaussian"),
    ({"nagq": 1, "family": "gaussian", "formula": "sick ~ season + (1|farm)"}, "is Gaussian"),
    ({"nagq": 25, "formula": "cbind(sick, size - sick) ~ season"}, "has no random terms"),
    ({"nagq": 25, "formula": "cbind(sick, size - sick) ~ season + (1|farm) + (1|season)"},
     "needs a single random term with one coefficient"),
    ({"nagq": 25, "formula": "cbind(sick, size - sick) ~ season + (1|farm/season)"}, "has (1|farm) + (1|farm:season)"),
    ({"nagq": 25, "formula": "cbind(sick, size - sick) ~ season + (1 + size|farm)"}, "use nAGQ = 1 (Laplace)"),
])
def test_bad_nagq_in_a_study_is_one_line_naming_the_model(model, message):
    spec = {"name": "m", "formula": BINOMIAL, "family": "binomial", **model}
    with pytest.raises(StudyError) as err:
        _study([spec])
    text = str(err.value)
    assert message in text and "model 'm'" in text and "\n" not in text


def test_more_nodes_only_for_the_families_checked_against_lme4():
    """A family beyond binomial and Poisson (a stand-in formula: this checkout fits no other) may say nAGQ = 1 only."""
    from dataclasses import replace

    from bayeslmm.errors import OptionsError
    from bayeslmm.model.formula import parse
    from bayeslmm.model.options import check_nagq

    other = replace(parse("y ~ x + (1|g)", "poisson"), family="negbinomial")
    assert check_nagq(1, other) == 1
    with pytest.raises(OptionsError, match="fitted here for binomial and poisson mixed models, not negbinomial"):
        check_nagq(25, other)


def test_nagq_one_is_laplace_wherever_glmer_runs():
    study = _study([{"name": "m", "formula": "cbind(sick, size - sick) ~ season + (1|farm) + (1|season)",
                     "family": "binomial", "nagq": 1}])
    assert study.models[0].nagq == 1 and analysis.lme4_method(study.models[0]) == "laplace"


@pytest.mark.parametrize(("formula", "args", "message"), [
    (BINOMIAL, ["--nagq", "0"], "argument --nagq: must be a whole number from 1 (Laplace) to 100, not '0'"),
    (BINOMIAL, ["--nagq", "x"], "not 'x'"),
    ("sick ~ season + (1|farm)", ["--nagq", "25"], "is Gaussian"),
    ("cbind(sick, size - sick) ~ season + (1|farm) + (1|season)", ["--nagq", "25", "--family", "binomial"],
     "needs a single random term"),
])
def test_the_cli_flag_refuses_bad_values_in_one_line(formula, args, message, capsys):
    code = cli.main(["fit", str(BEYOND / "binomial.csv"), formula, *args, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_factor_slope_is_refused_before_sampling(capsys):
    """(0 + season|farm) is one term but four columns: only the data shows it; refused before any sampling."""
    code = cli.main(["fit", str(BEYOND / "binomial.csv"), "cbind(sick, size - sick) ~ 1 + (0 + season|farm)",
                     "--family", "binomial", "--nagq", "25", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "single, scalar random-effects term" in captured.err
    assert "[1/1]" not in captured.err  # no model started sampling
    assert len([ln for ln in captured.err.splitlines() if ln.startswith("error:")]) == 1


@pytest.mark.slow
def test_the_cli_flag_reaches_the_report(tmp_path, capsys):
    """``bayeslmm fit --nagq 25 --out``: lme4's side of the report is R's 25-node AGQ fit, labelled so, with the
    logLik caveat; without --out the flag is said to do nothing."""
    small = ["--draws", "200", "--tune", "200", "--chains", "2", "--no-progress"]
    out = tmp_path / "agq"
    code = cli.main(["fit", str(BEYOND / "binomial.csv"), BINOMIAL, "--family", "binomial", "--nagq", "25",
                     "--out", str(out), *small])
    assert code == 0
    side = pd.read_csv(out / "sidebyside.csv")
    fixed = side[side["effect"] == "fixed"].set_index("term")
    assert (side["lme4_method"] == "agq").all()
    entry = ENTRIES["binomial_trials_agq"]
    assert fixed["lme4_estimate"].to_dict() == pytest.approx(entry["fixef"], rel=FIT_REL, abs=0)
    report = (out / "report.md").read_text()
    assert "lme4 (AGQ, nAGQ = 25) beside the posterior" in report
    assert "lme4's side is glmer with nAGQ = 25" in report and "saturated model's log-likelihood" in report
    assert "(lme4: AGQ, nAGQ = 25)" in (out / "tables" / "model.txt").read_text().splitlines()[0]
    capsys.readouterr()
    assert cli.main(["fit", str(BEYOND / "binomial.csv"), BINOMIAL, "--family", "binomial", "--nagq", "25",
                     *small]) == 0
    assert "computes only for a report: add --out" in capsys.readouterr().err


def test_the_glmm_studys_commented_nagq_example_holds():
    """models/dragons_glmm.toml shows `nagq` in a commented model: uncommented it is valid, and the numbers the
    comment quotes (lme4's sd of the sites, the SE of bodyLength2, Laplace against 25 nodes) are what comes out."""
    import tomllib

    from bayeslmm.lme4 import frequentist
    from bayeslmm.model.formula import model_frame

    path = ROOT / "models" / "dragons_glmm.toml"
    lines = path.read_text().splitlines()
    start = lines.index("# [[model]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    raw = tomllib.loads(path.read_text() + "\n" + "\n".join(block) + "\n")
    study = from_dict(raw, path)
    spec = study.model("pass.sites.agq")
    assert spec.nagq == 25 and analysis.lme4_label(spec) == "AGQ, nAGQ = 25"
    frame = model_frame(spec.formula, prepared_data(study))
    laplace, agq = frequentist.fit(frame), frequentist.fit(frame, "agq", 25)
    comment = " ".join(lines[:start])
    for fit in (laplace, agq):
        assert f"{fit.varcorr['sd'].iloc[0]:.3f}" in comment and f"{fit.se['bodyLength2']:.3f}" in comment
