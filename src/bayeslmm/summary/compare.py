"""Model comparison: PSIS-LOO (ArviZ) beside lme4's likelihood-ratio test, AIC and BIC."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from bayeslmm.errors import BayeslmmError
from bayeslmm.lme4.frequentist import FreqFit, lrt

PARETO_K_BAD = 0.7


def aicc(fit: FreqFit) -> float:
    """AIC with the small-sample correction (Hurvich & Tsai; the tutorial's NOTE 2, MuMIn's ``AICc``):
    ``AIC + 2k(k + 1) / (n - k - 1)`` for ``k`` parameters (logLik's df) and ``n`` rows; NaN when n <= k + 1."""
    k, n = fit.npar, fit.nobs
    return float(fit.aic + 2 * k * (k + 1) / (n - k - 1)) if n > k + 1 else float("nan")


#: ``pareto_k_bad`` counts PSIS's observations with k > 0.7, ``loo_refits`` those of them refitted (their
#: elpd in ``elpd_loo`` is exact); ``loo_subsample`` is the number of rows of a subsampled LOO (0: every row;
#: :func:`loo_subsample`) and ``elpd_subsampling_se`` the part of ``elpd_se`` due to subsampling; the
#: ``logo_`` columns are leave-one-group-out by ``logo_group``.
COMPARISON_COLUMNS = [
    "comparison", "model", "rank", "elpd_loo", "elpd_se", "elpd_diff", "elpd_diff_se", "p_loo",
    "pareto_k_bad", "loo_refits", "loo_subsample", "elpd_subsampling_se", "stacking_weight", "n_par", "ml_loglik",
    "aic", "aicc", "bic",
    "lrt_against", "lrt_chisq", "lrt_df", "lrt_p", "pair_elpd_diff", "pair_elpd_diff_se",
    "logo_group", "elpd_logo", "elpd_logo_se", "elpd_logo_diff", "elpd_logo_diff_se", "logo_refits",
]


#: Largest block of pointwise log-likelihood held at once by :func:`loo` (draws x rows x 8 bytes).
LOO_CHUNK_BYTES = 2**27
#: Rows above which :func:`loo` estimates from a subsample. Full PSIS-LOO costs about 2 ms per row at 4,000
#: draws on this project's 2-core machine (13 s at 4,800 rows, 83 s at 48,000; measured with
#: benchmarks/scale.py's designs, load ~4): above 10,000 rows (~20 s per model) a subsample of
#: :data:`LOO_SUBSAMPLE` rows costs a fifth or less, with a subsampling SE reported beside the elpd.
LOO_SUBSAMPLE_ROWS = 10_000
#: Rows of that subsample (simple random sample without replacement, seeded).
LOO_SUBSAMPLE = 2_000
#: Draws (evenly spaced) of the cheap approximation of every row's elpd that the subsample corrects.
LOO_APPROX_DRAWS = 100


def loo(fit, chunk_bytes: int = LOO_CHUNK_BYTES, subsample_rows: int | None = None,
        subsample: int | None = None, seed: int = 0) -> object:
    """PSIS-LOO of one fit (ArviZ's ``ELPDDataLOO``, pointwise), in bounded memory.

    The pointwise log-likelihood is recomputed (:func:`bayeslmm.engines.bayes.log_likelihood_blocks`)
    a block of rows at a time, at most ``chunk_bytes`` of it at once. PSIS smooths each
    observation's weights on its own, so every pointwise value is exactly what ArviZ's
    ``loo`` gives on the whole array; the relative efficiency is ArviZ's (mean ESS of the
    posterior over the number of draws), the totals are ArviZ's sums of the pointwise values.

    Above ``subsample_rows`` rows (:data:`LOO_SUBSAMPLE_ROWS` by default) it is :func:`loo_subsample` of
    ``subsample`` rows (:data:`LOO_SUBSAMPLE`; seeded by ``seed``).
    """
    import arviz as az
    import xarray as xr

    from bayeslmm.engines.bayes import log_likelihood_blocks

    subsample_rows = LOO_SUBSAMPLE_ROWS if subsample_rows is None else subsample_rows
    if len(fit.data) > subsample_rows:
        return loo_subsample(fit, min(LOO_SUBSAMPLE if subsample is None else subsample, len(fit.data)), seed,
                             chunk_bytes)
    post = fit.idata["posterior"]
    S, n = post.sizes["chain"] * post.sizes["draw"], len(fit.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reff = _reff(post)
        step = max(1, chunk_bytes // (8 * S))
        parts = [block.azstats.loo(sample_dims=["chain", "draw"], r_eff=reff)
                 for block in log_likelihood_blocks(fit, (slice(i, i + step) for i in range(0, n, step)))]
        elpd_i, pareto_k, p_loo_i = (xr.concat([p[j] for p in parts], "__obs__") for j in range(3))
        elpd, se, p_loo, _ = elpd_i.azstats.loo_summary(p_loo_i)
    return az.ELPDDataLOO(elpd=elpd, se=se, p=p_loo, n_samples=S, n_data_points=n, scale="log",
                          warning=bool(np.any(pareto_k.values > _good_k(S))), good_k=_good_k(S), elpd_i=elpd_i,
                          pareto_k=pareto_k, approx_posterior=False, p_loo_i=p_loo_i)


def _reff(post) -> float:
    """ArviZ's relative efficiency of a posterior: the mean ESS of its variables over the number of draws."""
    if post.sizes["chain"] == 1:
        return 1.0
    ess = post.to_dataset().azstats.ess(method="mean")
    return float(np.hstack([ess[v].values.flatten() for v in ess.data_vars]).mean()
                 / (post.sizes["chain"] * post.sizes["draw"]))


def _good_k(S: int) -> float:
    """ArviZ's sample-size-dependent Pareto k threshold."""
    return min(1 - 1 / np.log10(S), 0.7) if S > 1 else 0.7


def loo_subsample(fit, size: int = LOO_SUBSAMPLE, seed: int = 0, chunk_bytes: int = LOO_CHUNK_BYTES) -> object:
    """PSIS-LOO of a large fit estimated from a subsample of its rows (arviz-stats' ``loo_subsample``).

    Magnusson et al. (2019)'s difference estimator, as arviz-stats' ``loo_subsample`` computes it
    (its ``diff_srs_estimator`` and ``srs_estimator``): every row's elpd is approximated by its log
    predictive density over :data:`LOO_APPROX_DRAWS` evenly spaced draws (the ``lpd`` approximation
    on a thinned posterior), and PSIS-LOO with every draw on ``size`` rows drawn at random (seeded)
    corrects the approximation's total. arviz-stats' own function wants the whole pointwise
    log-likelihood in memory (draws x rows: 15 GB at 480,000 rows); here it is recomputed a block
    at a time and never stored.

    Returns
    -------
    ELPDDataLOOSubsample
        ``elpd``, ``se`` (approximation and subsampling), ``subsampling_se``, ``subsample_size``,
        ``loo_subsample_observations``; ``elpd_i`` is PSIS's on the subsample and the approximation
        elsewhere, ``pareto_k`` NaN outside the subsample (what ``arviz.compare`` reads).
    """
    from dataclasses import replace

    import xarray as xr
    from arviz_stats.base import array_stats
    from arviz_stats.utils import ELPDDataLOOSubsample
    from scipy.special import logsumexp

    from bayeslmm.engines.bayes import log_likelihood_blocks

    post = fit.idata["posterior"]
    S, n = post.sizes["chain"] * post.sizes["draw"], len(fit.data)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    thinned = replace(fit, idata=fit.idata.isel(draw=slice(None, None, max(1, S // LOO_APPROX_DRAWS))))
    s_thin = thinned.idata["posterior"].sizes["chain"] * thinned.idata["posterior"].sizes["draw"]
    step = max(1, chunk_bytes // (8 * s_thin))
    approx = np.concatenate([logsumexp(b.values.reshape(s_thin, -1), axis=0) - np.log(s_thin) for b in
                             log_likelihood_blocks(thinned, (slice(i, i + step) for i in range(0, n, step)))])
    step = max(1, chunk_bytes // (8 * S))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reff = _reff(post)
        blocks = list(log_likelihood_blocks(fit, (rows[i:i + step] for i in range(0, size, step))))
        parts = [b.azstats.loo(sample_dims=["chain", "draw"], r_eff=reff) for b in blocks]
        lpd = np.concatenate([logsumexp(b.values.reshape(S, -1), axis=0) - np.log(S) for b in blocks])
    del blocks
    elpd_s, k_s = (np.concatenate([np.asarray(p[j]).ravel() for p in parts]) for j in range(2))
    elpd, subsampling_se, se = array_stats.diff_srs_estimator(elpd_s, approx[rows], approx, n)
    p_loo, _, _ = array_stats.srs_estimator(lpd - elpd_s, n)
    obs = {"__obs__": np.arange(n)}
    elpd_i, pareto_k = approx.copy(), np.full(n, np.nan)
    elpd_i[rows], pareto_k[rows] = elpd_s, k_s
    return ELPDDataLOOSubsample(
        elpd=float(elpd), se=float(se), p=float(p_loo), n_samples=S, n_data_points=n, scale="log",
        warning=bool(np.any(k_s > _good_k(S))), good_k=_good_k(S), approx_posterior=False,
        subsampling_se=float(subsampling_se), subsample_size=size, log_p=None, log_q=None, thin_factor=None,
        log_weights=None, loo_subsample_observations=rows,
        elpd_loo_approx=xr.DataArray(approx, dims="__obs__", coords=obs),
        elpd_i=xr.DataArray(elpd_i, dims="__obs__", coords=obs, name="elpd_i"),
        pareto_k=xr.DataArray(pareto_k, dims="__obs__", coords=obs, name="pareto_k"), log_jacobian=None)


def pair_difference(a, b) -> tuple[float, float]:
    """elpd_loo(a) - elpd_loo(b) and its standard error from the pointwise values (ELPDData).

    Two LOOs from the same subsample of rows (:func:`loo_subsample` on the same data) give the
    difference estimator's answer on the pointwise differences, as arviz-stats' ``compare`` does.
    """
    sub_a, sub_b = (getattr(x, "loo_subsample_observations", None) for x in (a, b))
    if sub_a is not None or sub_b is not None:
        if sub_a is None or sub_b is None or not np.array_equal(sub_a, sub_b):
            raise ValueError("LOO differences need both models' LOO from the same subsample of rows")
        from arviz_stats.base import array_stats

        d = np.asarray(a.elpd_i).ravel() - np.asarray(b.elpd_i).ravel()
        approx = np.asarray(a.elpd_loo_approx).ravel() - np.asarray(b.elpd_loo_approx).ravel()
        diff, _, se = array_stats.diff_srs_estimator(d[sub_a], approx[sub_a], approx, d.size)
        return float(diff), float(se)
    d = np.asarray(a.elpd_i).ravel() - np.asarray(b.elpd_i).ravel()
    return float(d.sum()), float(np.sqrt(d.size * d.var(ddof=1)))


def _compare_loos(loos: dict) -> pd.DataFrame:
    """ArviZ's LOO comparison, best first: ``rank, elpd_loo, elpd_se, elpd_diff, elpd_diff_se,
    p_loo, pareto_k_bad`` (observations with Pareto k > 0.7) and ``stacking_weight``, by model."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(loos, round_to="none")
    out = pd.DataFrame(
        {
            "rank": table["rank"].astype(int),
            "elpd_loo": table["elpd"].astype(float),
            "elpd_se": table["se"].astype(float),
            "elpd_diff": 0.0 - table["elpd_diff"].astype(float).abs(),
            "elpd_diff_se": table["dse"].astype(float),
            "p_loo": table["p"].astype(float),
            "pareto_k_bad": [int(np.sum(np.asarray(loos[m].pareto_k) > PARETO_K_BAD)) for m in table.index],
            "loo_subsample": [int(getattr(loos[m], "subsample_size", 0) or 0) for m in table.index],
            "elpd_subsampling_se": [float(getattr(loos[m], "subsampling_se", 0.0) or 0.0) for m in table.index],
            "stacking_weight": table["weight"].astype(float),
        },
        index=table.index,
    )
    out.index.name = "model"
    return out


def compare_models(name: str, models: tuple[str, ...], bayes_fits: dict, ml_fits: dict[str, FreqFit],
                   crossval=None, logo: str = "") -> pd.DataFrame:
    """One comparison of the study: LOO of the Bayesian fits beside LRT/AIC/BIC of ML fits.

    Parameters
    ----------
    name : str
        The comparison's name.
    models : tuple of str
        Models in the study's order (the likelihood-ratio test takes each against the first).
    bayes_fits : dict
        Bayesian fits by model name.
    ml_fits : dict
        Maximum-likelihood fits by model name (lme4's ``REML = FALSE``; OLS for models
        without random terms), for the likelihood-ratio test and AIC/BIC.
    crossval : CrossValidation, optional
        Refits observations where PSIS fails (:class:`bayeslmm.summary.crossval.CrossValidation`) and runs
        ``logo``; PSIS-LOO alone without it.
    logo : str
        Grouping factor to leave out one level at a time (needs ``crossval``); ``""``: none.
    """
    if crossval is None:
        loos, infos = {m: loo(bayes_fits[m]) for m in models}, {}
    else:
        done = {m: crossval.loo(bayes_fits[m]) for m in models}
        loos, infos = {m: d[0] for m, d in done.items()}, {m: d[1] for m, d in done.items()}
    table = _compare_loos(loos).reindex(list(models))
    for m, info in infos.items():  # PSIS's count, before the refits set their k to 0
        table.loc[m, "pareto_k_bad"] = len(info.bad)
    table["loo_refits"] = [len(infos[m].refitted) if m in infos else 0 for m in models]
    rows = []
    base = ml_fits.get(models[0])
    for m in models:
        f = ml_fits.get(m)
        row = {"comparison": name, "model": m, **table.loc[m].to_dict(),
               "n_par": f.npar if f else np.nan, "ml_loglik": f.loglik if f else np.nan,
               "aic": f.aic if f else np.nan, "aicc": aicc(f) if f else np.nan, "bic": f.bic if f else np.nan,
               "lrt_against": "", "lrt_chisq": np.nan, "lrt_df": np.nan, "lrt_p": np.nan,
               "pair_elpd_diff": np.nan, "pair_elpd_diff_se": np.nan}
        if m != models[0] and f is not None and base is not None:
            test = _lrt(base, f)
            if test is not None:
                d, se = pair_difference(loos[m], loos[models[0]])
                row.update(lrt_against=models[0], lrt_chisq=test["chisq"], lrt_df=test["df"], lrt_p=test["p"],
                           pair_elpd_diff=d, pair_elpd_diff_se=se)
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.astype({"rank": int, "pareto_k_bad": int, "loo_refits": int, "loo_subsample": int})
    out = out.assign(**_logo_columns(models, bayes_fits, crossval, logo))
    return out[COMPARISON_COLUMNS]


def _logo_columns(models: tuple[str, ...], bayes_fits: dict, crossval, group: str) -> dict[str, object]:
    """Leave-one-``group``-out of each model: elpd and SE, the difference from the best and its SE (paired over
    the levels), the number of refits. A model without that grouping factor has ``logo_group`` ``""`` and NaN."""
    k = len(models)
    elpd, se, diff, diff_se, refits = (np.full(k, np.nan) for _ in range(5))
    refits[:] = 0
    results = {m: crossval.logo(bayes_fits[m], group) for m in models} if group and crossval is not None else {}
    per = {m: pd.Series(r.elpd_i, index=r.levels) for m, r in results.items() if r is not None}
    done = {m: v for m, v in per.items() if v.notna().all()}
    best = max(done, key=lambda m: done[m].sum()) if done else None
    for j, m in enumerate(models):
        r = results.get(m)
        if r is None:
            continue
        elpd[j], se[j], refits[j] = r.elpd, r.se, len(r.levels)
        if m in done and done[m].index.equals(done[best].index):
            d = (done[m] - done[best]).to_numpy()
            diff[j] = d.sum()
            diff_se[j] = np.sqrt(d.size * d.var(ddof=1)) if d.size > 1 else np.nan
    has = [bool(group) and group in bayes_fits[m].formula.grouping_factors for m in models]
    return {"logo_group": [group if h else "" for h in has], "elpd_logo": elpd, "elpd_logo_se": se,
            "elpd_logo_diff": diff, "elpd_logo_diff_se": diff_se, "logo_refits": refits.astype(int)}


def _lrt(a: FreqFit, b: FreqFit) -> dict | None:
    """LRT of the smaller model against the larger; ``None`` for non-nested-looking pairs of equal size."""
    if a.npar == b.npar:
        return None
    reduced, full = (a, b) if a.npar < b.npar else (b, a)
    try:
        return lrt(reduced, full)
    except BayeslmmError:  # not comparable (e.g. different rows): leave the test out
        return None


def pareto_warnings(table: pd.DataFrame) -> list[str]:
    """One warning per model whose LOO has observations with Pareto k > 0.7, with what to do."""
    out = []
    for _, r in table.drop_duplicates("model").iterrows():
        bad, refits = int(r["pareto_k_bad"]), _refits(r)
        if bad <= refits:
            continue
        if refits:
            out.append(f"{r['model']}: {bad} observation(s) with Pareto k > {PARETO_K_BAD}: {refits} refitted without "
                       f"them (exact elpd), {bad - refits} left at PSIS's estimate, unreliable for them; raise "
                       "--max-refits to refit them")
        else:
            out.append(f"{r['model']}: {bad} observation(s) with Pareto k > {PARETO_K_BAD}: PSIS-LOO is unreliable "
                       "for them; refit without them (--max-refits) or use K-fold cross-validation")
    return out


def _refits(row: pd.Series) -> int:
    """How many of a model's observations with a large Pareto k were refitted (0 in a table without the column)."""
    value = row.get("loo_refits", 0)
    return int(value) if pd.notna(value) else 0


def _loo_verdict(diff: float, se: float) -> str:
    """Whether an elpd difference is clear: larger than 4 and than 2 SE (Sivula et al. 2022)."""
    return "clear" if abs(diff) > 4 and abs(diff) > 2 * se else "unclear"


def reading(table: pd.DataFrame) -> str:
    """A plain-language reading of one comparison: what LOO says, what the LRT says, whether they agree."""
    best = table.sort_values("rank").iloc[0]
    parts = [f"LOO ranks **{best['model']}** first (stacking weight {best['stacking_weight']:.2f})."]
    for _, r in table[table["model"] != best["model"]].iterrows():
        diff, se = -float(r["elpd_diff"]), float(r["elpd_diff_se"])
        what = "a clear difference" if _loo_verdict(diff, se) == "clear" else "within noise (needs > 4 and > 2 SE)"
        parts.append(f"{r['model']} is {diff:.1f} elpd behind (SE {se:.1f}): {what}.")
    by_model = table.set_index("model")
    for _, r in table[np.isfinite(table["lrt_p"].astype(float))].iterrows():
        m, base = r["model"], r["lrt_against"]
        larger = m if by_model.loc[m, "n_par"] > by_model.loc[base, "n_par"] else base
        sig = bool(r["lrt_p"] < 0.05)
        parts.append(f"The likelihood-ratio test of {m} against {base} gives chisq = {r['lrt_chisq']:.3f} on "
                     f"{int(r['lrt_df'])} df, p = {r['lrt_p']:.3g}: "
                     f"{'the larger model fits significantly better' if sig else 'no significant improvement'}.")
        if "pb_p" in r and np.isfinite(r["pb_p"]):
            parts.append(f"A parametric bootstrap of the same test ({int(r['pb_nsim'])} simulations from the smaller "
                         f"model's ML fit, as pbkrtest's PBmodcomp) gives p = {r['pb_p']:.3g}; where the models differ "
                         "by a variance component the chi-square p is conservative (its null value is on the "
                         "boundary, sd = 0).")
        d = float(r["pair_elpd_diff"]) * (1 if larger == m else -1)  # larger minus smaller
        loo_larger = _loo_verdict(d, float(r["pair_elpd_diff_se"])) == "clear" and d > 0
        parts.append(f"LOO: {larger} minus the other = {d:.1f} elpd (SE {float(r['pair_elpd_diff_se']):.1f}); "
                     + ("LOO and the LRT agree." if loo_larger == sig else
                        "LOO and the LRT disagree: read both with their uncertainty."))
    refits = {r["model"]: (_refits(r), int(r["pareto_k_bad"])) for _, r in table.iterrows() if _refits(r)}
    left = int(table["pareto_k_bad"].sum()) - sum(n for n, _ in refits.values())
    if refits:
        counts = ", ".join(f"{m}: {n} of {bad}" for m, (n, bad) in refits.items())
        parts.append(f"The models were refitted without each observation whose Pareto k was above {PARETO_K_BAD}, "
                     f"the worst first ({counts}): those observations' elpd is exact, not PSIS's estimate.")
    if left:
        parts.append(f"{left} observation(s) have Pareto k > {PARETO_K_BAD} and were not refitted: the LOO estimate "
                     "is unreliable there; raise --max-refits or consider K-fold cross-validation.")
    parts += logo_reading(table)
    if table["aic"].notna().any():
        parts.append(f"AIC (ML fits) is lowest for {table.loc[table['aic'].astype(float).idxmin(), 'model']}.")
    return " ".join(parts)


def logo_reading(table: pd.DataFrame) -> list[str]:
    """Sentences on one comparison's leave-one-group-out: what it answers, its ranking, models without the group."""
    if "logo_group" not in table:
        return []
    table = table.assign(logo_group=table["logo_group"].fillna(""))
    group = next((g for g in table["logo_group"] if g), "")
    if not group:
        return []
    done = table[np.isfinite(table["elpd_logo"].astype(float))]
    parts = []
    if not done.empty:
        best = done.loc[done["elpd_logo"].astype(float).idxmax()]
        parts.append(f"Leave-one-{group}-out ({int(best['logo_refits'])} refits per model, each holding out every row "
                     f"of one {group}, scored jointly with that {group}'s effects drawn from the population) answers "
                     f"\"how well does the model predict a new {group}?\", where LOO answers \"how well does it "
                     f"predict a new observation in a {group} it has seen?\"; it ranks **{best['model']}** first "
                     f"(elpd {best['elpd_logo']:.1f}, SE {best['elpd_logo_se']:.1f}).")
        for _, r in done[done["model"] != best["model"]].iterrows():
            diff, se = -float(r["elpd_logo_diff"]), float(r["elpd_logo_diff_se"])
            if np.isfinite(diff):
                what = "a clear difference" if _loo_verdict(diff, se) == "clear" else "within noise"
                parts.append(f"{r['model']} is {diff:.1f} elpd behind by leave-one-{group}-out (SE {se:.1f}): {what}.")
    for _, r in table[~np.isfinite(table["elpd_logo"].astype(float))].iterrows():
        parts.append(f"{r['model']} has no leave-one-{group}-out: "
                     + (f"its formula has no {group} term." if not r["logo_group"] else "see the warnings."))
    return parts
