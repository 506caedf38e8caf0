"""lme4-side fits and profile intervals as the number of groups grows.

Run from the repository root::

    .venv/bin/python benchmarks/profile_scale.py              # every design below
    .venv/bin/python benchmarks/profile_scale.py 1000x3 80x3x20
    .venv/bin/python benchmarks/profile_scale.py insteval0.1 insteval1   # crossed: InstEval's shape

For each seeded design it prints, side by side, the wall time of the REML fit, the ML fit and
``profile_ci`` of the REML fit (what ``bayeslmm fit`` computes for its lme4 column), and the
width of the group sd's profile interval; a stage that raises prints the exception's type
instead of a time. Designs: ``GxR`` is ``y ~ x + (1|g)`` with G groups of R rows (group sd 1,
residual sd 1); ``RxSxN`` is ``y ~ x + (1|range/site)`` with R ranges x S sites x N rows
(range sd 1, site sd 0.5, residual sd 1); ``insteval<scale>`` is ``benchmarks/insteval.py``'s data
(``y ~ service + (1|s) + (1|d) + (1|dept)``, crossed) at that scale, 1 for InstEval's 73,421 rows.
Where ``profile_ci`` declines (a dense block of crossed terms beyond ``PROFILE_MAX_CROSSED``) the
last column says ``Wald``; ``--profile-all`` profiles anyway.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from bayeslmm.lme4 import frequentist
from bayeslmm.lme4.profile import profile_ci
from bayeslmm.model.formula import model_frame, parse

DESIGNS = ("100x10", "1000x3", "8x3x20", "80x3x20", "800x3x20")
SEED = 20260401


def simulate(design: str, seed: int = SEED) -> tuple[str, pd.DataFrame]:
    """A seeded data set for ``design`` (``GxR`` or ``RxSxN``) and its formula."""
    if design.startswith("insteval"):
        import insteval  # benchmarks/insteval.py, beside this file

        return insteval.FORMULA, insteval.simulate(scale=float(design.removeprefix("insteval")))
    sizes = [int(s) for s in design.split("x")]
    rng = np.random.default_rng(seed)
    if len(sizes) == 2:
        n_groups, per = sizes
        g = np.repeat(np.arange(n_groups), per)
        x = rng.normal(size=g.size)
        y = 2 + 0.5 * x + rng.normal(size=n_groups)[g] + rng.normal(size=g.size)
        return "y ~ x + (1|g)", pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    n_ranges, n_sites, per = sizes
    r = np.repeat(np.arange(n_ranges), n_sites * per)
    s = np.tile(np.repeat(np.arange(n_sites), per), n_ranges)
    x = rng.normal(size=r.size)
    u, v = rng.normal(size=n_ranges), rng.normal(scale=0.5, size=(n_ranges, n_sites))
    y = 2 + 0.5 * x + u[r] + v[r, s] + rng.normal(size=r.size)
    df = pd.DataFrame({"y": y, "x": x, "range": pd.Categorical(r), "site": pd.Categorical(s)})
    return "y ~ x + (1|range/site)", df


def timed(func):
    """``(seconds, result)``, or ``(exception type name, None)`` if ``func`` raises."""
    t0 = time.perf_counter()
    try:
        out = func()
    except Exception as exc:  # a benchmark reports failures instead of stopping at the first
        return type(exc).__name__, None
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("designs", nargs="*", default=list(DESIGNS), help="GxR, RxSxN or insteval<scale> "
                        "(default: all but insteval)")
    parser.add_argument("--profile-all", action="store_true", help="profile beyond PROFILE_MAX_CROSSED too")
    args = parser.parse_args()
    limit = {"max_crossed": None} if args.profile_all else {}
    warnings.simplefilter("ignore")
    cols = f"{'design':>10} {'rows':>6} {'q':>5} {'REML fit':>10} {'ML fit':>10} {'profile_ci':>12}  sd CI (first term)"
    print(cols)
    for design in args.designs:
        formula, df = simulate(design)
        frame = model_frame(parse(formula), df)
        q = sum(len(b.levels) for b in frame.blocks)
        t_reml, reml = timed(lambda frame=frame: frequentist.fit_lmm(frame, "reml"))
        t_ml, _ = timed(lambda frame=frame: frequentist.fit_lmm(frame, "ml"))
        t_prof, ci = (timed(lambda frame=frame, reml=reml: profile_ci(frame, reml, **limit)) if reml is not None
                      else ("-", None))
        cells = [f"{t:10.2f}" if isinstance(t, float) else f"{t:>10}" for t in (t_reml, t_ml, t_prof)]
        sd = ("" if ci is None else "Wald" if ci.empty
              else f"[{ci.conf_low.iloc[0]:.4f}, {ci.conf_high.iloc[0]:.4f}]")
        print(f"{design:>10} {len(df):6d} {q:5d} {cells[0]} {cells[1]} {cells[2]:>12}  {sd}", flush=True)


if __name__ == "__main__":
    main()
