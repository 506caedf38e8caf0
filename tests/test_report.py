"""The report of the real-data study: lme4 beside the posterior, comparisons, exported tables."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm.cli import main
from bayeslmm.reporting import report
from bayeslmm.runner import Fitted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def written(study, dragons, real_fits, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    result = report.write(Fitted(study, dragons, real_fits), root,
                          source="dragons.RData")
    return root, result


def _csv(root, name):
    df = pd.read_csv(root / name, keep_default_na=False, na_values=[""])
    for col in ("group", "level", "lme4_ci", "lrt_against"):
        if col in df:
            df[col] = df[col].fillna("")
    return df


def test_files(written):
    root, _ = written
    for name in ("tidy.csv", "sidebyside.csv", "comparison.csv", "variance_partition.csv", "report.md",
                 "report.html"):
        assert (root / name).is_file(), name
    for fmt in ("txt", "md", "tex", "html"):
        assert (root / "tables" / f"mixed.lmer2.{fmt}").is_file()


def test_tidy_has_every_method(written):
    tidy = _csv(written[0], "tidy.csv")
    methods = tidy.groupby("model")["method"].agg(lambda m: set(m)).to_dict()
    assert methods["basic.lm"] == {"bayes", "ols"}
    assert methods["mixed.lmer2"] == {"bayes", "reml", "ml"}


def test_side_by_side_matches_tidy_and_lme4(written, reference):
    root, _ = written
    side = _csv(root, "sidebyside.csv")
    tidy = _csv(root, "tidy.csv")
    rows = side[side["model"] == "mixed.lmer2"].set_index(["effect", "group", "term"])
    # lme4 column: the REML fit, i.e. R's numbers
    assert rows.loc[("fixed", "", "bodyLength2"), "lme4_estimate"] == pytest.approx(
        reference["mixed.lmer2"]["fixef"]["bodyLength2"], rel=1e-4)
    assert rows.loc[("ran_pars", "mountainRange", "sd__(Intercept)"), "lme4_estimate"] == pytest.approx(
        reference["mixed.lmer2"]["sd"]["mountainRange"], rel=1e-4)
    # posterior columns: exactly the Bayesian rows of tidy.csv
    bayes = tidy[(tidy["model"] == "mixed.lmer2") & (tidy["method"] == "bayes")].set_index(["effect", "group", "term"])
    for key, row in rows.iterrows():
        assert row["post_mean"] == pytest.approx(bayes.loc[key, "estimate"], rel=1e-12)
        assert row["post_conf_low"] == pytest.approx(bayes.loc[key, "conf_low"], rel=1e-12)
    assert len(rows) == 5  # one screen: 2 fixed effects, 3 standard deviations


def test_disagreement_is_flagged_where_it_exists(written):
    side = _csv(written[0], "sidebyside.csv").set_index(["model", "effect", "group", "term"])
    # basic.lm: pooled regression, the posterior reproduces OLS
    assert side.loc[("basic.lm", "fixed", "", "bodyLength2"), "agreement"] == "agree"
    # mixed.WRONG's site sd: 3 levels, a right-skewed posterior far above lme4's 3.2
    assert side.loc[("mixed.WRONG", "ran_pars", "site", "sd__(Intercept)"), "agreement"] != "agree"


def test_lrt_reproduces_the_tutorial(written, reference):
    comp = _csv(written[0], "comparison.csv")
    full = comp[(comp["comparison"] == "body length (fixed effect)") & (comp["model"] == "full.lmer")].iloc[0]
    ref = reference["anova_reduced_vs_full"]
    assert full["lrt_chisq"] == pytest.approx(ref["chisq"], rel=1e-4)
    assert full["lrt_df"] == ref["df"]
    assert full["lrt_p"] == pytest.approx(ref["p"], rel=1e-4)
    assert np.isfinite(full["elpd_loo"]) and np.isfinite(full["elpd_diff_se"])
    weights = comp.groupby("comparison")["stacking_weight"].sum()
    assert np.allclose(weights, 1.0, atol=1e-6)


def test_variance_partition(written, reference):
    vp = _csv(written[0], "variance_partition.csv")
    row = vp[(vp["model"] == "mixed.lmer") & (vp["group"] == "mountainRange")].iloc[0]
    assert row["lme4_share"] == pytest.approx(reference["icc_mixed.lmer"], rel=1e-4)
    assert row["post_conf_low"] < row["lme4_share"] < row["post_conf_high"]


def test_report_reads_the_comparison(written):
    md = (written[0] / "report.md").read_text()
    assert "chisq = 0.287 on 1 df" in md
    assert "P(bodyLength2 > 0)" in md
    assert "LOO and the LRT agree" in md


def test_conclusions_come_first_and_answer_the_tutorial(written):
    """On the tutorial's data (real_fits): the pooled slope is clear, the mixed models' are not, and the
    crossed-site model carries the nesting warning."""
    md = (written[0] / "report.md").read_text()
    head = md[md.index("## Conclusions"):md.index("## Summary")]
    assert md.index("## Conclusions") < md.index("## Summary") < md.index("## Models")
    assert "**basic.lm** *" in head and "A clear positive effect: `bodyLength2`" in head
    assert "**mixed.lmer2** *" in head and "**mixed.lmer2** *Sites nested" in head
    assert "The pooled association does not survive" in head
    assert "**mixed.WRONG**: " in head and "nest them" in head


@pytest.mark.parametrize("fmt", ["text", "markdown", "latex", "html"])
def test_table_command(written, capsys, fmt):
    assert main(["table", str(written[0]), "--model", "mixed.lmer2", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "bodyLength2" in out
    if fmt == "latex":
        assert "\\begin{tabular}" in out and "sd\\_\\_(Intercept)" in out
    if fmt == "html":
        assert out.startswith("<table>")


def test_r2_lme4_inside_the_posterior_interval(written):
    """Nakagawa's R² per model: the posterior interval (per-draw R²) holds lme4's plug-in value for the
    tutorial's models, whose posteriors agree with lme4 (the side-by-side table)."""
    r2 = _csv(written[0], "r2.csv")
    assert set(r2["r2"]) == {"marginal", "conditional"} and set(r2["model"]) >= {"mixed.lmer2", "basic.lm"}
    for _, r in r2[r2["model"].isin(["mixed.lmer", "mixed.lmer2"])].iterrows():
        assert r["post_conf_low"] < r["lme4_estimate"] < r["post_conf_high"], r.to_dict()
    basic = r2[r2["model"] == "basic.lm"].set_index("r2")["lme4_estimate"]
    assert basic["marginal"] == pytest.approx(basic["conditional"])  # no random effects
    assert "**R²** (Nakagawa & Schielzeth" in (written[0] / "report.md").read_text()


def test_aicc_beside_aic(written, reference):
    """AICc = AIC + 2k(k+1)/(n-k-1): with n = 480 rows it is a hair above AIC for every model."""
    comp = _csv(written[0], "comparison.csv")
    k, n = comp["n_par"], 480
    np.testing.assert_allclose(comp["aicc"], comp["aic"] + 2 * k * (k + 1) / (n - k - 1), rtol=1e-12)
    assert (comp["aicc"] > comp["aic"]).all()


def test_one_lme4_interval_per_number(written):
    """tidy.csv and the figures take lme4's interval from the side-by-side table: the profile interval of
    a linear mixed model (its REML and ML rows share it, as R's confint), Wald for lm; named in conf_method."""
    root = written[0]
    tidy, side = _csv(root, "tidy.csv"), _csv(root, "sidebyside.csv")
    s = side[(side["model"] == "mixed.lmer2") & (side["term"] == "bodyLength2")].iloc[0]
    rows = tidy[(tidy["model"] == "mixed.lmer2") & (tidy["term"] == "bodyLength2")].set_index("method")
    for method in ("reml", "ml"):
        assert rows.loc[method, "conf_method"] == "profile"
        assert (rows.loc[method, "conf_low"], rows.loc[method, "conf_high"]) == (s["lme4_conf_low"],
                                                                                 s["lme4_conf_high"])
    assert rows.loc["bayes", "conf_method"] == "ETI"
    ols = tidy[(tidy["model"] == "basic.lm") & (tidy["method"] == "ols")]
    assert ols.loc[ols["conf_low"].notna(), "conf_method"].eq("Wald").all()
    assert ols.loc[ols["conf_low"].isna(), "conf_method"].isna().all()  # the residual sd: no interval, no kind
