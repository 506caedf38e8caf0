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
COMPARISON_COLUMNS = [
    "comparison", "model", "rank", "elpd_loo", "elpd_se", "elpd_diff", "elpd_diff_se", "p_loo",
    "pareto_k_bad", "stacking_weight", "n_par", "ml_loglik", "aic", "aicc", "bic",
    "lrt_against", "lrt_chisq", "lrt_df", "lrt_p", "pair_elpd_diff", "pair_elpd_diff_se",
]


#: Largest block of pointwise log-likelihood held at once by :func:`loo` (draws x rows x 8 bytes).
LOO_CHUNK_BYTES = 2**27


def loo(fit, chunk_bytes: int = LOO_CHUNK_BYTES) -> object:
    """PSIS-LOO of one fit (ArviZ's ``ELPDDataLOO``, pointwise), in bounded memory.

    The pointwise log-likelihood is recomputed (:func:`bayeslmm.engines.bayes.log_likelihood`) a
    block of rows at a time, at most ``chunk_bytes`` of it at once. PSIS smooths each
    observation's weights on its own, so every pointwise value is exactly what ArviZ's
    ``loo`` gives on the whole array; the relative efficiency is ArviZ's (mean ESS of the
    posterior over the number of draws), the totals are ArviZ's sums of the pointwise values.
    """
    import arviz as az
    import xarray as xr

    from bayeslmm.engines.bayes import log_likelihood

    post = fit.idata["posterior"]
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    S, n = chains * draws, len(fit.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if chains == 1:
            reff = 1.0
        else:
            ess = post.to_dataset().azstats.ess(method="mean")
            reff = np.hstack([ess[v].values.flatten() for v in ess.data_vars]).mean() / S
        step = max(1, chunk_bytes // (8 * S))
        parts = [log_likelihood(fit, slice(i, i + step)).azstats.loo(sample_dims=["chain", "draw"], r_eff=reff)
                 for i in range(0, n, step)]
        elpd_i, pareto_k, p_loo_i = (xr.concat([p[j] for p in parts], "__obs__") for j in range(3))
        elpd, se, p_loo, _ = elpd_i.azstats.loo_summary(p_loo_i)
    good_k = min(1 - 1 / np.log10(S), 0.7) if S > 1 else 0.7  # ArviZ's sample-size-dependent threshold
    return az.ELPDDataLOO(elpd=elpd, se=se, p=p_loo, n_samples=S, n_data_points=n, scale="log",
                          warning=bool(np.any(pareto_k.values > good_k)), good_k=good_k, elpd_i=elpd_i,
                          pareto_k=pareto_k, approx_posterior=False, p_loo_i=p_loo_i)


def pair_difference(a, b) -> tuple[float, float]:
    """elpd_loo(a) - elpd_loo(b) and its standard error from the pointwise values (ELPDData)."""
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
            "stacking_weight": table["weight"].astype(float),
        },
        index=table.index,
    )
    out.index.name = "model"
    return out


def compare_models(name: str, models: tuple[str, ...], bayes_fits: dict, ml_fits: dict[str, FreqFit]) -> pd.DataFrame:
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
    """
    loos = {m: loo(bayes_fits[m]) for m in models}
    table = _compare_loos(loos).reindex(list(models))
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
    out["rank"] = out["rank"].astype(int)
    return out[COMPARISON_COLUMNS]


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
        if r["pareto_k_bad"] > 0:
            out.append(f"{r['model']}: {int(r['pareto_k_bad'])} observation(s) with Pareto k > {PARETO_K_BAD}: "
                       "PSIS-LOO is unreliable for them; use K-fold cross-validation or moment matching")
    return out


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
    bad = int(table["pareto_k_bad"].sum())
    if bad:
        parts.append(f"{bad} observation(s) have Pareto k > {PARETO_K_BAD}: the LOO estimate is unreliable there; "
                     "consider K-fold cross-validation.")
    if table["aic"].notna().any():
        parts.append(f"AIC (ML fits) is lowest for {table.loc[table['aic'].astype(float).idxmin(), 'model']}.")
    return " ".join(parts)
