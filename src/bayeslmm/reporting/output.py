"""Atomic report folders: build in a temporary sibling, swap in only when complete.

A stage is a hidden sibling ``.NAME.partial-PID-XXXXXXXX`` of the target (the previous
folder becomes ``.NAME.old-...`` for the moment of the swap, then ``.NAME.trash-...`` while it
is deleted), locked with ``flock`` by the process that owns it for as long as that process
lives. A process killed outright (``kill -9``, a crash) releases its locks, so the next stage
made beside the same target removes what it left behind, and never a stage whose owner still
runs. Folders are made with the user's umask.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from bayeslmm import interrupt
from bayeslmm.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

_KINDS = ("old", "partial", "trash")


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(name: str) -> bool:
    """Whether the process whose PID a stage's name records is alive (unknown counts as alive)."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _lock(path: Path, wait: bool = False) -> int | None:
    """An open descriptor of folder ``path`` holding its exclusive lock, or ``None`` when its
    owner is alive. Where the file system has no locks, the PID in the name decides."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if fcntl is None:
            raise OSError("no fcntl")
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        if not wait and _pid_alive(path.name):
            os.close(fd)
            return None
    if not _same(fd, path):  # renamed or replaced while we waited: not the folder we meant
        os.close(fd)
        return None
    return fd


def _same(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def remove_stale_stages(target: str | Path) -> list[Path]:
    """Remove the stages beside ``target`` whose owning process is gone; return what was removed.

    If a process died between moving the previous folder aside and moving the new one in,
    ``target`` is missing and its ``.old-`` folder (always a complete report) is put back.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = str(target.parent / f".{glob.escape(target.name)}")
    found = [Path(p) for kind in _KINDS for p in glob.glob(f"{pattern}.{kind}-*")]
    removed = []
    for path in sorted((p for p in found if p.is_dir()), key=_mtime, reverse=True):
        try:
            fd = _lock(path)
        except OSError:  # vanished meanwhile, or unreadable: leave it
            continue
        if fd is None:
            continue
        try:
            if f".{target.name}.old-" in path.name and not target.exists():
                os.replace(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _make_stage(target: Path) -> tuple[Path, int]:
    """A new, empty, locked stage beside ``target`` (mode from the umask)."""
    for _ in range(100):
        stage = _sibling(target, "partial")
        try:
            os.mkdir(stage)
            fd = _lock(stage, wait=True)
        except (FileExistsError, FileNotFoundError):  # taken, or swept before we locked it
            continue
        if fd is not None:
            return stage, fd
    raise OSError(f"no stage could be made beside {target}")


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``.

    On any exception (Ctrl-C included) the temporary folder is removed and ``target``
    is left exactly as it was. Stages left by processes that died are removed first.
    """
    target = Path(target).resolve()
    parent = target.parent
    if target.exists() and not target.is_dir():
        raise OutputError(f"--out {str(target)!r} is a file; give a folder path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(target)
        stage, fd = _make_stage(target)
    except OSError as exc:
        raise OutputError(f"cannot write to {str(parent)!r}: {exc.strerror or exc}; choose another --out") from exc
    try:
        try:
            yield stage
            interrupt.check()  # a Ctrl-C a library swallowed: the report may be of a half-done run
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        old = old_fd = None
        if target.exists():
            old_fd = _lock(target, wait=True)
            old = _sibling(target, "old")
            os.replace(target, old)
        os.replace(stage, target)
        if old is not None:
            trash = _sibling(target, "trash")  # never restored, unlike a whole .old folder
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
            if old_fd is not None:
                os.close(old_fd)
    finally:
        os.close(fd)
