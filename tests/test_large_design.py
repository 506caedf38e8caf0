"""Large designs in the marginal engine: how they are sampled (``marginal.plan``).

A design whose gradient is dear (InstEval's students x lecturers: a dense block of ~1,100 crossed
random effects), or that has 10,000 random effects or more (8,000 ranges x 3 sites), is sampled,
when the sampler options are left at their defaults, with 2 chains, 150 tuning steps and
target_accept 0.8, stopped at the first 100 draws per chain where every reported quantity has bulk
and tail ESS >= 400 and r_hat <= 1.01.  Tested here: which designs get the plan, that the options
the user chose are kept, that the stopping rule reads exactly the quantities the fit reports, with
the fit summary's own ESS and r_hat, and that it keeps the first draws (so a seeded fit is the
same whenever it is run).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayeslmm.engines import bayes, marginal
from bayeslmm.engines import marginal_lik as ml
from bayeslmm.labels import RESIDUAL_VARIABLE
from bayeslmm.model.formula import parse
from bayeslmm.model.options import SamplerOptions

CROSSED = "y ~ service + (1|s) + (1|d) + (1|dept)"


def _crossed(n_s: int, n_d: int, per: int, seed: int = 0) -> pd.DataFrame:
    """``n_s`` students rating ``per`` of ``n_d`` lecturers each (10 departments): InstEval's shape."""
    rng = np.random.default_rng(seed)
    s = np.repeat(np.arange(n_s), per)
    d = np.concatenate([rng.choice(n_d, per, replace=False) for _ in range(n_s)])
    y = 3 + 0.3 * rng.normal(size=n_s)[s] + 0.5 * rng.normal(size=n_d)[d] + rng.normal(size=s.size)
    return pd.DataFrame({"y": y, "service": rng.choice(["0", "1"], s.size), "s": s.astype(str),
                         "d": d.astype(str), "dept": (d % 10).astype(str)})  # fmt: skip


@pytest.fixture(scope="module")
def large():
    # 500 lecturers and 10 departments fill in: a dense block of 510 columns, ~1.3e8 flops a gradient
    return bayes.prepare(parse(CROSSED), _crossed(1500, 500, 12))


def test_a_large_crossed_design_gets_the_plan(large):
    assert large.engine == "marginal"
    o = large.options
    assert (o.chains, o.draws, o.tune, o.target_accept, o.target_ess) == (2, 1000, 150, 0.8, 400)
    assert o.seed == SamplerOptions().seed and o.engine == "auto"  # the rest as given
    assert "large design (510 crossed random effects" in large.engine_note
    assert "bulk and tail ESS >= 400" in large.engine_note
    # the key is the planned options' (a fit with them is the same posterior)
    assert large.key == bayes.cache_key(large.formula, large.data, large.priors, replace(o, engine="marginal"))


def test_the_report_says_how_a_planned_fit_was_sampled(large):
    from bayeslmm.reporting.report import stopping_text

    text = stopping_text(large.options)
    assert text.startswith("Sampling (2 chains after 150 tuning steps, target_accept 0.8) stopped at the first 100")
    assert "bulk and tail ESS >= 400 and r_hat <= 1.01 (at most 1000)" in text
    assert stopping_text(SamplerOptions()) is None


def test_options_the_user_chose_are_kept(large):
    chosen = SamplerOptions(draws=300)
    prep = bayes.prepare(parse(CROSSED), large.data, chosen)
    assert prep.options == chosen
    assert prep.engine_note.endswith("sampled as asked")


def test_small_and_nested_designs_are_sampled_as_before(builtin):
    prep = bayes.prepare(parse("testScore ~ bodyLength2 + (1|mountainRange) + (1|site)"), builtin)
    assert prep.options == SamplerOptions() and prep.engine_note == "marginal engine"
    # 2,000 sites in 400 ranges, 10,000 rows: many groups, no fill-in, nothing dear
    rng = np.random.default_rng(1)
    site = np.repeat(np.arange(2000), 5)
    df = pd.DataFrame({"y": rng.normal(size=site.size), "x": rng.normal(size=site.size),
                       "range": (site // 5).astype(str), "site": site.astype(str)})  # fmt: skip
    prep = bayes.prepare(parse("y ~ x + (1|range) + (1|range:site)"), df)
    assert prep.options == SamplerOptions()


def test_many_random_effects_get_the_plan_however_cheap_their_gradient():
    # 10,000 groups of 3 rows: a diagonal block per group, nothing dear but 4,000 draws of 10,000 effects
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(marginal.LARGE_EFFECTS), 3)
    df = pd.DataFrame({"y": rng.normal(size=g.size), "x": rng.normal(size=g.size), "g": g.astype(str)})
    prep = bayes.prepare(parse("y ~ x + (1|g)"), df)
    assert (prep.options.chains, prep.options.tune, prep.options.target_ess) == (2, 150, 400)
    assert "large design (10,000 random effects)" in prep.engine_note
    small = bayes.prepare(parse("y ~ x + (1|g)"), df[df["g"].astype(int) < marginal.LARGE_EFFECTS - 1])
    assert small.options == SamplerOptions()


def test_large_design_is_the_gradient_cost(large):
    sp = marginal.spec(large.formula, large.frame, large.model)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    # LAPACK's nt^3 for the 510 filled-in columns, and 1.5 x 10 count^2 for each student's column, whose
    # entries are the student, its 12 lecturers and their departments (students never fill in)
    df = large.data
    counts = 1 + 12 + df.groupby("s", observed=True)["dept"].nunique().to_numpy()
    assert ml.gradient_flops(stats.Lp) == pytest.approx(510.0**3 + 15.0 * np.sum(counts.astype(float) ** 2))
    assert marginal.large_design(stats)


def _small_correlated():
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 10)
    x = rng.normal(size=g.size)
    df = pd.DataFrame({"y": 2 + x + rng.normal(size=12)[g] + rng.normal(size=g.size), "x": x,
                       "z": rng.normal(size=g.size), "g": g.astype(str), "h": (g % 5).astype(str)})  # fmt: skip
    prep = bayes.prepare(parse("y ~ x + z + (1 + x|g) + (1|h)"), df)
    sp = marginal.spec(prep.formula, prep.frame, prep.model)
    stats = ml.sufficient_stats(sp.y - sp.offset - sp.shift, sp.X, list(sp.factors), len(sp.random))
    return sp, stats


def test_the_stopping_rule_reads_what_the_posterior_reports():
    sp, stats = _small_correlated()
    rng = np.random.default_rng(0)
    theta = rng.normal(scale=0.3, size=(2, 7, sp.n_dim))
    values = marginal.reported(sp, stats, theta)
    tree = marginal._to_datatree(sp, stats, theta, xr.Dataset(), SamplerOptions(), with_loglik=False)
    post = tree["posterior"]
    expected = [post[sp.intercept].values[..., None]]
    expected += [post[f.name].values[..., None] if not f.dims else post[f.name].values for f in sp.fixed]
    expected += [post[r.sigma_name].values[..., None] for r in sp.random]
    expected += [post[RESIDUAL_VARIABLE].values[..., None]]
    expected += [post[v].values[..., None] for b in sp.blocks for v in b.variables]
    assert len(sp.blocks) == 1 and values.shape == (2, 7, sp.X.shape[1] + len(sp.random) + 1 + 1)
    np.testing.assert_allclose(values, np.concatenate(expected, axis=-1), rtol=1e-12, atol=1e-14)


def test_good_enough_is_the_fit_summary_s_verdict():
    from bayeslmm.summary.tables import _summarise

    rng = np.random.default_rng(2)
    # AR(1) chains: the more persistent the fewer effective draws
    values = np.empty((2, 400, 3))
    for i, rho in enumerate((0.0, 0.5, 0.9)):
        e = rng.normal(size=(2, 400))
        values[..., i] = e
        for t in range(1, 400):
            values[:, t, i] = rho * values[:, t - 1, i] + e[:, t]
    summary = _summarise(values, 0.95)
    lowest = min(summary["ess_bulk"].min(), summary["ess_tail"].min())
    worst = summary["r_hat"].max()
    assert marginal.good_enough(values, lowest - 1e-6, max_rhat=worst + 1e-9)
    assert not marginal.good_enough(values, lowest + 1e-6, max_rhat=worst + 1e-9)
    assert not marginal.good_enough(values, lowest - 1e-6, max_rhat=worst - 1e-9)


class _FakeSampler:
    """nutpie's background sampler, 2 chains advancing 70 and 90 draws per look, NaN-padded as nutpie pads."""

    def __init__(self, draws: int):
        self.theta = np.arange(2 * draws, dtype=float).reshape(2, draws, 1)
        self.looks, self.aborted, self.cancelled = 0, False, False

    def _trace(self):
        shown = self.theta.copy()
        for c, step in enumerate((70, 90)):
            shown[c, step * self.looks :] = np.nan
        return xr.DataTree.from_dict({"posterior": xr.Dataset({"theta": (("chain", "draw", "dim"), shown)})})

    def inspect(self):
        self.looks += 1
        return self._trace()

    def abort(self):
        self.aborted = True
        self.looks += 1  # it ran on a little before it stopped
        return self._trace()

    def wait(self):
        self.looks = 10**6
        return self._trace()

    def cancel(self):
        self.cancelled = True


def test_sampling_stops_at_the_first_hundred_draws_that_are_enough():
    sampler, asked = _FakeSampler(1000), []

    def enough(theta):
        asked.append(theta.shape[1])
        assert np.isfinite(theta).all()
        return theta.shape[1] >= 300

    trace = marginal._sample_until(sampler, 1000, enough, poll=0.0)
    assert asked == [100, 200, 300]  # every hundred, in order, none skipped
    assert sampler.aborted and trace["posterior"].sizes["draw"] == 300
    np.testing.assert_array_equal(trace["posterior"]["theta"].values, sampler.theta[:, :300])


def test_sampling_runs_to_the_end_when_never_enough():
    sampler, asked = _FakeSampler(450), []
    trace = marginal._sample_until(sampler, 450, lambda theta: asked.append(theta.shape[1]) or False, poll=0.0)
    assert asked == [100, 200, 300, 400] and not sampler.aborted
    assert trace["posterior"].sizes["draw"] == 450


def test_an_error_while_waiting_cancels_the_sampler():
    sampler = _FakeSampler(1000)

    def broken(theta):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        marginal._sample_until(sampler, 1000, broken, poll=0.0)
    assert sampler.cancelled


@pytest.mark.slow
def test_a_fit_with_a_target_ess_stops_early_and_reports_it(builtin):
    # the plan's stopping rule on a small design (set by hand): the fit keeps the first k x 100 draws of each
    # chain, says so, and what it reports meets the target
    options = SamplerOptions(chains=2, draws=1000, tune=300, seed=5, target_ess=400)
    fit = bayes.fit(parse("testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)"), builtin, options)
    draws = fit.idata["posterior"].sizes["draw"]
    assert draws < 1000 and draws % 100 == 0
    assert fit.idata["posterior"].attrs["stopped_at_draw"] == draws
    core = fit.tidy(effects=("fixed", "ran_pars"))
    assert core["ess_bulk"].min() >= 400 and core["ess_tail"].min() >= 400 and core["r_hat"].max() <= 1.01
    assert not fit.sampler_notes
