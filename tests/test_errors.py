"""Bad input: one-line errors (exit 2, no traceback), typed API exceptions, warnings that teach."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bayeslmm.cli import main
from bayeslmm.engines import bayes
from bayeslmm.errors import DataError, FormulaError, OptionsError, OutputError, StudyError
from bayeslmm.model import checks, data, study
from bayeslmm.model.formula import parse
from bayeslmm.model.options import SamplerOptions

NO_FIT = ["--draws", "10", "--tune", "10", "--chains", "1", "--no-progress"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory, builtin):
    path = tmp_path_factory.mktemp("data") / "dragons.csv"
    builtin.to_csv(path, index=False)
    return path


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, fragment):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


# --- errors through the CLI -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), (b"", "is empty"), (b"\x00\xff\xfe garbage \x01" * 40, "cannot read")],
)
def test_bad_data_file(tmp_path, capsys, content, fragment):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(*run_cli(["fit", str(path), "y ~ x", *NO_FIT], capsys), fragment)


def test_garbage_rdata(tmp_path, capsys):
    path = tmp_path / "d.RData"
    path.write_bytes(np.random.default_rng(1).bytes(3000))
    assert_one_line_error(*run_cli(["fit", str(path), "y ~ x", *NO_FIT], capsys), "cannot read")


def test_rdata_with_several_frames(tmp_path, capsys, builtin):
    import rdata  # writes .RData files

    path = tmp_path / "two.RData"
    small = builtin.head(20)[["testScore", "bodyLength", "mountainRange", "site"]]  # factors, as R has them
    rdata.write_rda(path, {"first": small, "second": small})
    code, err = run_cli(["fit", str(path), "testScore ~ bodyLength", *NO_FIT], capsys)
    assert_one_line_error(code, err, "several data frames (first, second)")
    assert "--object NAME" in err
    code, err = run_cli(["fit", str(path), "testScore ~ bodyLength", "--object", "third", *NO_FIT], capsys)
    assert_one_line_error(code, err, "no object 'third'")


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("testscore ~ bodyLength", "did you mean 'testScore'"),
        ("testScore ~ bodyLength + (1|mountainrange)", "did you mean 'mountainRange'"),
        ("testScore ~ bodyLength + (1|mountainRange", "unbalanced '('"),
        ("testScore ~ bodyLength + + site", "position 26"),
        ("~ bodyLength", "no response"),
        ("mountainRange ~ bodyLength", "is not numeric"),
        ("testScore ~ bodyLength + (1|one)", "only one level"),
    ],
)
def test_formula_and_model_errors(csv, tmp_path, capsys, formula, fragment):
    df = pd.read_csv(csv).assign(one="x")
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    assert_one_line_error(*run_cli(["fit", str(path), formula, *NO_FIT], capsys), fragment)


def test_fewer_rows_than_parameters(builtin, tmp_path, capsys):
    path = tmp_path / "tiny.csv"
    builtin.head(3).to_csv(path, index=False)
    assert_one_line_error(*run_cli(["fit", str(path), "testScore ~ bodyLength + site", *NO_FIT], capsys),
                          "cannot estimate")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--draws", "0"), ("--draws", "-5"), ("--tune", "1.5"), ("--chains", "abc"), ("--seed", "-1"),
     ("--target-accept", "1.5"), ("--ci", "95")],
)
def test_bad_options(csv, capsys, option, value):
    code, err = run_cli(["fit", str(csv), "testScore ~ bodyLength", option, value], capsys)
    assert_one_line_error(code, err, option)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "does not exist"),
        ("name = 'x'\n[[model]]\nname = 'a'\n", "has no 'formula'"),
        ("[[model]]\nname = 'a'\nformula = 'y ~ x'\ncolour = 'red'\n", "unknown key 'colour'"),
        ("[[model]]\nname = 'a'\nformula = 'y ~ x +'\n", "model 'a'"),
        ("[[model]]\nname = 'a'\nformula = 'y ~ x'\n[[comparison]]\nmodels = ['a', 'b']\n", "unknown model 'b'"),
        ("this is not toml", "not valid TOML"),
        ("[data]\nsource = 'builtin:dragons'\n", "no [[model]]"),
    ],
)
def test_bad_study_file(tmp_path, capsys, text, fragment):
    path = tmp_path / "s.toml"
    if text is not None:
        path.write_text(text)
    assert_one_line_error(*run_cli(["run", str(path), *NO_FIT], capsys), fragment)


def test_study_error_names_the_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("name = 's'\n\n[[model]]\nname = 'a'\nformula = 'y ~ x'\nlme4_method = 'bayes'\n")
    with pytest.raises(StudyError, match=r"s\.toml:6"):
        study.load(path)


def test_out_not_writable(csv, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(["fit", str(csv), "testScore ~ bodyLength", "--out", str(blocker / "sub"), *NO_FIT], capsys)
    assert_one_line_error(code, err, "cannot write")


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "run", str(tmp_path / "missing.toml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


# --- the same mistakes through the API raise typed exceptions ----------------------------------------

def test_api_exception_types(builtin, tmp_path):
    with pytest.raises(DataError):
        data.load(tmp_path / "missing.csv")
    with pytest.raises(FormulaError):
        parse("y ~ (1|")
    with pytest.raises(FormulaError):
        bayes.fit(parse("testScore ~ nope"), builtin)
    with pytest.raises(DataError):
        bayes.fit(parse("mountainRange ~ bodyLength"), builtin)
    with pytest.raises(StudyError):
        study.load(tmp_path / "missing.toml")
    with pytest.raises(OptionsError):
        SamplerOptions(draws=0)
    from bayeslmm.reporting.output import staged_folder

    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError), staged_folder(tmp_path / "f" / "x"):
        pass


# --- data problems handled, not hidden ---------------------------------------------------------------

def test_missing_values_dropped_or_refused(builtin):
    df = builtin.copy()
    df.loc[[0, 5], "testScore"] = np.nan
    df.loc[7, "bodyLength2"] = np.nan
    f = parse("testScore ~ bodyLength2 + (1|mountainRange)")
    kept, notes = checks.validate(f, df)
    assert len(kept) == len(df) - 3
    assert "dropped 3 of 480 rows" in notes[0] and "testScore (2)" in notes[0] and "bodyLength2 (1)" in notes[0]
    with pytest.raises(DataError, match="--na drop"):
        checks.validate(f, df, na="fail")


def test_infinite_and_constant_values_refused(builtin):
    f = parse("testScore ~ bodyLength2 + (1|mountainRange)")
    with pytest.raises(DataError, match="infinite"):
        checks.validate(f, builtin.assign(bodyLength2=lambda d: d["bodyLength2"].where(d.index != 3, np.inf)), )
    with pytest.raises(DataError, match="constant"):
        checks.validate(f, builtin.assign(bodyLength2=1.0))


def test_unscaled_predictor_gets_advice(builtin):
    _, notes = checks.validate(parse("testScore ~ bodyLength + (1|mountainRange)"), builtin)
    assert any("far from standardised" in n and "scale()" in n for n in notes)
    _, notes = checks.validate(parse("testScore ~ bodyLength2 + (1|mountainRange)"), builtin)
    assert not any("standardised" in n for n in notes)


# --- warnings that teach ----------------------------------------------------------------------------

def _warnings(formula, df):
    return checks.validate(parse(formula), df)[1]


@pytest.mark.parametrize("which", ["dragons", "builtin"])
def test_implicit_nesting(request, which):
    df = request.getfixturevalue(which)
    wrong = _warnings("testScore ~ bodyLength2 + (1|mountainRange) + (1|site)", df)
    assert any("recur within every level of 'mountainRange'" in n and "(1|mountainRange/site)" in n for n in wrong)
    right = _warnings("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)", df)
    assert not any("recur" in n for n in right)


def test_truly_crossed_design_is_not_called_nested():
    # 40 dragons, each tested twice in every one of 8 ranges: dragon ids really recur across ranges.
    rng = np.random.default_rng(7)
    d = np.repeat(np.arange(40), 16)
    r = np.tile(np.repeat(np.arange(8), 2), 40)
    y = 50 + rng.normal(0, 10, 40)[d] + rng.normal(0, 15, 8)[r] + rng.normal(0, 5, d.size)
    df = pd.DataFrame({"y": y, "dragon": pd.Categorical(d.astype(str)), "range": pd.Categorical(r.astype(str))})
    assert not any("recur" in n for n in _warnings("y ~ 1 + (1|range) + (1|dragon)", df))


def test_few_levels_and_confounded_terms(builtin):
    notes = _warnings("testScore ~ bodyLength2 + site + (1|site)", builtin)
    assert any("'site' has only 3 levels" in n and "fixed effect" in n for n in notes)
    assert any("both a fixed effect and a grouping factor" in n for n in notes)


def test_slope_that_does_not_vary_within_groups(builtin):
    df = builtin.assign(rangeLevel=builtin.groupby("mountainRange", observed=True)["bodyLength2"].transform("mean"))
    notes = _warnings("testScore ~ rangeLevel + (rangeLevel||mountainRange)", df)
    assert any("does not vary within levels of 'mountainRange'" in n for n in notes)


def test_sampler_trouble_is_reported_and_strict_fails(csv, capsys, tmp_path):
    out = tmp_path / "rep"
    code = main(["fit", str(csv), "testScore ~ bodyLength2 + (1|mountainRange)", "--draws", "30", "--tune", "30",
                 "--chains", "2", "--no-progress", "--strict", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    assert "warning: effective sample size as low as" in err
    assert err.strip().splitlines()[-1].startswith("error: sampler diagnostics failed (--strict)")
    assert "Sampler and LOO warnings" in (out / "report.md").read_text()  # the report is complete and says so


def test_sampler_warnings_text():
    diag = {"divergences": 4, "max_r_hat": 1.05, "min_ess_bulk": 100.0, "min_ess_tail": 350.0,
            "max_treedepth_hits": 2}
    notes = checks.sampler_warnings(diag)
    assert len(notes) == 4
    assert "--target-accept" in notes[0] and "more --draws" in notes[1] and "100" in notes[2]
    clean = {"divergences": 0, "max_r_hat": 1.001, "min_ess_bulk": 2000.0, "min_ess_tail": 2000.0,
             "max_treedepth_hits": 0}
    assert checks.sampler_warnings(clean) == []


def test_pareto_k_warning_text():
    from bayeslmm.summary.compare import pareto_warnings

    table = pd.DataFrame({"model": ["a", "b", "b"], "pareto_k_bad": [0, 3, 3]})
    notes = pareto_warnings(table)
    assert notes == ["b: 3 observation(s) with Pareto k > 0.7: PSIS-LOO is unreliable for them; refit without them "
                     "(--max-refits) or use K-fold cross-validation"]
    refitted = table.assign(loo_refits=[0, 3, 3])  # all refitted: exact, nothing to warn about
    assert pareto_warnings(refitted) == []


def test_dropped_correlation_is_announced_only_where_it_is_dropped(builtin):
    """The marginal engine (auto's choice) estimates the correlation of (x|g): no note. Bambi's engine
    drops it: one note, naming the term in lme4's syntax."""
    formula = parse("testScore ~ bodyLength2 + (bodyLength2|mountainRange)")
    auto = bayes.prepare(formula, builtin, SamplerOptions())
    assert auto.engine == "marginal" and not any("correlation between" in n for n in auto.notes)
    dropped = bayes.prepare(formula, builtin, SamplerOptions(engine="bambi"))
    (note,) = [n for n in dropped.notes if "correlation between" in n]
    assert note.startswith("(1 + bodyLength2|mountainRange): Bambi's engine estimates no correlation")
    assert "results are those of uncorrelated effects" in note


@pytest.mark.slow
@pytest.mark.parametrize("after", [4.0, 6.0, 8.0, 10.0])
def test_ctrl_c_stops_cleanly(tmp_path, after):
    # Interrupts land in different phases (imports, model build, PyMC's tuning or its draws): PyMC
    # swallows KeyboardInterrupt and returns a partial trace or raises "Not enough samples", and
    # every one of these must still end as one line, exit 130 and no folder.
    import signal
    import time

    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "bayeslmm.cli", "run", "models/dragons.toml", "--engine", "bambi",
                             "--out", str(out), "--no-progress"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".report.partial-*"))


def _fit_swallowing_ctrl_c(module, name: str, tmp_path, data: pd.DataFrame, monkeypatch, *extra: str) -> int:
    """``bayeslmm fit`` (in process) where ``module.name`` first does to a Ctrl-C what PyMC (a partial trace) and
    llvmlite (a ctypes callback) do: the command's handler runs and the KeyboardInterrupt it raises is dropped."""
    from bayeslmm import interrupt

    original = getattr(module, name)

    def swallowing(*args, **kwargs):
        try:
            interrupt.on_sigint(2, None)
        except KeyboardInterrupt:
            pass
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, swallowing)
    data.to_csv(tmp_path / "d.csv", index=False)
    return main(["fit", str(tmp_path / "d.csv"), "testScore ~ bodyLength2 + (1|mountainRange)", "--draws", "100",
                 "--tune", "100", "--no-progress", *extra])


def test_a_swallowed_ctrl_c_while_sampling_stops_the_run(tmp_path, builtin, monkeypatch, capsys):
    from bayeslmm.engines import marginal

    code = _fit_swallowing_ctrl_c(marginal, "sample", tmp_path, builtin, monkeypatch)
    out = capsys.readouterr()
    assert code == 130 and out.err.strip().splitlines()[-1].startswith("error: interrupted")
    assert "testScore" not in out.out  # no table of a run that was stopped


def test_a_swallowed_ctrl_c_writes_no_report(tmp_path, builtin, monkeypatch, capsys):
    from bayeslmm.summary import analysis

    out = tmp_path / "report"
    code = _fit_swallowing_ctrl_c(analysis, "frequentist_fits", tmp_path, builtin, monkeypatch, "--out", str(out))
    assert code == 130 and capsys.readouterr().err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and not list(tmp_path.glob(".report.*"))


def test_ctrl_c_in_a_ctypes_callback_is_recorded_and_silent(capsys, monkeypatch):
    # numba compiles through llvmlite's ctypes callbacks: a KeyboardInterrupt raised in one cannot propagate, and
    # Python prints "Exception ignored ... Traceback" unless the command's hook drops it (it is recorded)
    import ctypes

    from bayeslmm import interrupt

    interrupt.reset()
    monkeypatch.setattr(sys, "unraisablehook", interrupt.quiet_unraisable)
    ctypes.CFUNCTYPE(None)(lambda: interrupt.on_sigint(2, None))()
    assert interrupt.interrupted() and capsys.readouterr().err == ""
    ctypes.CFUNCTYPE(None)(lambda: 1 / 0)()  # anything else is printed as Python prints it
    assert "ZeroDivisionError" in capsys.readouterr().err
    interrupt.reset()
