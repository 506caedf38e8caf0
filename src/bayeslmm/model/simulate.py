"""The built-in data: a seeded simulator of the dragons design with a known truth.

Design as in the tutorial: 8 mountain ranges x 3 sites (``a``, ``b``, ``c``) x 20 dragons.
Ranges differ in both typical body length and typical test score, but within a range body
length has no effect on the score. A regression that pools all dragons therefore finds a
clear effect of body length, which vanishes once ranges (and sites within ranges) are
modelled: the tutorial's lesson, with the truth known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MOUNTAIN_RANGES = (
    "Bavarian", "Central", "Emmental", "Julian", "Ligurian", "Maritime", "Sarntal", "Southern",
)
SITES = ("a", "b", "c")

#: The simulator's truth, on the scale of the study's models (``bodyLength2`` is the
#: standardised body length; with a true slope of 0 the scaling does not change it).
TRUTH: dict[str, float] = {
    "(Intercept)": 50.0,
    "bodyLength2": 0.0,
    "sd_mountainRange": 18.0,
    "sd_sample": 4.5,
    "sigma": 15.0,
}


def simulate_dragons(seed: int = 20260401, n_per_site: int = 20) -> pd.DataFrame:
    """Simulate the dragons design.

    Parameters
    ----------
    seed : int
        Seed of the generator; the same seed gives the same data.
    n_per_site : int
        Dragons per site (the tutorial has 20).

    Returns
    -------
    DataFrame
        Columns ``testScore``, ``bodyLength``, ``mountainRange``, ``site`` (categoricals for the
        last two), one row per dragon, ordered by range, site, dragon.

    Notes
    -----
    score = 50 + u_range + v_site + e, with u ~ N(0, 18^2), v ~ N(0, 4.5^2), e ~ N(0, 15^2);
    body length = 200 + 0.9 * u_range + N(0, 5^2) per site + N(0, 12^2) per dragon, so range
    means of body length track range means of score, but score does not depend on body length.
    """
    rng = np.random.default_rng(seed)
    n_ranges, n_sites = len(MOUNTAIN_RANGES), len(SITES)
    u = rng.normal(0.0, TRUTH["sd_mountainRange"], n_ranges)
    v = rng.normal(0.0, TRUTH["sd_sample"], (n_ranges, n_sites))
    site_len = rng.normal(0.0, 5.0, (n_ranges, n_sites))
    r_idx = np.repeat(np.arange(n_ranges), n_sites * n_per_site)
    s_idx = np.tile(np.repeat(np.arange(n_sites), n_per_site), n_ranges)
    n = r_idx.size
    body = 200.0 + 0.9 * u[r_idx] + site_len[r_idx, s_idx] + rng.normal(0.0, 12.0, n)
    score = TRUTH["(Intercept)"] + u[r_idx] + v[r_idx, s_idx] + rng.normal(0.0, TRUTH["sigma"], n)
    return pd.DataFrame(
        {
            "testScore": score,
            "bodyLength": body,
            "mountainRange": pd.Categorical.from_codes(r_idx, MOUNTAIN_RANGES),
            "site": pd.Categorical.from_codes(s_idx, SITES),
        }
    )
