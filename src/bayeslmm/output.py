"""Atomic report folders: build in a temporary sibling, swap in only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bayeslmm.errors import OutputError


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``.

    On any exception (Ctrl-C included) the temporary folder is removed and ``target``
    is left exactly as it was.
    """
    target = Path(target).resolve()
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {str(parent)!r}: {exc.strerror}; choose another --out") from exc
    if target.exists() and not target.is_dir():
        shutil.rmtree(stage, ignore_errors=True)
        raise OutputError(f"--out {str(target)!r} is a file; give a folder path")
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
