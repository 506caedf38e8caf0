"""Shared fixtures: the tutorial data, the lme4 reference, and real seeded fits (session-scoped)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BAYESLMM_SHARED", ROOT.parent / "shared"))
#: The tutorial's data (Coding Club, CC BY-SA 4.0); read from shared/, never copied here.
DRAGONS_RDATA = SHARED / "data" / "dragons.RData"
#: What R 4.2.2 / lme4 1.1-31 / lmerTest 3.1-3 report for the tutorial's models on that data
#: (see shared/reference/README.md for the R calls and the preparation).
LME4_REFERENCE = SHARED / "reference" / "dragons_lme4.json"
STUDY = ROOT / "models" / "dragons.toml"


def pytest_configure(config):
    import matplotlib

    matplotlib.use("Agg")


@pytest.fixture(scope="session")
def reference() -> dict:
    if not LME4_REFERENCE.is_file():
        pytest.skip(f"lme4 reference not found at {LME4_REFERENCE}")
    return json.loads(LME4_REFERENCE.read_text())["models"]


@pytest.fixture(scope="session")
def study():
    from bayeslmm.model.study import load

    return load(STUDY)


@pytest.fixture(scope="session")
def dragons(study):
    """The tutorial's data, prepared as the tutorial prepares it."""
    if not DRAGONS_RDATA.is_file():
        pytest.skip(f"tutorial data not found at {DRAGONS_RDATA}")
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
