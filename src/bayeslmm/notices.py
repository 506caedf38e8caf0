"""What reaches the console besides the results: warnings as notes, progress bars on a terminal only.

Python warnings raised while fitting are caught and turned into the ``warning: ...`` lines and
report notes the user reads (bayeslmm's own, which say what went wrong), or dropped (those of
numpy, scipy, ArviZ, PyMC, Bambi: what matters of them bayeslmm checks itself, as sampler
diagnostics and convergence checks). No raw Python warning with a source path reaches stderr.
Samplers' progress bars go to stderr, and only when it is a terminal, so stdout holds results only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: numpy's RuntimeWarnings ("overflow encountered in exp", "Mean of empty slice") point at the
#: calling line, which may be bayeslmm's; they are noise: what they touch is checked or shown missing.
_NUMPY = re.compile(r"encountered in|divide by zero|empty slice|Degrees of freedom <= 0")
#: bayeslmm's own warnings whose text needs its meaning spelt out.
_MEANING = {
    "the Hessian of the deviance is singular": (
        "the Hessian of the deviance in (theta, sigma) is numerically singular, so the Satterthwaite df and "
        "p-values of the fixed effects may be unreliable (lmerTest warns the same; a response on a very large or "
        "small scale can cause it: rescaling it may help)"
    ),
}
_LOGGERS = ("pymc", "bambi")


def warning_note(record: warnings.WarningMessage) -> str | None:
    """The note a caught warning becomes, or ``None`` for noise.

    bayeslmm's own warnings (plain ``RuntimeWarning`` raised from a file of this package) keep
    their text, spelt out where it needs it; numpy's warnings (which also point at the calling
    line) and every other library's are noise.
    """
    try:
        own = Path(record.filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        own = False
    text = str(record.message).strip()
    if not own or record.category is not RuntimeWarning or not text or _NUMPY.search(text):
        return None
    return next((meaning for start, meaning in _MEANING.items() if text.startswith(start)), text)


@contextlib.contextmanager
def collected(prefix: str = "") -> Iterator[list[str]]:
    """Catch the warnings raised in the block; on leaving it, fill the yielded list with their notes.

    Each distinct note appears once, after ``prefix`` (e.g. ``"lme4 (REML/ML fits): "``).
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per message and place: no flood from a loop
        try:
            yield notes
        finally:
            kept = (warning_note(r) for r in caught)
            notes.extend(f"{prefix}{n}" for n in dict.fromkeys(n for n in kept if n))


def progress_shown(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and stderr is a terminal (or a Jupyter kernel)."""
    if not progress:
        return False
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return terminal or "ipykernel" in sys.modules


@contextlib.contextmanager
def sampler_output() -> Iterator[None]:
    """While a library samples: its stdout (PyMC's progress bar) goes to stderr, its log is quiet.

    PyMC and Bambi log what bayeslmm says itself (the sampler's settings; r_hat, ESS, tree
    depth and divergences, which bayeslmm checks and reports as ``warning:`` lines, PyMC's ESS
    message at level ERROR): their logs are silenced up to CRITICAL. Failures still raise.
    """
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
