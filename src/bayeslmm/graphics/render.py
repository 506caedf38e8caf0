"""Saving figures to PNG files while the next one is drawn.

Rendering a finished figure (text layout, rasterising, PNG encoding) is most of a report's
figure time and needs nothing but the figure. Where the platform forks cheaply (Linux), each
figure is saved by a forked child process -- which inherits the finished figure, so nothing is
pickled -- while the parent goes on to compute and draw the next; at most one child per core
runs at a time. Elsewhere, or with one core, figures are saved in the calling process.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import sys
import warnings
from pathlib import Path

from matplotlib.figure import Figure


def default_workers() -> int:
    """Children that may save at once: the cores this process may use (1 where forking is unsafe: not Linux)."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return len(os.sched_getaffinity(0))


def _save(fig: Figure, path: Path) -> None:  # in the child: any failure is the exit code; the parent says why
    gc.disable()  # a collection would touch, and so copy, every page of the parent's heap; the child is brief
    try:
        fig.savefig(path)
    except BaseException:
        os._exit(1)


class Renderer:
    """Call it with a figure and a path to save the figure there; leave its ``with`` block to wait for all.

    ``workers`` (default :func:`default_workers`) children save at once; 1 saves in this process.
    A child that fails is followed by saving the figure here, which raises what went wrong.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        self._running: list[tuple[multiprocessing.process.BaseProcess, Figure, Path]] = []

    def __call__(self, fig: Figure, path: Path) -> None:
        if self.workers <= 1:
            fig.savefig(path)
            return
        while len(self._running) >= self.workers:  # wait for whichever child finishes first
            ready = multiprocessing.connection.wait([child.sentinel for child, _, _ in self._running])
            done = next(job for job in self._running if job[0].sentinel in ready)
            self._running.remove(done)
            self._finish(done)
        child = multiprocessing.get_context("fork").Process(target=_save, args=(fig, path), daemon=True)
        with warnings.catch_warnings():  # Python's note that forking a threaded process may deadlock: the
            warnings.simplefilter("ignore", DeprecationWarning)  # child only rasterises one figure
            child.start()
        self._running.append((child, fig, path))

    def _finish(self, job) -> None:
        child, fig, path = job
        child.join()
        if child.exitcode != 0:
            fig.savefig(path)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        running, self._running = self._running, []
        if kind is not None:  # failing already: stop the children, keep the first error
            for child, _, _ in running:
                child.kill()
                child.join()
            return
        for job in running:
            self._finish(job)
