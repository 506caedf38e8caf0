"""Results a report derives from its fits, kept on disk beside the cached posteriors.

A report recomputes lme4's fits, their profile intervals, each posterior's PSIS-LOO and its
power-scaling sensitivity from the same inputs every time it is written; with a cached posterior
those take most of a re-run. A :class:`Store` keeps each such result in the report's ``fits/``
folder under a content hash of what determines it -- the inputs the caller names (a posterior's
key, a formula and its data), the code that computed it (every source file of bayeslmm) and the
versions of the libraries it calls -- so a result is reused only where computing it again would
give the same numbers, and a changed bayeslmm or library simply computes it anew.

Entries are pickles written by bayeslmm into the user's own report folder (as joblib's cache
does); one that cannot be read is computed again. The warnings a computation raised are kept
with its result and raised again when it is reused, so a re-run reports the same notes. Like
the posteriors, an entry found in the previous report is copied into the one being written, so a
folder keeps what its last run used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

T = TypeVar("T")

#: Sub-folder of a report's ``fits/`` holding the derived results.
FOLDER = "derived"
#: Libraries whose results are stored (their versions enter every key).
LIBRARIES = ("numpy", "scipy", "pandas", "arviz-base", "arviz-stats", "xarray")


@functools.cache
def code_version() -> str:
    """Hash of every source file of the installed bayeslmm and of :data:`LIBRARIES`' versions."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    return h.hexdigest()


def data_hash(df: pd.DataFrame) -> str:
    """Content hash of a data frame's values and column names."""
    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    h.update(repr(list(map(str, df.columns))).encode())
    h.update(repr([str(t) for t in df.dtypes]).encode())
    return h.hexdigest()


def key_of(kind: str, parts: Iterable[object]) -> str:
    """The file name of a ``kind`` of result determined by ``parts`` (each turned into text) and the code."""
    h = hashlib.sha256(code_version().encode())
    for part in (kind, *parts):
        h.update(b"\x1f" + str(part).encode())
    return f"{kind}-{h.hexdigest()[:24]}.pkl"


@dataclass(frozen=True)
class Store:
    """Where derived results are looked up (``read``, in order) and written (``write``).

    ``Store()`` keeps nothing: every :meth:`get` computes.
    """

    read: tuple[Path, ...] = ()
    write: Path | None = None

    @classmethod
    def beside(cls, cache_dir: Path | None, save_dir: Path | None, refit: bool = False) -> Store:
        """The store of a report whose posteriors are read from ``cache_dir`` and saved to ``save_dir``
        (``refit``: nothing from ``cache_dir`` is reused, as no posterior is)."""
        folders = [save_dir] + ([] if refit else [cache_dir])
        read = tuple(dict.fromkeys(Path(f) / FOLDER for f in folders if f is not None))
        return cls(read, Path(save_dir) / FOLDER if save_dir is not None else None)

    def get(self, kind: str, parts: Iterable[object], compute: Callable[[], T]) -> T:
        """The stored result of ``kind`` for ``parts``, else ``compute()`` (then stored); either way the
        warnings the computation raised are raised again."""
        name = key_of(kind, parts)
        for folder in self.read:
            path = folder / name
            try:
                with open(path, "rb") as fh:
                    value, raised = pickle.load(fh)
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
                continue
            if self.write is not None and folder != self.write:
                self.write.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.write / name)
            _replay(raised)
            return value
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = compute()
        raised = [_kept(w) for w in caught]
        if self.write is not None:
            self.write.mkdir(parents=True, exist_ok=True)
            tmp = self.write / f".{name}.part-{os.getpid()}"
            with open(tmp, "wb") as fh:
                pickle.dump((value, raised), fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.write / name)
        _replay(raised)
        return value


_PACKAGE = Path(__file__).resolve().parent


def _kept(w: warnings.WarningMessage) -> tuple[str, type[Warning], str, int]:
    """A caught warning as stored: its text, category, file (relative to bayeslmm's folder where it is in it), line."""
    path = Path(w.filename)
    try:
        where = f"bayeslmm:{path.resolve().relative_to(_PACKAGE)}"
    except (OSError, ValueError):
        where = str(path)
    return str(w.message), w.category, where, w.lineno


def _replay(raised: list[tuple[str, type[Warning], str, int]]) -> None:
    for text, category, where, line in raised:
        filename = str(_PACKAGE / where.removeprefix("bayeslmm:")) if where.startswith("bayeslmm:") else where
        warnings.warn_explicit(text, category, filename, line)
