"""The command line end to end on the built-in data (small draws: structure, not accuracy)."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from bayeslmm.cli import main
from bayeslmm.results import TIDY_COLUMNS
from conftest import STUDY_RUN_FLAGS

SMALL = ["--draws", "100", "--tune", "150", "--chains", "2", "--no-progress"]


@pytest.fixture(scope="module")
def report_dir(study_run):
    """The report folder of the session's one tiny run of the study (conftest.STUDY_RUN); read only."""
    return study_run.out


def test_run_writes_the_report(report_dir, study):
    for name in ("tidy.csv", "report.md", "report.html"):
        assert (report_dir / name).is_file()
    figures = {p.stem for p in (report_dir / "figures").glob("*.png")}
    assert {"response_histogram", "pooled_regression", "boxplot_mountainRange", "facets_mountainRange",
            "forest_bodyLength2"} <= figures
    # full.lmer and mixed.lmer2 share a posterior: one fit, one file, named by content in the index.
    import json

    index = json.loads((report_dir / "fits" / "index.json").read_text())
    assert len(index) == len(study.models) and index["full.lmer"] == index["mixed.lmer2"]
    assert sorted(p.name for p in (report_dir / "fits").glob("*.nc")) == sorted(set(index.values()))
    assert not list(report_dir.parent.glob(".dragons.partial-*"))


def test_builtin_report_says_it_is_simulated_and_shows_the_truth(report_dir):
    from bayeslmm.model.simulate import TRUTH

    md = (report_dir / "report.md").read_text()
    assert "**Simulated data.**" in md and md.index("**Simulated data.**") < md.index("## Conclusions")
    side = pd.read_csv(report_dir / "sidebyside.csv", keep_default_na=False, na_values=[""])
    truth = side.set_index(["model", "term"])["truth"]
    assert truth[("basic.lm", "bodyLength2")] == TRUTH["bodyLength2"]  # the within-range effect every model asks
    assert truth[("mixed.lmer2", "sd__Observation")] == TRUTH["sigma"]  # the simulator's own structure
    assert pd.isna(truth[("basic.lm", "sd__Observation")])  # pooled: its residual sd is not the simulator's
    assert pd.isna(truth[("mixed.WRONG", "(Intercept)")])
    assert "| agreement | truth |" in md


def test_tidy_schema(report_dir):
    tidy = pd.read_csv(report_dir / "tidy.csv", keep_default_na=False, na_values=[""])
    assert list(tidy.columns[: len(TIDY_COLUMNS)]) == TIDY_COLUMNS
    assert set(tidy["effect"]) == {"fixed", "ran_pars", "ran_vals"}
    assert set(tidy["model"]) == {"basic.lm", "mountain.lm", "mixed.lmer", "mixed.WRONG", "mixed.lmer2",
                                  "full.lmer", "reduced.lmer", "slopes.lmer"}
    assert set(tidy["method"]) == {"bayes", "ols", "reml", "ml"}
    lmer2 = tidy[(tidy["model"] == "mixed.lmer2")]
    res = lmer2[lmer2["group"] == "Residual"]
    assert sorted(res["method"]) == ["bayes", "ml", "reml"] and set(res["term"]) == {"sd__Observation"}
    mr = lmer2[(lmer2["effect"] == "ran_vals") & (lmer2["group"] == "mountainRange") & (lmer2["method"] == "bayes")]
    assert len(mr) == 8 and set(mr["term"]) == {"(Intercept)"}


def test_second_run_reuses_the_cache(report_dir, study, tmp_path, capsys):
    """The same settings given as flags find every posterior of the first run (on a copy of its folder)."""
    out = tmp_path / "dragons"
    shutil.copytree(report_dir, out)
    assert main(["run", "models/dragons.toml", "--out", str(out), *STUDY_RUN_FLAGS, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("reused cached posterior") == len(study.models)
    # lme4's side, LOO, the sensitivities and the figures were kept too (bayeslmm.store): the same numbers, files
    assert "figures: the " in err and "drawn by the last run" in err
    for name in ("tidy.csv", "sidebyside.csv", "comparison.csv", "r2.csv"):
        assert (out / name).read_bytes() == (report_dir / name).read_bytes(), name
    shown = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert shown == sorted(p.name for p in (out / "figures").glob("*.png"))
    assert all((out / "figures" / f).read_bytes() == (report_dir / "figures" / f).read_bytes() for f in shown)
    kinds = {p.name.split("-")[0] for p in (out / "fits" / "derived").glob("*.pkl")}
    assert kinds == {"lme4", "profile", "loo", "psense", "figures"}


def test_fit_command_prints_a_table(builtin, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    builtin.assign(site=builtin["site"].astype(str)).to_csv(csv, index=False)
    code = main(["fit", str(csv), "testScore ~ bodyLength2 + (1|mountainRange/site)", *SMALL])
    assert code == 0
    out = capsys.readouterr().out
    assert "mountainRange:site" in out and "sd__(Intercept)" in out and "bodyLength2" in out


def test_fit_with_out_prints_the_posterior_once(builtin, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    builtin.to_csv(csv, index=False)
    out = tmp_path / "one"
    assert main(["fit", str(csv), "testScore ~ bodyLength2 + (1|mountainRange)", "--out", str(out), "--ci", "0.9",
                 *SMALL]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.split()[:1] == ["fixed"] and "bodyLength2" in line]
    assert len(rows) == 1  # the posterior once, not once per method
    assert "90% interval" in (out / "report.md").read_text()
    assert "lme4 90% CI" in (out / "tables" / "model.md").read_text()


def test_simulate_writes_csv(tmp_path):
    out = tmp_path / "sim.csv"
    proc = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "simulate", "dragons", "--seed", "3",
                           "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert df.shape == (480, 8)  # the tutorial's four columns, then passed, flames, hoursObserved, dragon


def test_user_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", str(tmp_path / "nope.csv"), "y ~ x"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_table_into_a_closed_pipe_exits_quietly(report_dir):
    """'bayeslmm table ... | head': the reader leaves early; exit 141, as cut-off standard tools, no traceback."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "table", str(report_dir), "--what", "tidy"],
                              stdout=write, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_next_run_removes_the_stage_of_a_killed_run_and_keeps_a_live_one(builtin, tmp_path):
    """'kill -9' while writing the report leaves a stage; the next run removes it, not a running one's."""
    import os
    import signal
    import stat

    csv = tmp_path / "d.csv"
    builtin.to_csv(csv, index=False)
    out = tmp_path / "one"
    cmd = [sys.executable, "-m", "bayeslmm.cli", "fit", str(csv), "testScore ~ bodyLength2", "--out", str(out), *SMALL]
    hold = ("import sys, time\nfrom bayeslmm.reporting.output import staged_folder\n"
            "with staged_folder(sys.argv[1]) as s:\n    print(s, flush=True)\n    time.sleep(600)\n")
    live = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        live_stage = live.stdout.readline().strip()
        killed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in killed.stderr:
            if line.startswith("writing report"):
                break
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        killed.stderr.close()
        stages = {p.name for p in tmp_path.glob(".one.partial-*")}
        dead = {n for n in stages if n.startswith(f".one.partial-{killed.pid}-")}
        assert len(dead) == 1 and len(stages) == 2
        assert list((tmp_path / dead.pop() / "fits").glob("*.nc"))  # what a killed run leaves: its posterior
        old = os.umask(0o022)
        try:
            assert main(cmd[3:]) == 0
        finally:
            os.umask(old)
        assert {p.name for p in tmp_path.glob(".one.partial-*")} == {os.path.basename(live_stage)}
        assert stat.S_IMODE(out.stat().st_mode) == 0o755  # the user's umask, not mkdtemp's 0700
    finally:
        live.kill()
        live.wait()
        live.stdout.close()
