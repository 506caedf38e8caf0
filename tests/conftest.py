"""Shared fixtures: the tutorial data, the lme4 references, and real seeded fits (session-scoped).

Files from the shared folder (``$BAYESLMM_SHARED``, ``../shared`` by default: the tutorial's data
and R's answers on it) are not in the repository: every test that reads one asks :func:`require`
first, which skips it on a machine without the file and fails it under ``CI=true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BAYESLMM_SHARED", ROOT.parent / "shared"))
#: The tutorial's data (Coding Club, CC BY-SA 4.0); read from shared/, never copied here.
DRAGONS_RDATA = SHARED / "data" / "dragons.RData"
#: What R 4.2.2 / lme4 1.1-31 / lmerTest 3.1-3 report for the tutorial's models on that data
#: (see shared/reference/README.md for the R calls and the preparation).
LME4_REFERENCE = SHARED / "reference" / "dragons_lme4.json"
STUDY = ROOT / "models" / "dragons.toml"
#: Simulated data sets and what R 4.x / lme4 1.1 report for them, copied from
#: shared/reference/beyond/ (made outside the project; provenance in README.md there and here).
BEYOND = ROOT / "tests" / "data" / "beyond"
#: Sampler settings of the one tiny run of the dragons study on the built-in data that
#: test_cli.py and test_plots.py share (enough for every figure to have something to draw).
STUDY_RUN = {"draws": 150, "tune": 200, "chains": 2, "seed": 11}
#: The same settings as command-line flags (test_cli.py's second run passes them to hit the cache).
STUDY_RUN_FLAGS = tuple(x for key, value in STUDY_RUN.items() for x in (f"--{key}", str(value)))

_missing: set[Path] = set()


def on_ci() -> bool:
    """Whether the suite runs under CI (``CI=true``), where a missing reference is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(*paths: Path) -> None:
    """Skip the calling test unless every file in ``paths`` exists; under ``CI=true`` fail instead.

    The one rule for files outside the repository: a fresh clone without the shared folder skips
    what needs it, and CI, which must have it, says which file is missing rather than passing.
    """
    missing = [p for p in paths if not Path(p).is_file()]
    if not missing:
        return
    _missing.update(missing)
    names = ", ".join(str(p) for p in missing)
    if on_ci():
        pytest.fail(f"CI=true and the shared reference is missing: {names} "
                    "(set BAYESLMM_SHARED to the shared folder)", pytrace=False)
    pytest.skip(f"needs {names} (the shared folder; set BAYESLMM_SHARED to where it is)")


def pytest_configure(config):
    import matplotlib

    matplotlib.use("Agg")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _missing:
        verdict = "failed (CI=true)" if on_ci() else "skipped"
        terminalreporter.section("missing shared references")
        terminalreporter.write_line(f"tests that need these files {verdict}:")
        for path in sorted(_missing):
            terminalreporter.write_line(f"  {path}")


@pytest.fixture(scope="session")
def reference() -> dict:
    require(LME4_REFERENCE)
    return json.loads(LME4_REFERENCE.read_text())["models"]


@pytest.fixture(scope="session")
def study():
    from bayeslmm.model.study import load

    return load(STUDY)


@pytest.fixture(scope="session")
def dragons(study):
    """The tutorial's data, prepared as the tutorial prepares it."""
    require(DRAGONS_RDATA)
    from bayeslmm.runner import prepared_data

    return prepared_data(study, DRAGONS_RDATA)


@pytest.fixture(scope="session")
def builtin(study):
    """The built-in simulated data, prepared."""
    from bayeslmm.runner import prepared_data

    return prepared_data(study)


@pytest.fixture(scope="session")
def real_fits(study, dragons, tmp_path_factory):
    """Every tutorial model fitted once to the real data (seeded, default sampler settings)."""
    from bayeslmm.model.options import RunOptions, SamplerOptions
    from bayeslmm.runner import fit_models

    cache = tmp_path_factory.mktemp("fits")
    return fit_models(study.models, dragons, SamplerOptions(seed=1), cache_dir=cache, echo=lambda m: None,
                      run=RunOptions(progress=False))


@pytest.fixture(scope="session")
def study_run(study, tmp_path_factory):
    """The dragons study run end to end on the built-in data with tiny fits (STUDY_RUN), once.

    Tests read its result and report folder; one that needs to write there works on a copy.
    """
    import warnings

    from bayeslmm.model.options import RunOptions, SamplerOptions
    from bayeslmm.runner import run_study

    out = tmp_path_factory.mktemp("run") / "dragons"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_study(study, out=out, options=SamplerOptions(**STUDY_RUN), echo=lambda m: None,
                         run=RunOptions(progress=False))


def read_csv_as_r(path: Path) -> pd.DataFrame:
    """A CSV as R's ``read.csv(stringsAsFactors = TRUE)`` reads it: text columns become factors
    with their levels sorted (as strings; R sorts in the locale's collation, which agrees with
    Python's order for the lower-case letters and digits of the files in tests/data)."""
    df = pd.read_csv(path)
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = pd.Categorical(df[col], categories=sorted(df[col].dropna().unique()))
    return df


def beyond(name: str) -> tuple[dict, pd.DataFrame]:
    """The entry ``name`` of tests/data/beyond/lme4_reference.json and its data, read as R reads it."""
    entries = {e["name"]: e for e in json.loads((BEYOND / "lme4_reference.json").read_text())}
    entry = entries[name]
    return entry, read_csv_as_r(BEYOND / entry["data"])


@pytest.fixture(scope="session")
def crossed() -> pd.DataFrame:
    """Fully crossed, seeded: 20 subjects x 12 items x 2 replicates, y = 5 + 0.5 x + u_subj + v_item + e
    with sds 1.2, 0.8 and 1 (tests/test_frequentist.py and tests/test_many_groups.py fit it)."""
    rng = np.random.default_rng(7)
    n_subj, n_item, reps = 20, 12, 2
    s = np.repeat(np.arange(n_subj), n_item * reps)
    it = np.tile(np.repeat(np.arange(n_item), reps), n_subj)
    x = rng.normal(size=s.size)
    y = 5 + 0.5 * x + 1.2 * rng.normal(size=n_subj)[s] + 0.8 * rng.normal(size=n_item)[it] + rng.normal(size=s.size)
    return pd.DataFrame({
        "y": y, "x": x,
        "subj": pd.Categorical([f"s{i:02d}" for i in s]), "item": pd.Categorical([f"i{i:02d}" for i in it]),
    })  # fmt: skip


@pytest.fixture(scope="session")
def three_slopes() -> pd.DataFrame:
    """A correlated term of three coefficients, seeded: 30 groups x 12 rows, y = 2 + 0.5 x - 0.3 z +
    (b0 + b1 x + b2 z)[g] + e with b ~ N(0, C), sds 2, 1, 0.8 and correlations 0.5, -0.375, 0.375,
    residual sd 1.2 (tests/test_frequentist.py fits it, tests/test_profile.py profiles it)."""
    rng = np.random.default_rng(5)
    n_groups, per = 30, 12
    g = np.repeat(np.arange(n_groups), per)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    cov = np.array([[4.0, 1.0, -0.6], [1.0, 1.0, 0.3], [-0.6, 0.3, 0.64]])
    b = rng.normal(size=(n_groups, 3)) @ np.linalg.cholesky(cov).T
    y = 2 + 0.5 * x - 0.3 * z + b[g, 0] + b[g, 1] * x + b[g, 2] * z + rng.normal(scale=1.2, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": pd.Categorical([f"g{i:02d}" for i in g])})
