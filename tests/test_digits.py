"""Numbers keep their digits at every scale, and the console holds only what bayeslmm says.

Unit tests of the one formatting rule (:mod:`bayeslmm.numbers`) and of how warnings and progress
bars are routed (:mod:`bayeslmm.notices`); then the command line on the built-in dragons with the
response multiplied by 1e-6 and by 1e6, for both engines (real, small NUTS runs: marked slow).
"""

from __future__ import annotations

import math
import os
import pty
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeslmm
from bayeslmm.notices import collected, progress_shown, warning_note
from bayeslmm.numbers import format_interval, format_number
from bayeslmm.reporting.document import Table, to_html, to_markdown
from bayeslmm.reporting.export import render
from bayeslmm.summary.tables import format_table

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "y ~ bodyLength + (1|mountainRange)"
SMALL_RUN = ["--draws", "200", "--tune", "200", "--chains", "2"]
#: Every line bayeslmm itself writes to stderr while fitting starts like one of these.
OURS = re.compile(r"^(\[\d+/\d+\] |      \S|warning: |writing report \.\.\.$|report written to "
                  r"|  (figure \d+: |lme4's fits and profile intervals \.\.\.$|LOO and the comparisons \.\.\.$"
                  r"|figures \.\.\.$))")  # the report's progress lines
#: Characters of PyMC's (rich) and nutpie's (indicatif) progress bars, and terminal control.
BAR = re.compile("[\u2500-\u259f\r\x1b]")


# --- the formatting rule -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    (0.000123456, "0.0001235"),   # 4 significant digits, plain down to 1e-4
    (123456.7, "123457"),         # whole numbers below 1e6 keep every digit
    (1234567.0, "1.235e+06"),     # scientific from 1e6 up
    (4.2e-05, "4.2e-05"),         # and below 1e-4; trailing zeros dropped
    (-3.1e-06, "-3.1e-06"),
    (0.5, "0.5"),
    (-123.456, "-123.5"),
    (9.99996, "10"),              # rounding that carries into the next power of ten
    (0.0, "0"),
    (-0.0, "0"),
    (480, "480"),                 # counts stay integers
    (np.int64(12345678), "12345678"),
    (np.float64(2.5), "2.5"),
    (float("nan"), ""),           # missing shows as empty
    (None, ""),
    (float("inf"), "inf"),
    ("agree", "agree"),           # text passes through
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_number_keeps_the_asked_significant_digits_at_every_scale():
    rng = np.random.default_rng(9)
    values = rng.uniform(1, 10, 400) * 10.0 ** rng.integers(-12, 13, 400) * rng.choice([-1, 1], 400)
    for digits in (2, 3, 4, 6):
        for v in values:
            text = format_number(v, digits)
            ulp = 10.0 ** (math.floor(math.log10(abs(v))) - digits + 1)  # one unit in the last kept digit
            assert abs(float(text) - v) <= 0.5 * ulp * (1 + 1e-9), (v, digits, text)
            mantissa = text.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
            assert len(mantissa) <= max(digits, math.floor(math.log10(abs(v))) + 1), (v, digits, text)


def test_format_interval():
    assert format_interval(1.23456e-7, 2.5e-7) == "[1.235e-07, 2.5e-07]"
    assert format_interval(np.nan, 1.0) == ""


def test_every_table_renderer_uses_the_rule():
    df = pd.DataFrame({"term": ["bodyLength"], "estimate": [-3.49876e-08], "big": [5.0617e7], "n": [480]})
    want = ["bodyLength", "-3.499e-08", "5.062e+07", "480"]
    console = format_table(df).splitlines()[1].split()
    assert console == want
    for fmt in ("text", "markdown", "latex", "html"):
        out = render(df, fmt)
        assert all(w in out for w in want), fmt
    md = to_markdown([Table(df)])
    assert "| bodyLength | -3.499e-08 | 5.062e+07 | 480 |" in md
    html = to_html([Table(df)], "t", ROOT)
    assert "<td>-3.499e-08</td><td>5.062e+07</td>" in html  # numbers in scientific notation stay right-aligned


def test_priors_keep_their_digits_at_a_tiny_scale():
    from bayeslmm.engines.bayes import build_model, model_data, prior_table
    from bayeslmm.model.formula import parse
    from bayeslmm.model.simulate import simulate_dragons

    df = simulate_dragons().assign(y=lambda d: d["testScore"] * 1e-6)
    formula = parse(FORMULA)
    model = build_model(formula, model_data(formula, df))
    priors = prior_table(model)
    slope = model.conditional_parameters["mu"].terms["bodyLength"].prior.args
    residual = model.marginal_parameters["sigma"].prior.args
    assert float(slope["sigma"]) < 1e-4 and float(residual["sigma"]) < 1e-4  # the scale this test is about
    assert priors["bodyLength"] == f"Normal(mu=0, sigma={format_number(float(slope['sigma']))})"
    assert priors["sigma"] == f"HalfStudentT(nu=4, sigma={format_number(float(residual['sigma']))})"
    for text in priors.values():
        assert not re.search(r"=-?0\.0\b|sigma=0[,)]", text), text


# --- warnings and progress -----------------------------------------------------------------


def _record(message: str, filename: str, category=RuntimeWarning) -> warnings.WarningMessage:
    return warnings.WarningMessage(category(message), category, filename, 1)


def test_warning_notes_keep_bayeslmm_warnings_and_drop_the_noise():
    own = str(Path(bayeslmm.__file__).parent / "frequentist.py")
    hessian = warning_note(_record("the Hessian of the deviance is singular (converged?)", own))
    assert hessian is not None and "Satterthwaite df" in hessian and "unreliable" in hessian
    assert warning_note(_record("y ~ x: the optimizer did not converge (gradient check failed)", own)) == (
        "y ~ x: the optimizer did not converge (gradient check failed)")
    assert warning_note(_record("overflow encountered in exp", own)) is None  # numpy's, pointing at our line
    assert warning_note(_record("Mean of empty slice", own)) is None
    assert warning_note(_record("not ours", "/somewhere/site-packages/arviz/x.py")) is None
    assert warning_note(_record("a pandas hint", own, FutureWarning)) is None


def test_collected_turns_warnings_into_notes_once_and_prints_nothing(capsys):
    own = str(Path(bayeslmm.__file__).parent / "frequentist.py")
    message = "the Hessian of the deviance is singular (converged?)"
    with collected("m (lme4 side): ") as notes:
        np.log(np.zeros(1))  # numpy's noise
        warnings.warn("a library's hint", UserWarning, stacklevel=1)
        for _ in range(3):  # as for the REML and the ML fit: one note
            warnings.warn_explicit(message, RuntimeWarning, own, 284)
    assert capsys.readouterr().err == ""
    assert notes == [f"m (lme4 side): {warning_note(_record(message, own))}"]


def test_progress_only_on_a_terminal():
    assert progress_shown(False) is False
    # pytest captures stderr: not a terminal (and no Jupyter kernel here)
    assert progress_shown(True) is (sys.stderr.isatty() or "ipykernel" in sys.modules)


# --- the command line at 1e-6 and 1e6 ------------------------------------------------------


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """The built-in dragons with the response times 1e-6 and times 1e6, as CSV files."""
    from bayeslmm.model.simulate import simulate_dragons

    folder = tmp_path_factory.mktemp("scaled")
    out = {}
    for scale in (1e-6, 1e6):
        path = folder / f"dragons_{scale:g}.csv"
        simulate_dragons().assign(y=lambda d, s=scale: d["testScore"] * s).to_csv(path, index=False)
        out[scale] = path
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayeslmm.cli", *args], capture_output=True, text=True,
                          env=_env(), check=False, timeout=900)


def _assert_stdout_is_the_table(stdout: str) -> pd.DataFrame:
    """stdout: the title line, the header and one row per parameter, nothing else; the rows."""
    assert not BAR.search(stdout), stdout
    lines = stdout.rstrip("\n").splitlines()
    assert lines[0].startswith(f"{FORMULA}   (n = 480;"), lines[0]
    header = lines[1].split()
    assert header == ["effect", "group", "term", "mean", "sd", "conf_low", "conf_high", "r_hat", "ess_bulk"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4, stdout  # two fixed effects, two standard deviations
    table = pd.DataFrame([r if len(r) == 9 else [r[0], "", *r[1:]] for r in rows], columns=header)
    return table


def _assert_stderr_is_ours(stderr: str) -> None:
    assert "Traceback" not in stderr and "Warning:" not in stderr and ".py:" not in stderr, stderr
    assert not BAR.search(stderr), stderr
    for line in stderr.splitlines():
        assert OURS.match(line), f"not a bayeslmm line on stderr: {line!r}"


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_fit_at_extreme_scales_keeps_digits_and_a_clean_console(scaled, scale, tmp_path):
    out = tmp_path / "report"
    proc = _cli("fit", str(scaled[scale]), FORMULA, *SMALL_RUN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    _assert_stderr_is_ours(proc.stderr)
    hessian = [line for line in proc.stderr.splitlines() if "Hessian" in line]
    assert len(hessian) <= 1 and all(line.startswith("warning: ") for line in hessian), hessian

    printed = _assert_stdout_is_the_table(proc.stdout).set_index(["effect", "term"])
    tidy = pd.read_csv(out / "tidy.csv", keep_default_na=False, na_values=[""])
    bayes = tidy[(tidy["method"] == "bayes") & tidy["effect"].isin(["fixed", "ran_pars"])]
    for _, row in bayes.iterrows():
        shown = printed.loc[(row["effect"], row["term"])]
        for col, name in (("estimate", "mean"), ("std_error", "sd"), ("conf_low", "conf_low"),
                          ("conf_high", "conf_high")):
            assert shown[name] == format_number(row[col]), (col, shown[name], row[col])
            assert float(shown[name]) == pytest.approx(row[col], rel=5e-4)  # 4 significant digits
            assert float(shown[name]) != 0
        assert shown["ess_bulk"] == format_number(round(row["ess_bulk"]))

    md = (out / "report.md").read_text()
    priors = next(line for line in md.splitlines() if line.startswith("Priors ("))
    assert not re.search(r"=-?0\.0\b|sigma=0[,)]", priors), priors
    side = pd.read_csv(out / "sidebyside.csv", keep_default_na=False, na_values=[""])
    slope = side[side["term"] == "bodyLength"].iloc[0]
    assert (f"| bodyLength | {format_number(slope['lme4_estimate'])} ({format_number(slope['lme4_std_error'])}) |"
            in md)
    assert float(tidy.loc[tidy["term"] == "bodyLength", "estimate"].iloc[0]) != float(
        format_number(tidy.loc[tidy["term"] == "bodyLength", "estimate"].iloc[0]))  # the CSV is not rounded


def _run_with_terminal_stderr(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI with stdout to a pipe and stderr to a pseudo-terminal; (code, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bayeslmm.cli", *args], stdout=subprocess.PIPE, stderr=slave,
                            env=_env())
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=900)
    reader.join(timeout=60)
    os.close(master)
    return code, stdout, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["bambi", "marginal"])
def test_progress_goes_to_a_terminal_stderr_only(scaled, engine):
    args = ["fit", str(scaled[1e6]), FORMULA, "--draws", "100", "--tune", "100", "--chains", "2", "--engine", engine]
    piped = _cli(*args)  # stderr not a terminal: no progress bar anywhere, no PyMC log lines
    assert piped.returncode == 0, piped.stderr
    _assert_stdout_is_the_table(piped.stdout)
    _assert_stderr_is_ours(piped.stderr)
    if engine == "bambi":  # PyMC's bar went to stdout before; nutpie's (marginal) was already on stderr
        code, stdout, stderr = _run_with_terminal_stderr(args)
        assert code == 0, stderr
        _assert_stdout_is_the_table(stdout)
        assert BAR.search(stderr), "the progress bar should be drawn on a terminal stderr"
