"""Derived results kept beside the cached posteriors (bayeslmm.store) and figures saved by forked children."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bayeslmm import store as store_mod
from bayeslmm.graphics.render import Renderer
from bayeslmm.notices import collected
from bayeslmm.store import Store, key_of


def _counted(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_a_result_is_computed_once_then_read_back(tmp_path):
    s = Store.beside(tmp_path / "old", tmp_path / "new")
    compute, calls = _counted(pd.DataFrame({"a": [1.5, 2.5]}))
    first = s.get("thing", ("x", 1), compute)
    again = s.get("thing", ("x", 1), compute)
    assert len(calls) == 1 and again.equals(first)
    assert (tmp_path / "new" / "derived" / key_of("thing", ("x", 1))).is_file()
    s.get("thing", ("x", 2), compute)  # other inputs: computed anew
    assert len(calls) == 2


def test_the_previous_reports_result_is_copied_into_the_new_one(tmp_path):
    old = Store.beside(None, tmp_path / "old")
    old.get("thing", ("k",), lambda: 42)
    new = Store.beside(tmp_path / "old", tmp_path / "new")
    assert new.get("thing", ("k",), lambda: pytest.fail("recomputed")) == 42
    assert (tmp_path / "new" / "derived" / key_of("thing", ("k",))).is_file()
    # --refit: nothing from the previous report is reused
    fresh = Store.beside(tmp_path / "old", tmp_path / "fresh", refit=True)
    assert fresh.get("thing", ("k",), lambda: 7) == 7


@pytest.mark.parametrize("damage", [b"", b"not a pickle"])
def test_an_unreadable_entry_is_computed_again(tmp_path, damage):
    s = Store.beside(None, tmp_path)
    s.get("thing", ("k",), lambda: 1)
    (tmp_path / "derived" / key_of("thing", ("k",))).write_bytes(damage)
    assert s.get("thing", ("k",), lambda: 2) == 2


def test_a_changed_code_version_misses(tmp_path, monkeypatch):
    s = Store.beside(None, tmp_path)
    s.get("thing", ("k",), lambda: 1)
    monkeypatch.setattr(store_mod, "code_version", lambda: "another bayeslmm")
    assert s.get("thing", ("k",), lambda: 2) == 2


def test_the_warnings_of_a_computation_are_raised_again_when_it_is_reused(tmp_path):
    s = Store.beside(None, tmp_path)

    def compute():  # as bayeslmm's own code warns: a RuntimeWarning from a file of the package
        warnings.warn_explicit("lme4's fit is singular", RuntimeWarning, str(Path(store_mod.__file__)), 1)
        return 3

    for _ in range(2):  # computed, then read back
        with collected("m: ") as notes:
            assert s.get("thing", ("k",), compute) == 3
        assert notes == ["m: lme4's fit is singular"]


def test_without_folders_nothing_is_kept(tmp_path):
    compute, calls = _counted(1)
    Store().get("thing", (), compute)
    Store().get("thing", (), compute)
    assert len(calls) == 2


def _figure(title: str) -> Figure:
    fig = Figure(figsize=(3, 2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.arange(10), np.arange(10) ** 2)
    ax.set_title(title)
    return fig


def test_forked_children_save_the_same_files(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with Renderer(workers=1) as render:
        for i in range(4):
            render(_figure(f"figure {i}"), tmp_path / "one" / f"f{i}.png")
    with Renderer(workers=2) as render:
        for i in range(4):
            render(_figure(f"figure {i}"), tmp_path / "two" / f"f{i}.png")
    for i in range(4):
        assert (tmp_path / "two" / f"f{i}.png").read_bytes() == (tmp_path / "one" / f"f{i}.png").read_bytes()


def test_a_figure_that_fails_to_save_raises_in_the_caller(tmp_path):
    bad = _figure("ok")
    bad.axes[0].set_xlabel(r"$\frac{1}$")  # mathtext that cannot be parsed: fails only when drawn
    with pytest.raises(ValueError), Renderer(workers=2) as render:
        render(bad, tmp_path / "bad.png")
