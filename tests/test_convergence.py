"""bayeslmm's vectorised R-hat and ESS are arviz-stats' estimators (rank-normalised split R-hat, bulk
and tail ESS; Vehtari et al. 2021), to 1e-10 relative on draws of every kind a posterior has."""

from __future__ import annotations

import numpy as np
import pytest

from bayeslmm import convergence


def _cases():
    rng = np.random.default_rng(7)
    ar = np.zeros((4, 500, 3))
    for t in range(1, 500):  # autocorrelated chains, one of them shifted
        ar[:, t] = 0.9 * ar[:, t - 1] + rng.normal(size=(4, 3))
    ar[0] += 1.5
    ties = rng.integers(0, 4, size=(2, 301, 2)).astype(float)  # discrete draws: ties in the ranks
    anti = np.zeros((4, 11, 40))  # short antithetic chains: Geyer's pairs stop early, late or at the last lag
    for t in range(1, 11):
        anti[:, t] = np.linspace(-0.9, 0.9, 40) * anti[:, t - 1] + rng.normal(size=(4, 40))
    return {"iid": rng.normal(size=(4, 1000, 5)), "autocorrelated": ar, "ties": ties,
            "odd": rng.gamma(2.0, size=(3, 7)), "constant": np.ones((2, 50, 1)), "antithetic": anti}


@pytest.mark.parametrize("name", ["iid", "autocorrelated", "ties", "odd", "constant", "antithetic"])
def test_rhat_and_ess_are_arviz_stats(name):
    import arviz as az

    draws = _cases()[name]
    if draws.ndim == 2:
        draws = draws[..., None]
    theirs = {"rhat": np.asarray(az.rhat(draws)), "bulk": np.asarray(az.ess(draws, method="bulk")),
              "tail": np.asarray(az.ess(draws, method="tail", prob=0.9))}
    ours = {"rhat": convergence.rhat(draws), "bulk": convergence.ess_bulk(draws),
            "tail": convergence.ess_tail(draws, 0.9)}
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, equal_nan=True, err_msg=k)


def test_shapes_and_the_autocorrelated_case_is_flagged():
    draws = _cases()["autocorrelated"]
    assert convergence.rhat(draws).shape == (3,) and convergence.ess_bulk(draws[..., 0]).shape == ()
    assert np.all(convergence.rhat(draws) > 1.05) and np.all(convergence.ess_bulk(draws) < 400)
    assert np.isnan(convergence.rhat(draws[:1])).all()  # one chain: no R-hat


@pytest.mark.parametrize("name", ["iid", "autocorrelated", "ties", "odd", "constant", "antithetic"])
def test_diagnostics_at_once_are_the_three_estimators(name):
    draws = _cases()[name]
    r_hat, bulk, tail = convergence.diagnostics(draws, 0.9)
    np.testing.assert_array_equal(r_hat, convergence.rhat(draws))
    np.testing.assert_array_equal(bulk, convergence.ess_bulk(draws))
    np.testing.assert_array_equal(tail, convergence.ess_tail(draws, 0.9))
