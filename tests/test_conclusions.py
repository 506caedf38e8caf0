"""The report's Conclusions are generated from the results: verdicts from intervals, the pooling story,
grouping mistakes, comparisons and lme4/posterior differences; one-model wording for one model."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from bayeslmm.model.study import from_dict
from bayeslmm.reporting.conclusions import conclusions_section, effect_sentence, pooling, verdict
from bayeslmm.reporting.document import to_markdown

STUDY = {"model": [
    {"name": "pooled", "formula": "y ~ x", "question": "Does x matter?"},
    {"name": "fixed", "formula": "y ~ x + g"},
    {"name": "mixed", "formula": "y ~ x + (1|g)", "question": "With groups?"},
    {"name": "wrong", "formula": "y ~ x + (1|g) + (1|h)"},
    {"name": "null", "formula": "y ~ 1 + (1|g)"},
], "comparison": [{"name": "x", "models": ["null", "mixed"]}, {"name": "structure", "models": ["mixed", "wrong"]}]}


def _row(model, term, est, lo, hi, effect="fixed", group="", agreement="agree", method="reml"):
    return {"model": model, "effect": effect, "group": group, "term": term, "lme4_method": method,
            "lme4_estimate": est, "lme4_conf_low": lo, "lme4_conf_high": hi, "lme4_ci": "profile",
            "post_mean": est, "post_median": est, "post_conf_low": lo, "post_conf_high": hi, "agreement": agreement}


def _side():
    return pd.DataFrame([
        _row("pooled", "x", 8.0, 6.0, 10.0, method="ols"), _row("fixed", "x", 0.5, -1.0, 2.0, method="ols"),
        _row("mixed", "x", 0.4, -1.5, 2.3), _row("wrong", "x", 0.3, -1.7, 2.4),
        _row("wrong", "sd__(Intercept)", 2.0, 0.1, 9.0, "ran_pars", "h",
             "posterior interval 3.8x wider than lme4's (only 3 groups)"),
        _row("null", "(Intercept)", 50.0, 40.0, 60.0),
    ])


def _comparison():
    base = {"rank": 0, "elpd_diff": 0.0, "elpd_diff_se": 0.0, "lrt_p": float("nan"), "lrt_against": ""}
    return pd.DataFrame([
        {**base, "comparison": "x", "model": "null"},
        {**base, "comparison": "x", "model": "mixed", "rank": 1, "elpd_diff": -0.8, "elpd_diff_se": 0.4,
         "lrt_p": 0.74, "lrt_against": "null"},
        {**base, "comparison": "structure", "model": "mixed"},
        {**base, "comparison": "structure", "model": "wrong", "rank": 1, "elpd_diff": -20.0, "elpd_diff_se": 4.0},
    ])


def _fits(study):
    nest = "labels of 'h' recur within every level of 'g' ... nest them: (1|g/h)"
    return {s.name: SimpleNamespace(notes=(nest,) if s.name == "wrong" else ()) for s in study.models}


def test_verdicts_read_the_interval_not_the_probability():
    assert (verdict(0.1, 2), verdict(-2, -0.1), verdict(-1, 1)) == ("positive", "negative", "none")
    spec = from_dict(STUDY).model("mixed")
    text = effect_sentence(spec, pd.Series(_row("mixed", "x", -1.0, -2.1, 0.05)), 0.046, "x", 0.95)
    assert text.startswith("no clear effect") and "P(x > 0) = 0.046 leans negative" in text
    assert "not evidence of a negative effect" in text and "lme4 (REML) -1" in text


def test_pooling_kinds():
    study = from_dict(STUDY)
    assert [pooling(s, study) for s in study.models] == ["complete", "none", "partial", "partial", "partial"]


def test_conclusions_tell_the_story_from_the_results():
    study = from_dict(STUDY)
    md = to_markdown(conclusions_section(study, _fits(study), _side(), _comparison(), "x",
                                         {"pooled": 1.0, "mixed": 0.66}, 0.95))
    assert md.startswith("## Conclusions")
    assert "**pooled** *Does x matter?* A clear positive effect: `x` = 8" in md
    assert "**mixed** *With groups?* No clear effect" in md
    assert "The pooled association does not survive once `g` and `h` are modelled" in md
    assert "**wrong**: labels of 'h' recur" in md and "against 0.4 (-1.5 to 2.3) in mixed" in md
    assert "x: LOO prefers **null**; within noise of mixed; the likelihood-ratio test of mixed against null gives " \
           "p = 0.74." in md
    assert "structure: LOO prefers **mixed**; clearly over wrong." in md
    assert "agree on 5 of 6 parameters" in md and "only 3 groups" in md and "a handful of groups" in md


def test_one_model_gets_one_model_wording():
    study = from_dict({"model": [{"name": "fit", "formula": "y ~ x + (1|g)"}]})
    side = _side()
    side = side[side["model"] == "mixed"].assign(model="fit")
    md = to_markdown(conclusions_section(study, {"fit": SimpleNamespace(notes=())}, side, pd.DataFrame(), "x",
                                         {"fit": 0.6}, 0.9))
    assert "No clear effect: `x` = 0.4 (90% interval" in md
    assert "**fit**" not in md and "Across the models" not in md and "agree on the one parameter's estimates" in md


def test_each_response_gets_its_own_story():
    models = [("a.lm", "y ~ x"), ("a.mixed", "y ~ x + (1|g)"), ("b.lm", "z ~ x"), ("b.mixed", "z ~ x + (1|g)")]
    study = from_dict({"model": [{"name": n, "formula": f} for n, f in models]})
    side = pd.DataFrame([_row("a.lm", "x", 8.0, 6.0, 10.0, method="ols"), _row("a.mixed", "x", 0.4, -1.5, 2.3),
                         _row("b.lm", "x", 3.0, 2.0, 4.0, method="ols"), _row("b.mixed", "x", 2.8, 1.5, 4.1)])
    fits = {s.name: SimpleNamespace(notes=()) for s in study.models}
    md = to_markdown(conclusions_section(study, fits, side, pd.DataFrame(), "x", {}, 0.95))
    assert "For `y`: across the models" in md and "For `z`: across the models" in md
    assert "The pooled association does not survive" in md  # y's story
    assert "Modelling the groups does not change the answer" in md  # z's
