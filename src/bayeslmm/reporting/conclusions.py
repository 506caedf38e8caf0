"""The report's Conclusions: each model's question answered, the study's story, where lme4 and the
posterior differ and why.

Every sentence is generated from the results (the side-by-side table, the comparisons, the fits'
notes); nothing here knows about dragons. A verdict on an effect reads its interval: *clear* when the
interval of mass ``ci`` excludes 0, otherwise *no clear effect*, whatever P(> 0) says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslmm.numbers import format_number
from bayeslmm.reporting.document import Block, Bullets, Heading, Para

#: P(effect > 0) beyond which a reader may take an effect whose interval spans 0 as shown.
LEANS = 0.1


def verdict(low: float, high: float) -> str:
    """``positive`` or ``negative`` when the interval excludes 0, else ``none``."""
    if low > 0:
        return "positive"
    if high < 0:
        return "negative"
    return "none"


def _join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def _interval(low, high) -> str:
    return f"{format_number(low)} to {format_number(high)}"


def pooling(spec, study) -> str:
    """How a model pools the groups of the study: ``complete``, ``none`` (groups as fixed effects), ``partial``."""
    if spec.formula.random:
        return "partial"
    groups = {c for m in study.models for r in m.formula.random for c in r.group_columns}
    return "none" if set(spec.formula.fixed) & groups else "complete"


def effect_sentence(spec, row: pd.Series, p_pos: float | None, term: str, ci: float) -> str:
    """One model's answer about ``term``: the posterior, lme4 beside it, and the verdict in words."""
    v = verdict(row["post_conf_low"], row["post_conf_high"])
    lme4_v = verdict(row["lme4_conf_low"], row["lme4_conf_high"])
    method = {"ml": " (ML)", "reml": " (REML)"}.get(str(row.get("lme4_method", "")), "")
    numbers = (f"`{term}` = {format_number(row['post_mean'])} ({ci:.0%} interval "
               f"{_interval(row['post_conf_low'], row['post_conf_high'])}; lme4{method} "
               f"{format_number(row['lme4_estimate'])}, "
               f"{row['lme4_ci'] or 'Wald'} CI {_interval(row['lme4_conf_low'], row['lme4_conf_high'])})")
    if spec.formula.is_glmm:
        ratio = "odds ratio" if spec.formula.family == "binomial" else "rate ratio"
        numbers += (f", a {ratio} of {format_number(np.exp(row['post_median']))} "
                    f"({_interval(np.exp(row['post_conf_low']), np.exp(row['post_conf_high']))})")
    if v == "none":
        text = f"no clear effect: {numbers}; the interval includes 0"
        if p_pos is not None and (p_pos < LEANS or p_pos > 1 - LEANS):
            lean = "negative" if p_pos < LEANS else "positive"
            text += (f". P({term} > 0) = {format_number(p_pos, 3)} leans {lean}, but with 0 inside the interval "
                     f"this is not evidence of a {lean} effect")
    else:
        text = f"a clear {v} effect: {numbers}"
    if lme4_v != v:
        text += (f" (lme4's CI {'excludes' if lme4_v != 'none' else 'includes'} 0: the two answers differ at "
                 "the interval's edge)")
    return text


def _fixed_row(side: pd.DataFrame, model: str, term: str) -> pd.Series | None:
    r = side[(side["model"] == model) & (side["effect"] == "fixed") & (side["term"] == term)]
    return None if r.empty else r.iloc[0]


def story(study, side: pd.DataFrame, term: str, ci: float, models=None) -> list[str]:
    """The study's story across pooling: complete pooling vs groups as fixed effects vs partial pooling
    (of ``models``, all by default: one response's)."""
    kinds: dict[str, list[tuple[str, str]]] = {"complete": [], "none": [], "partial": []}
    for spec in models if models is not None else study.models:
        row = _fixed_row(side, spec.name, term)
        if row is not None:
            kinds[pooling(spec, study)].append((spec.name, verdict(row["post_conf_low"], row["post_conf_high"])))
    present = {k: v for k, v in kinds.items() if v}
    if len(present) < 2:
        return []
    groups = sorted({g for m in (models if models is not None else study.models) for g in m.formula.grouping_factors})
    shown = _join([f"`{g}`" for g in groups]) or "the groups"

    def said(items):
        names = ", ".join(n for n, _ in items)
        verdicts = {v for _, v in items}
        what = (f"a clear {verdicts.pop()} effect" if verdicts <= {"positive"} or verdicts <= {"negative"} else
                "no clear effect" if verdicts == {"none"} else "mixed answers")
        return names, what

    out = []
    parts = []
    for kind, label in (("complete", "pooling every observation (complete pooling"),
                        ("none", "with the groups as fixed effects (no pooling"),
                        ("partial", f"with {shown} as random effects (partial pooling")):
        if kind in present:
            names, what = said(present[kind])
            parts.append(f"{label}: {names}), `{term}` has {what}")
    out.append("Across the models: " + "; ".join(parts) + ".")
    pooled = {v for _, v in present.get("complete", [])}
    partial = {v for _, v in present.get("partial", [])}
    if pooled and partial and pooled != {"none"} and partial == {"none"}:
        out.append(f"The pooled association does not survive once {shown} are modelled: it came from differences "
                   f"between groups (some groups have both larger `{term}` and higher responses), not from `{term}` "
                   "within a group. That is what the mixed models are for.")
    elif pooled == {"none"} and partial and "none" not in partial:
        out.append(f"The effect appears only once {shown} are modelled: differences between groups were hiding it.")
    elif len(pooled | partial) == 1:
        out.append("Modelling the groups does not change the answer, though it changes the interval's width.")
    return out


def design_notes(study, fits: dict, side: pd.DataFrame, term: str | None, ci: float) -> list[str]:
    """Models the checks flagged for their grouping structure (crossed where the data are nested), and
    what the mistake changed, against a model of the same comparison without the flag."""
    out = []
    flagged = {s.name: [n for n in fits[s.name].notes if "nest them" in n] for s in study.models}
    for name, notes in flagged.items():
        if not notes:
            continue
        text = f"**{name}**: {notes[0].rstrip('.')}."
        peers = [m for c in study.comparisons if name in c.models for m in c.models
                 if m != name and not flagged.get(m) and study.model(m).formula.random]
        row = _fixed_row(side, name, term) if term else None
        peer = next((p for p in peers if term and _fixed_row(side, p, term) is not None), None)
        if row is not None and peer is not None:
            prow = _fixed_row(side, peer, term)
            mine = _interval(row["post_conf_low"], row["post_conf_high"])
            theirs = _interval(prow["post_conf_low"], prow["post_conf_high"])
            text += (f" Its `{term}` is {format_number(row['post_mean'])} ({mine}) against "
                     f"{format_number(prow['post_mean'])} ({theirs}) in {peer}, which models the groups as they "
                     "are; read its sds with the warning in mind.")
        out.append(text)
    return out


def disagreements(side: pd.DataFrame, limit: int = 6) -> tuple[int, list[str], list[str]]:
    """How many parameters lme4 and the posterior differ on, each (at most ``limit``) with the side-by-side
    table's reason, and why such differences arise, in words."""
    rows = side[side["effect"].isin(["fixed", "ran_pars"]) & side["agreement"].notna()]
    differ = rows[~rows["agreement"].isin(["agree", ""])]
    out = [f"{r['model']}, `{r['term']}`{f' ({r.group})' if isinstance(r['group'], str) and r['group'] else ''}: "
           f"{r['agreement']}" for _, r in differ.head(limit).iterrows()]
    if len(differ) > limit:
        out.append(f"and {len(differ) - limit} more (sidebyside.csv, column `agreement`)")
    reasons = []
    if differ["agreement"].str.contains(r"only \d+ groups", regex=True).any():
        reasons.append("a handful of groups says little about their sd: lme4's interval follows the likelihood "
                       "alone, the posterior also the sd's prior, whose tail it then follows")
    sds = differ[differ["effect"] == "ran_pars"]
    if sds["agreement"].str.contains("sd from lme4's estimate").any():
        reasons.append("the posterior of an sd is skewed to the right, so its mean lies above its mode, which is "
                       "what lme4's (RE)ML estimate is")
    return len(differ), out, reasons


def comparison_sentences(study, comparison: pd.DataFrame) -> list[str]:
    """Each comparison in a sentence: LOO's choice, and the likelihood-ratio test where there is one."""
    from bayeslmm.summary.compare import _loo_verdict

    out = []
    for comp in study.comparisons:
        t = comparison[comparison["comparison"] == comp.name] if not comparison.empty else comparison
        if t.empty:
            continue
        best = t.sort_values("rank").iloc[0]
        parts = [f"LOO prefers **{best['model']}**"]
        others = t[t["model"] != best["model"]]
        clear = [r["model"] for _, r in others.iterrows()
                 if _loo_verdict(-float(r["elpd_diff"]), float(r["elpd_diff_se"])) == "clear"]
        noise = [r["model"] for _, r in others.iterrows() if r["model"] not in clear]
        if clear:
            parts.append(f"clearly over {', '.join(clear)}")
        if noise:
            parts.append(f"within noise of {', '.join(noise)}")
        lrt = t[np.isfinite(t["lrt_p"].astype(float))]
        for _, r in lrt.iterrows():
            parts.append(f"the likelihood-ratio test of {r['model']} against {r['lrt_against']} gives "
                         f"p = {format_number(r['lrt_p'], 3)}")
        out.append(f"{comp.name}: " + "; ".join(parts) + ".")
    return out


def conclusions_section(study, fits: dict, side: pd.DataFrame, comparison: pd.DataFrame, term: str | None,
                        p_pos: dict[str, float], ci: float = 0.95) -> list[Block]:
    """The Conclusions section, first in the report."""
    blocks: list[Block] = [Heading("Conclusions", 2)]
    one = len(study.models) == 1
    answers = []
    for spec in study.models:
        row = _fixed_row(side, spec.name, term) if term else None
        if row is None:
            continue
        q = f" *{spec.question.strip()}*" if spec.question.strip() else ""
        answer = effect_sentence(spec, row, p_pos.get(spec.name), term, ci)
        answers.append(f"{answer[0].upper()}{answer[1:]}." if one else f"**{spec.name}**{q} {answer[0].upper()}"
                       f"{answer[1:]}.")
    if one and answers:
        blocks.append(Para(answers[0]))
    elif answers:
        blocks.append(Bullets(tuple(answers)))
    if term and not one:  # the story of each response (a study may ask about several)
        responses = list(dict.fromkeys(m.formula.response for m in study.models))
        for response in responses:
            models = [m for m in study.models if m.formula.response == response]
            lines = story(study, side, term, ci, models)
            if lines and len(responses) > 1:
                lines[0] = f"For `{response}`: {lines[0][0].lower()}{lines[0][1:]}"
            blocks += [Para(line) for line in lines]
    design = design_notes(study, fits, side, term, ci)
    if design:
        blocks += [Para("**Grouping structure.**"), Bullets(tuple(design))]
    comps = comparison_sentences(study, comparison)
    if comps:
        blocks += [Para("**Comparisons.**"), Bullets(tuple(comps))]
    n_differ, differ, reasons = disagreements(side)
    total = int(side["effect"].isin(["fixed", "ran_pars"]).sum())
    if differ:
        why = f" Why: {'; and '.join(reasons)}." if reasons else ""
        blocks.append(Para(f"**lme4 and the posterior** agree on {total - n_differ} of {total} parameters' "
                           f"estimates and intervals.{why}"))
        blocks.append(Bullets(tuple(differ)))
    else:
        what = "the one parameter's" if total == 1 else f"all {total} parameters'"
        blocks.append(Para(f"**lme4 and the posterior** agree on {what} estimates and intervals."))
    return blocks
