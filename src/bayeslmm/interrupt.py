"""Ctrl-C that stops a run whatever a library does with it.

PyMC catches ``KeyboardInterrupt`` and returns what it has drawn, and one raised inside a ctypes
callback (numba compiling a kernel through llvmlite) is printed and dropped: the run would go on and
write its report as if nothing had happened. The command's SIGINT handler (:func:`on_sigint`) records
the interrupt here before raising it, and :func:`check` raises it again where a run would otherwise
carry on: after each sampling (before a posterior is cached) and before a report folder is swapped in.
"""

from __future__ import annotations

import sys

_interrupted = False


def on_sigint(signum, frame) -> None:
    """SIGINT: remember it, then raise ``KeyboardInterrupt`` as Python's own handler does."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def reset() -> None:
    """Forget an earlier interrupt (each command starts clean)."""
    global _interrupted
    _interrupted = False


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since :func:`reset`."""
    return _interrupted


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed, even where a library swallowed it."""
    if _interrupted:
        raise KeyboardInterrupt("interrupted")


def quiet_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` that drops a ``KeyboardInterrupt`` raised where Python cannot propagate it (a
    ctypes callback: "Exception ignored ... Traceback"), which :func:`on_sigint` has recorded; anything else is
    printed as Python prints it."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted:
        return
    sys.__unraisablehook__(unraisable)
