"""Simulated-quantile residuals of binomial and count fits, and the tests built on them (DHARMa's idea).

A GLMM has no residual that should look normal: its response is 0/1, a count of successes or
a count. DHARMa (Hartig, R package) replaces the residual by where the observed value falls among
values simulated from the fitted model: the scaled residual of row i is the share of replicates
below ``y_i``, randomised between ``P(y_rep < y_i)`` and ``P(y_rep <= y_i)`` for discrete data
(the randomised probability integral transform, PIT: Dunn & Smyth 1996). If the model is right,
the scaled residuals are uniform on (0, 1) whatever the family, so one QQ plot against the
uniform and one plot against the predicted value read the same for every model.

The replicates come from the posterior: each from a different posterior draw. For the scaled
residuals every group effect is drawn anew from the draw's population of groups (the "mixed"
predictive distribution of Gelman, Meng & Stern 1996; DHARMa's default, unconditional simulation
of lme4's ``simulate(re.form = NA)``): conditional on the fitted group effects, which were fitted to
these same rows, the residuals of a right model would bunch towards 0.5 (a binomial model with 4
rows per group showed "underdispersion" 0.70, p = 0.02, on data simulated as it assumes). The
predicted value they are plotted against is that of a typical group (every group effect 0).
Tests (each a statistic and a p-value, as DHARMa's):

- **uniformity**: the Kolmogorov-Smirnov distance of the scaled residuals from U(0, 1)
  (``testUniformity``), its p-value from replicates treated as data (each replicate's own scaled
  residuals among the others: rows of a group share its effect, so their residuals are not
  independent, and the KS table's p-values, which assume they are, came out below 0.01 for a
  binomial model checked at its own truth in 2 seeds of 7);
- **dispersion**: Pearson's chi-square ``sum (y - mu)^2 / Var(y | mu)`` of the data over that of
  replicates, both per posterior draw against the draw's own means with every group effect it
  holds (the realized discrepancy of Gelman, Meng & Stern 1996: the posterior spread of the group
  effects makes up for their having been fitted to ``y``, so a right model gives a ratio near 1,
  and a variation between groups does not drown the one within them as it does in the
  unconditional test); > 1 overdispersion, < 1 underdispersion; p two-sided, from the share of
  draws where the replicate's discrepancy exceeds the data's (DHARMa's ``getP``). DHARMa's own
  test (``testDispersion``) compares the variance of ``y - E[y]`` between data and replicates;
- **zero inflation**: observed zeros over the replicates' mean number of zeros (``testZeroInflation``);
- **quantiles**: whether the 25%, 50% and 75% quantiles of the residuals stay flat across the
  predicted values (DHARMa fits quantile regressions with qgam; here the residuals are binned by
  the rank of the predicted value and the number below each quantile is compared with its
  binomial expectation by a chi-square, against the replicates' as for uniformity;
  Benjamini-Hochberg combined).

The posterior predictive checks drawn for discrete data (:attr:`ScaledResiduals.replicated`) use
replicates conditional on the fitted group effects (is each group's proportion or count
reproduced?), with an observation-level effect ``(1|obs)`` drawn anew (:func:`observation_level`):
conditional on its fitted values, each replicate would be pulled towards its row's own count.

A posterior predictive p-value uses the data twice (the fit saw ``y``), so it is conservative:
a small one is a real misfit, a large one is weaker evidence of fit than a frequentist p-value.
Dispersion and zero inflation need more than one trial per row: for a 0/1 response every
replicate has the same kind of 0s and 1s, and these two tests are not computed (say so, not 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bayeslmm.labels import INTERCEPT
from bayeslmm.model.formula import group_codes
from bayeslmm.model.options import COUNT_FAMILIES
from bayeslmm.results import memo
from bayeslmm.summary import predict

#: Replicates per fit (DHARMa's default ``n = 250``).
N_SIM = 250
#: Quantiles whose flatness the residual plot draws and :func:`quantile_test` tests (DHARMa's).
QUANTILES = (0.25, 0.5, 0.75)
#: A p-value below this flags a test (DHARMa colours such a test red).
ALPHA = 0.05
#: Replicates whose own residuals give the null distributions of the uniformity and quantile tests.
N_NULL = 100
#: Replicated counts up to this value are ranked through a table of counts per row (:func:`below_counts`).
TABLE_VALUES = 1000


@dataclass(frozen=True)
class Test:
    """One test of the scaled residuals.

    Attributes
    ----------
    name : str
        ``uniformity``, ``dispersion``, ``zero inflation`` or ``quantiles``.
    statistic : float
        KS distance (uniformity), observed / simulated ratio (dispersion: of variances; zero
        inflation: of zeros), the smallest adjusted chi-square p (quantiles); NaN if not computed.
    p_value : float
        NaN when the test does not apply (``note`` says why).
    note : str
        What the statistic is, or why the test was not computed.
    """

    name: str
    statistic: float
    p_value: float
    note: str = ""

    @property
    def computed(self) -> bool:
        """Whether the test applies to this model (a p-value exists)."""
        return bool(np.isfinite(self.p_value))

    @property
    def flagged(self) -> bool:
        """Whether the test finds a misfit (p < :data:`ALPHA`)."""
        return self.computed and self.p_value < ALPHA


@dataclass(frozen=True)
class ScaledResiduals:
    """A fit's scaled residuals and the replicates behind its checks.

    Attributes
    ----------
    name : str
        The fit's name.
    family : str
        ``binomial``, ``poisson`` or ``negbinomial``.
    residuals : ndarray, shape (rows,)
        Scaled residuals in [0, 1], uniform if the model is right.
    predicted : ndarray, shape (rows,)
        Each row's prediction for a typical group (every group effect 0; DHARMa's ``predict(re.form = ~0)``),
        posterior mean on the response scale: the probability of success (binomial) or the expected
        count (Poisson, offset included).
    observed : ndarray, shape (rows,)
        Successes or counts.
    simulated : ndarray, shape (n, rows)
        The replicates of the scaled residuals (every group effect drawn anew).
    replicated : ndarray, shape (n, rows)
        Replicates given the fitted group effects (observation-level ones drawn anew), for the
        posterior predictive checks.
    pearson : ndarray, shape (n, 2)
        Pearson's chi-square of the data and of the replicate, per posterior draw (:func:`dispersion_test`).
    null : ndarray, shape (N_NULL, 1 + len(QUANTILES))
        The uniformity and quantile statistics of :data:`N_NULL` replicates' own scaled residuals (each
        among the other replicates): their distribution if the model is right (:func:`uniformity_test`).
    null_sorted : ndarray, shape (N_NULL, rows)
        Those replicates' scaled residuals, each sorted: the QQ plot's envelope.
    trials : ndarray or None
        Trials per row (binomial).
    fresh : tuple of str
        Observation-level grouping factors, drawn anew in :attr:`replicated`.
    seed : int
    binary : bool
        A 0/1 response (every row one trial).
    """

    name: str
    family: str
    residuals: np.ndarray = field(repr=False)
    predicted: np.ndarray = field(repr=False)
    observed: np.ndarray = field(repr=False)
    simulated: np.ndarray = field(repr=False)
    replicated: np.ndarray = field(repr=False)
    pearson: np.ndarray = field(repr=False)
    null: np.ndarray = field(repr=False)
    null_sorted: np.ndarray = field(repr=False)
    trials: np.ndarray | None = field(repr=False)
    fresh: tuple[str, ...] = ()
    seed: int = 0
    binary: bool = False

    @property
    def n_sim(self) -> int:
        """Number of replicates."""
        return int(self.simulated.shape[0])


def observation_level(fit) -> tuple[str, ...]:
    """Grouping factors of a fit whose random intercepts are observation-level: one row per level.

    Such an effect ``(1|obs)`` adds extra-Poisson (or extra-binomial) variation row by row; the
    posterior's value for a row is pulled towards that row's own count.
    """
    out = []
    for term in predict.random_terms(fit):
        if term.coefs == (INTERCEPT,):
            _, codes = group_codes(fit.data, term.group)
            if codes.size and np.bincount(codes).max() == 1:
                out.append(term.group)
    return tuple(dict.fromkeys(out))


def pit(simulated: np.ndarray, observed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised probability integral transform of each observation among its replicates (DHARMa's ``getQuantile``).

    ``simulated`` has shape ``(n, rows)``. A row's value is ``P(y_rep < y)`` when no replicate
    equals ``y``, else uniform between ``P(y_rep < y)`` and ``P(y_rep <= y)``.
    """
    observed = np.asarray(observed, dtype=float)
    lower = (simulated < observed[None, :]).mean(axis=0)
    upper = (simulated <= observed[None, :]).mean(axis=0)
    draw = rng.uniform(size=observed.size)
    return np.where(upper > lower, lower + draw * (upper - lower), lower)


def simulate_residuals(fit, n: int = N_SIM, seed: int = 0) -> ScaledResiduals:
    """Scaled residuals and predictive replicates of a binomial or Poisson fit, ``n`` of each (seeded).

    Kept on the fit (computed once per ``(n, seed)``). Raises ValueError for a Gaussian fit.
    """
    cache = getattr(fit, "_summaries", None)
    if cache is None:
        return _simulate(fit, n, seed)
    return memo(cache, ("scaled_residuals", int(n), int(seed)), lambda: _simulate(fit, n, seed))


def _simulate(fit, n: int, seed: int) -> ScaledResiduals:
    family = fit.formula.family
    if family not in ("binomial", *COUNT_FAMILIES):
        raise ValueError(f"{fit.name!r} is a {family} model: its residuals are y - fitted (simulated-quantile "
                         "residuals are for binomial and count models)")
    y, trials = predict.observed(fit)
    # three streams of one seed: new groups (residuals), fitted groups (checks), fitted effects (dispersion)
    _, simulated = predict.predictive_draws(fit, n, seed=seed, fresh=fit.formula.grouping_factors)
    scaled = pit(simulated, y, np.random.default_rng([int(seed), 1]))
    typical = predict.linear_predictor(fit, groups=(), max_draws=n)  # DHARMa's predict(re.form = ~0)
    predicted = predict.inverse_link(family, typical).mean(axis=0)
    null, null_sorted = null_statistics(simulated, predicted, np.random.default_rng([int(seed), 2]))
    fresh = observation_level(fit)
    means, draws, var = predict.predictive_draws(fit, n, seed=seed + 2, variance=True)
    replicated = predict.predictive_draws(fit, n, seed=seed + 1, fresh=fresh)[1] if fresh else draws
    var = np.maximum(var, 1e-12)
    pearson = np.column_stack([np.sum((y[None, :] - means) ** 2 / var, axis=1),
                               np.sum((draws - means) ** 2 / var, axis=1)])
    binary = trials is not None and bool(np.all(trials == 1))
    return ScaledResiduals(fit.name, family, scaled, predicted, y, simulated.astype(np.int32),
                           replicated.astype(np.int32), pearson, null, null_sorted, trials, fresh, int(seed), binary)


def residual_statistics(scaled: np.ndarray, bins: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """The Kolmogorov-Smirnov distance of scaled residuals from the uniform, then per quantile q the chi-square
    of the number below q in each bin of the prediction against its binomial expectation (:func:`quantile_bins`)."""
    k = int(bins.max()) + 1
    m = np.bincount(bins, minlength=k).astype(float)
    out = [ks_distance(scaled)]
    for q in quantiles:
        below = np.bincount(bins, weights=(scaled < q).astype(float), minlength=k)
        out.append(float(np.sum((below - m * q) ** 2 / (m * q * (1 - q)))))
    return np.array(out)


def ks_distance(u: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of a sample from U(0, 1): the largest gap between its ECDF and the diagonal."""
    u = np.sort(np.asarray(u, dtype=float))
    i = np.arange(1, u.size + 1) / u.size
    return float(max(np.max(i - u), np.max(u - (i - 1 / u.size))))


def below_counts(simulated: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A function giving, for values ``y`` (one per row), how many replicates of each row are below ``y`` and
    how many at or below it. Counts of at most :data:`TABLE_VALUES` distinct values use a table of
    cumulative counts per row (a lookup per call); larger ones compare every replicate."""
    top = int(simulated.max()) if simulated.size else 0
    if simulated.min() < 0 or top > TABLE_VALUES:
        return lambda y: ((simulated < y[None, :]).sum(axis=0), (simulated <= y[None, :]).sum(axis=0))
    rows = simulated.shape[1]
    index = simulated.astype(np.int64) + (top + 1) * np.arange(rows)[None, :]
    cum = np.zeros((rows, top + 2), dtype=np.int64)
    cum[:, 1:] = np.cumsum(np.bincount(index.ravel(), minlength=rows * (top + 1)).reshape(rows, top + 1), axis=1)
    where = np.arange(rows)

    def counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.clip(np.asarray(y, dtype=np.int64), -1, top + 1)
        return cum[where, np.clip(v, 0, top + 1)], cum[where, np.clip(v + 1, 0, top + 1)]
    return counts


def null_statistics(simulated: np.ndarray, predicted: np.ndarray, rng: np.random.Generator,
                    n: int = N_NULL) -> tuple[np.ndarray, np.ndarray]:
    """:func:`residual_statistics` of ``n`` replicates' own scaled residuals, each among the other replicates.

    Under the model a replicate is a data set like the observed one, with its rows as correlated
    as the data's (rows of a group share its effect: their scaled residuals are not independent,
    so the textbook null distributions of the Kolmogorov-Smirnov and chi-square statistics, which
    assume independent rows, would make p-values too small). Returns the statistics, shape
    ``(n, 1 + quantiles)``, and each replicate's scaled residuals sorted, shape ``(n, rows)`` (float32).
    """
    bins = quantile_bins(predicted)
    total = simulated.shape[0]
    counts = below_counts(simulated)
    out, ordered = [], []
    for k in range(min(n, total)):
        below, at_or_below = counts(simulated[k])
        lower, upper = below / (total - 1), (at_or_below - 1) / (total - 1)  # among the others: not itself
        scaled = lower + rng.uniform(size=lower.size) * (upper - lower)
        out.append(residual_statistics(scaled, bins))
        ordered.append(np.sort(scaled).astype(np.float32))
    return np.array(out), np.array(ordered)


def simulation_p(simulated: np.ndarray, observed: float) -> float:
    """Two-sided p-value of ``observed`` among ``simulated`` values (DHARMa's ``getP``):
    twice the smaller tail share, at most 1."""
    simulated = np.asarray(simulated, dtype=float)
    return float(min(1.0, 2 * min(np.mean(simulated <= observed), np.mean(simulated >= observed))))


def uniformity_test(res: ScaledResiduals) -> Test:
    """Kolmogorov-Smirnov distance of the scaled residuals from the uniform (DHARMa's ``testUniformity``).

    The p-value is the share of replicates whose own residuals are at least as far from uniform
    (:func:`null_statistics`), not the KS table's, which assumes independent rows.
    """
    d = ks_distance(res.residuals)
    return Test("uniformity", d, float(np.mean(res.null[:, 0] >= d)),
                "Kolmogorov-Smirnov distance D, against the replicates' own")


def dispersion_test(res: ScaledResiduals) -> Test:
    """Pearson's chi-square of the data over that of the replicates, draw by draw (see the module's notes).

    The ratio is the mean over posterior draws of the data's chi-square over the replicates' mean
    (> 1: more spread than the model allows, overdispersion); p two-sided from the share of draws
    whose replicate has the larger chi-square (:func:`simulation_p` of their differences). Not
    computed for a 0/1 response.
    """
    if res.binary:
        return Test("dispersion", np.nan, np.nan, "not computed for a 0/1 response (one trial per row cannot be "
                    "overdispersed; group the rows as cbind(successes, failures) to test it)")
    data, reps = res.pearson[:, 0], res.pearson[:, 1]
    return Test("dispersion", float(data.mean() / reps.mean()), simulation_p(reps - data, 0.0),
                "Pearson chi-square per posterior draw, data over replicates")


def zero_inflation_test(res: ScaledResiduals) -> Test:
    """Observed zeros over the replicates' mean number of zeros (DHARMa's ``testZeroInflation``)."""
    if res.binary:
        return Test("zero inflation", np.nan, np.nan, "not computed for a 0/1 response (its zeros are the failures)")
    observed = float(np.sum(res.observed == 0))
    simulated = np.sum(res.simulated == 0, axis=1).astype(float)
    mean = float(simulated.mean())
    if mean == 0 and observed == 0:
        return Test("zero inflation", np.nan, np.nan, "no zeros observed or replicated")
    ratio = observed / mean if mean > 0 else np.inf
    return Test("zero inflation", ratio, simulation_p(simulated, observed), "zeros, data over replicates")


def quantile_bins(predicted: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Bin of each row by the rank of its predicted value (:func:`rank_transform`): ``bins`` bins of about equal
    counts (by default about 50 rows each, between 3 and 10 bins; no more than there are distinct predicted
    values), rows with the same prediction in the same bin. Bins are numbered 0, 1, ... without gaps."""
    predicted = np.asarray(predicted, dtype=float)
    if bins is None:
        bins = int(np.clip(predicted.size // 50, 3, 10))
    k = max(1, min(bins, np.unique(predicted).size))
    raw = np.clip(np.ceil(rank_transform(predicted) * k).astype(np.int64) - 1, 0, k - 1)
    return np.unique(raw, return_inverse=True)[1].reshape(-1)


def rank_transform(predicted: np.ndarray) -> np.ndarray:
    """Ranks of the predicted values scaled to (0, 1] (ties averaged), DHARMa's ``rankTransform``."""
    r = stats.rankdata(predicted, method="average")
    return r / r.max()


def quantile_test_p(res: ScaledResiduals, quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-value of each quantile's flatness test (:func:`quantile_test`); NaN when
    every row has the same predicted value."""
    bins = quantile_bins(res.predicted)
    if bins.max() < 1:
        return np.full(len(quantiles), np.nan)
    observed = residual_statistics(res.residuals, bins, quantiles)[1:]
    return bh_adjust(np.mean(res.null[:, 1:1 + len(quantiles)] >= observed[None, :], axis=0))


def quantile_test(res: ScaledResiduals, quantiles: tuple[float, ...] = QUANTILES) -> Test:
    """Whether the residuals' quantiles stay flat across the predicted values.

    Rows are binned by the rank of their predicted value (:func:`quantile_bins`); if the residuals
    are uniform whatever the prediction, the number below quantile q in a bin of m rows is about
    binomial(m, q). Per quantile, the chi-square of those numbers against their expectation, with
    its p-value from the replicates' own residuals (:func:`null_statistics`: rows of a group are
    not independent); the test's p-value is the smallest Benjamini-Hochberg adjusted one (DHARMa's
    ``testQuantiles`` combines its qgam tests the same way), and so is the statistic.
    """
    adjusted = quantile_test_p(res, quantiles)
    if not np.isfinite(adjusted).all():
        return Test("quantiles", np.nan, np.nan, "not computed: every row has the same predicted value")
    p = float(adjusted.min())
    k = int(quantile_bins(res.predicted).max()) + 1
    return Test("quantiles", p, p, f"flat {'/'.join(f'{100 * q:g}' for q in quantiles)}% quantiles over {k} bins "
                "of predicted values (chi-square per quantile against the replicates', Benjamini-Hochberg)")


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (R's ``p.adjust(p, "BH")``)."""
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p)[::-1]
    adjusted = np.minimum.accumulate(p[order] * m / np.arange(m, 0, -1))
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def residual_tests(res: ScaledResiduals) -> list[Test]:
    """Every test of a fit's scaled residuals: uniformity, dispersion, zero inflation, quantiles."""
    return [uniformity_test(res), dispersion_test(res), zero_inflation_test(res), quantile_test(res)]


def format_p(p: float, n: int) -> str:
    """A simulation p-value as text: ``p = 0.024``, or ``p < 0.004`` (1/n) when no replicate reached the data."""
    return f"p < {1 / n:.2g}" if p == 0 else f"p = {p:.2g}"


def check_notes(fit, res: ScaledResiduals | None = None) -> list[str]:
    """Warnings from a GLMM's dispersion and zero-inflation tests, each with what to do (empty when both pass).

    Overdispersion (the dispersion test significant with a ratio above 1) gets the advice to add an
    observation-level random effect ``(1|obs)``, with how to make the column, and for counts to try
    ``--family negbinomial`` (or, when the model has one of those, what else to try); underdispersion
    and zero inflation get a line each. Uniformity and the
    quantile test are shown in the figures only: residuals of rows that share a group effect are
    correlated, which makes their p-values too small on strongly grouped data.
    """
    if not fit.formula.is_glmm:
        return []
    res = res if res is not None else simulate_residuals(fit)
    notes = []
    disp, zeros = dispersion_test(res), zero_inflation_test(res)
    what = "counts" if res.family in COUNT_FAMILIES else "successes"
    p = format_p(disp.p_value, res.pearson.shape[0])
    if disp.flagged and disp.statistic > 1:
        head = (f"overdispersion: the {what} vary {disp.statistic:.2f} times as much around the model's means as "
                f"its replicates do (dispersion test, {p})")
        if res.family == "negbinomial":
            notes.append(f"{head}, even with the negative binomial's own extra variation; look for a missing "
                         "predictor or grouping factor")
        elif res.fresh:
            notes.append(f"{head}, even with the observation-level effect (1|{res.fresh[0]}); look for a missing "
                         "predictor" + (" (or fit the counts with --family negbinomial, lme4's glmer.nb)"
                                        if res.family == "poisson" else ""))
        else:
            fix = ("add an observation-level random effect + (1|obs), with obs a column numbering the rows (pandas: "
                   "df['obs'] = range(len(df)); R: df$obs <- seq_len(nrow(df)))")
            if res.family == "poisson":
                fix += ", or fit them with --family negbinomial (lme4's glmer.nb)"
            notes.append(f"{head}, so its intervals are too narrow; {fix}")
    elif disp.flagged:
        notes.append(f"underdispersion: the {what} vary only {disp.statistic:.2f} times as much around the model's "
                     f"means as its replicates do (dispersion test, {p}); its intervals are wider than they need be")
    if zeros.flagged and zeros.statistic > 1:
        notes.append(f"zero inflation: {zeros.statistic:.2f} times as many zeros as the model's replicates "
                     f"(zero-inflation test, {format_p(zeros.p_value, res.n_sim)}); see first whether overdispersion "
                     "explains them (+ (1|obs)); if not, the zeros may come from a process of their own")
    return notes
