"""False alarms and catches of the nesting warning (:func:`bayeslmm.model.checks.label_reuse`), seeded.

Run from the repository root::

    .venv/bin/python benchmarks/nesting_check.py             # 200 data sets per design
    .venv/bin/python benchmarks/nesting_check.py --reps 20   # quicker

Every data set goes through :func:`bayeslmm.model.checks.nesting_warnings`, what runs before a fit.

1. **Truly crossed** designs, ``y ~ x + (1|g) + (1|h)`` with ``y = 0.5 x + u_g + v_h + e``
   (residual sd 1): six shapes (rows: levels of g x levels of h x rows per cell), five pairs of
   standard deviations (including h with sd 0 and with a small sd, and both 0), balanced and
   unbalanced (each row kept with probability 0.6), and one design with animals measured
   repeatedly inside the cells (``+ (1|animal)``). Any nesting or interaction warning is a
   false alarm.
2. **Reused labels**: inner labels (a, b, c, ...) that name different units in each outer level,
   ``y = u_outer + w_outer:inner + e``: Pastes-like (lme4's Pastes, 10 batches x 3 casks x 2
   samples, with the standard deviations of lme4's nested fit of it), the built-in dragons
   simulator (mixed.WRONG), and other shapes. A catch is the ``(1|outer/inner)`` advice;
   advice in the other direction is counted apart.
3. For information: a crossed design whose cells do interact.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bayeslmm.model import checks  # noqa: E402
from bayeslmm.model.data import prepare  # noqa: E402
from bayeslmm.model.formula import parse  # noqa: E402
from bayeslmm.model.simulate import simulate_dragons  # noqa: E402

SEED = 20260409
#: (levels of g, levels of h, rows per cell) of the crossed designs.
CROSSED_SHAPES = ((8, 3, 20), (10, 3, 2), (40, 8, 2), (20, 10, 2), (6, 6, 5), (5, 30, 3))
#: (sd of g, sd of h); the residual sd is 1.
CROSSED_SDS = ((1.0, 0.0), (1.0, 0.1), (1.0, 0.3), (1.0, 1.0), (0.0, 0.0))
CROSSED = parse("y ~ x + (1|g) + (1|h)")
#: lme4's nested fit of Pastes, lmer(strength ~ 1 + (1|batch/cask), Pastes): sd batch 1.29,
#: sd cask:batch 2.90, residual 0.82 (lme4 1.1's documented example output).
PASTES_SDS = (1.29, 2.90, 0.82)


def _labels(codes: np.ndarray, prefix: str) -> pd.Categorical:
    return pd.Categorical([f"{prefix}{c:02d}" for c in codes])


def _keep(rng: np.random.Generator, df: pd.DataFrame, keep: float) -> pd.DataFrame:
    return df if keep >= 1 else df.loc[rng.random(len(df)) < keep].reset_index(drop=True)


def crossed(rng: np.random.Generator, ng: int, nh: int, reps: int, sd_g: float, sd_h: float,
            keep: float = 1.0) -> pd.DataFrame:
    """Each h label is the same unit in every level of g (additive effects)."""
    g, h = np.repeat(np.arange(ng), nh * reps), np.tile(np.repeat(np.arange(nh), reps), ng)
    x = rng.normal(size=g.size)
    y = 0.5 * x + rng.normal(0, sd_g, ng)[g] + rng.normal(0, sd_h, nh)[h] + rng.normal(size=g.size)
    return _keep(rng, pd.DataFrame({"y": y, "x": x, "g": _labels(g, "g"), "h": _labels(h, "h")}), keep)


def crossed_with_animals(rng: np.random.Generator, keep: float = 1.0) -> pd.DataFrame:
    """8 ranges x 3 examiners, 4 animals per cell measured 5 times: animals nested in the cells."""
    ng, nh, na, reps = 8, 3, 4, 5
    g = np.repeat(np.arange(ng), nh * na * reps)
    h = np.tile(np.repeat(np.arange(nh), na * reps), ng)
    animal = np.repeat(np.arange(ng * nh * na), reps)
    x = rng.normal(size=g.size)
    y = (0.5 * x + rng.normal(0, 1, ng)[g] + rng.normal(0, 0.3, nh)[h] + rng.normal(0, 1, animal.max() + 1)[animal]
         + rng.normal(size=g.size))
    df = pd.DataFrame({"y": y, "x": x, "g": _labels(g, "g"), "h": _labels(h, "h"), "animal": _labels(animal, "a")})
    return _keep(rng, df, keep)


def reused(rng: np.random.Generator, n_outer: int, n_inner: int, reps: int, sd_outer: float, sd_cell: float,
           sigma: float = 1.0, keep: float = 1.0) -> pd.DataFrame:
    """Inner labels reused for different units in each outer level (site 'a' of every range)."""
    o, i = np.repeat(np.arange(n_outer), n_inner * reps), np.tile(np.repeat(np.arange(n_inner), reps), n_outer)
    y = (10 + rng.normal(0, sd_outer, n_outer)[o] + rng.normal(0, sd_cell, (n_outer, n_inner))[o, i]
         + rng.normal(0, sigma, o.size))
    return _keep(rng, pd.DataFrame({"y": y, "outer": _labels(o, "o"), "inner": _labels(i, "")}), keep)


def crossed_designs(reps: int) -> Iterator[tuple[str, object, pd.DataFrame]]:
    """(design label, formula, data) of every crossed data set, seeded."""
    k = 0
    for shape in CROSSED_SHAPES:
        for sds in CROSSED_SDS:
            for keep in (1.0, 0.6):
                k += 1
                label = f"{shape[0]}x{shape[1]}x{shape[2]} sd_g={sds[0]:g} sd_h={sds[1]:g}" + (
                    " unbalanced" if keep < 1 else "")
                for r in range(reps):
                    yield label, CROSSED, crossed(np.random.default_rng([SEED, k, r]), *shape, *sds, keep=keep)
    f = parse("y ~ x + (1|g) + (1|h) + (1|animal)")
    for keep in (1.0, 0.6):
        k += 1
        for r in range(reps):
            yield "8x3 cells x 4 animals x 5, + (1|animal)" + (" unbalanced" if keep < 1 else ""), f, \
                crossed_with_animals(np.random.default_rng([SEED, k, r]), keep)


def reused_designs(reps: int) -> Iterator[tuple[str, object, str, str, pd.DataFrame]]:
    """(design label, formula, outer, inner, data) of every reused-label data set, seeded."""
    f = parse("y ~ 1 + (1|outer) + (1|inner)")
    shapes = [
        ("Pastes-like 10x3x2", (10, 3, 2, PASTES_SDS[0], PASTES_SDS[1], PASTES_SDS[2]), 1.0),
        ("Pastes-like 10x3x2, 30% rows dropped", (10, 3, 2, *PASTES_SDS), 0.7),
        ("20 outer x 4 inner x 10, sd 0.5 / 0.3", (20, 4, 10, 0.5, 0.3), 1.0),
        ("10 outer x 3 inner x 4, outer sd 0 / 1", (10, 3, 4, 0.0, 1.0), 1.0),
        ("4 outer x 12 inner x 5, sd 1 / 0.5", (4, 12, 5, 1.0, 0.5), 1.0),
    ]
    for k, (label, args, keep) in enumerate(shapes, start=100):
        for r in range(reps):
            yield label, f, "outer", "inner", reused(np.random.default_rng([SEED, k, r]), *args, keep=keep)
    wrong = parse("testScore ~ bodyLength2 + (1|mountainRange) + (1|site)")
    for r in range(reps):
        df = prepare(simulate_dragons(seed=SEED + r), {"bodyLength2": "bodyLength"}, {})
        yield "dragons simulator (mixed.WRONG), seeds vary", wrong, "mountainRange", "site", df


def interacting_designs(reps: int) -> Iterator[tuple[str, object, pd.DataFrame]]:
    """Crossed designs with an interaction (sd 0.5): the "(1|g:h)" advice is right there."""
    for r in range(reps):
        rng = np.random.default_rng([SEED, 200, r])
        df = crossed(rng, 20, 10, 2, 1.0, 1.0)
        cell = df["g"].astype(str) + ":" + df["h"].astype(str)
        df["y"] += pd.Series(rng.normal(0, 0.5, 200), index=sorted(set(cell))).reindex(cell).to_numpy()
        yield "20x10x2 sd 1 / 1, interaction sd 0.5", CROSSED, df


def count_false_alarms(reps: int) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """False alarms over the crossed designs: total, data sets, and per design."""
    per: dict[str, list[int]] = {}
    for label, formula, df in crossed_designs(reps):
        fired = bool(checks.nesting_warnings(formula, df))
        per.setdefault(label, [0, 0])
        per[label][0] += fired
        per[label][1] += 1
    total = sum(v[0] for v in per.values())
    return total, sum(v[1] for v in per.values()), {k: (v[0], v[1]) for k, v in per.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="data sets per design (default 200)")
    args = ap.parse_args(argv)
    print(f"NESTING_ALPHA = {checks.NESTING_ALPHA}, CONSISTENT_ALPHA = {checks.CONSISTENT_ALPHA}, "
          f"{args.reps} data sets per design, seed {SEED}\n")

    start = time.perf_counter()
    total, n, per = count_false_alarms(args.reps)
    seconds = time.perf_counter() - start
    print("1. Truly crossed designs: false alarms (any nesting or interaction warning)")
    for label, (k, m) in per.items():
        print(f"   {label:48s} {k:4d} / {m}")
    print(f"   total: {total} / {n} = {total / n:.2%}  ({1000 * seconds / n:.1f} ms per check)\n")

    print("2. Reused labels: caught as (1|outer/inner) / other direction / other advice / silent")
    counts: dict[str, list[int]] = {}
    for label, formula, outer, inner, df in reused_designs(args.reps):
        notes = checks.nesting_warnings(formula, df)
        c = counts.setdefault(label, [0, 0, 0, 0, 0])
        right, other = f"(1|{outer}/{inner})", f"(1|{inner}/{outer})"
        c[0 if any(right in s for s in notes) else 1 if any(other in s for s in notes) else 2 if notes else 3] += 1
        c[4] += 1
    for label, (right, other, advice, silent, m) in counts.items():
        print(f"   {label:48s} {right / m:7.1%} {other / m:7.1%} {advice / m:7.1%} {silent / m:7.1%}  (n = {m})")

    print("\n3. Crossed with an interaction: '(1|g:h)' advice / nesting advice / silent")
    c = [0, 0, 0]
    for _, formula, df in interacting_designs(args.reps):
        notes = checks.nesting_warnings(formula, df)
        c[0 if any("(1|g:h)" in s for s in notes) else 1 if notes else 2] += 1
    print(f"   20x10x2 sd 1 / 1, interaction sd 0.5            {c[0] / args.reps:7.1%} {c[1] / args.reps:7.1%} "
          f"{c[2] / args.reps:7.1%}")


if __name__ == "__main__":
    main()
