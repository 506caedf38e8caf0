"""Report folders: swapped in whole, made with the user's umask, and no stage left behind by a killed run."""

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bayeslmm.reporting.output import remove_stale_stages, staged_folder

#: A process that stages ``argv[1]``, writes a file into the stage, says where, and waits to be killed
#: (as a run does while it writes its report).
HOLDER = """
import sys, time
from bayeslmm.reporting.output import staged_folder
with staged_folder(sys.argv[1]) as stage:
    (stage / "big.bin").write_bytes(b"x" * 100_000)
    print(stage, flush=True)
    time.sleep(600)
"""


def _holder(target: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    stage = Path(proc.stdout.readline().strip())
    assert stage.is_dir() and stage.name.startswith(f".{target.name}.partial-{proc.pid}-")
    return proc, stage


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_stage_of_a_killed_process_is_removed_and_a_live_one_kept(tmp_path):
    target = tmp_path / "report"
    live, live_stage = _holder(target)
    try:
        dead, dead_stage = _holder(target)
        _kill(dead)  # kill -9 while "writing report": the stage stays on disk
        assert dead_stage.is_dir() and live_stage.is_dir()
        with staged_folder(target) as stage:
            (stage / "tidy.csv").write_text("a\n")
        assert (target / "tidy.csv").read_text() == "a\n"
        assert not dead_stage.exists()
        assert (live_stage / "big.bin").is_file()  # its owner still runs
    finally:
        _kill(live)
    assert [p.name for p in remove_stale_stages(target)] == [live_stage.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_old_report_of_a_process_killed_mid_swap_is_put_back(tmp_path):
    """Killed between moving the old report aside and moving the new one in: the old one returns."""
    target = tmp_path / "report"
    aside = tmp_path / ".report.old-999999999-0000abcd"  # no such PID, and nobody holds its lock
    aside.mkdir()
    (aside / "tidy.csv").write_text("old\n")
    half = tmp_path / ".report.trash-999999999-0000abcd"  # a previous report half deleted: never restored
    half.mkdir()
    remove_stale_stages(target)
    assert (target / "tidy.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_failed_run_leaves_the_old_folder(tmp_path):
    target = tmp_path / "report"
    with staged_folder(target) as stage:
        (stage / "tidy.csv").write_text("first\n")
    with pytest.raises(RuntimeError), staged_folder(target) as stage:
        (stage / "tidy.csv").write_text("second\n")
        raise RuntimeError("sampling failed")
    assert (target / "tidy.csv").read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_report_folder_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "report") as stage:
            (stage / "fits").mkdir()
        assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o755
        os.umask(0o077)
        with staged_folder(tmp_path / "private") as stage:
            pass
        assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    finally:
        os.umask(old)
