"""Write a report folder: tidy.csv, figures/, report.md and a self-contained report.html."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from bayeslmm.document import Block, Bullets, Code, Heading, Para, Table, to_html, to_markdown
from bayeslmm.figures import make_figures
from bayeslmm.tables import diagnostics, tidy_bayes


def model_section(spec, fit, tidy: pd.DataFrame, diag: dict) -> list[Block]:
    """Heading, question, formula, parameter table, diagnostics and priors of one model."""
    rows = tidy[(tidy["model"] == spec.name) & tidy["effect"].isin(["fixed", "ran_pars"])]
    table = rows[["effect", "group", "term", "estimate", "std_error", "conf_low", "conf_high", "r_hat",
                  "ess_bulk"]].rename(columns={"estimate": "mean", "std_error": "sd", "conf_low": "2.5%",
                                               "conf_high": "97.5%"})
    blocks: list[Block] = [Heading(spec.name, 3)]
    if spec.question:
        blocks.append(Para(f"**Question.** {spec.question}"))
    blocks += [Code(spec.formula.text), Table(table, "Posterior mean, sd and 95% equal-tailed interval")]
    how = "reused from the cache" if fit.cached else f"fitted in {fit.seconds:.1f} s"
    blocks.append(Para(
        f"Sampler: {diag['chains']} chains x {diag['draws']} draws ({how}); divergences: {diag['divergences']}; "
        f"max r_hat {diag['max_r_hat']:.3f}; min bulk ESS {diag['min_ess_bulk']:.0f}; "
        f"min tail ESS {diag['min_ess_tail']:.0f}."))
    blocks.append(Bullets(tuple(f"`{k}` ~ {v}" for k, v in fit.priors.items())))
    for note in (*fit.notes, *fit.sampler_notes):
        blocks.append(Para(f"**Warning.** {note}"))
    return blocks


def write(result, root: Path, *, ci: float = 0.95, source: str = "") -> object:
    """Write the report files into ``root`` and return ``result`` with its tidy table.

    Parameters
    ----------
    result : RunResult
        Fits of the study (``tidy`` may be empty; it is computed here).
    root : Path
        The (staged) report folder.
    ci : float
        Mass of the equal-tailed credible intervals.
    source : str
        Where the data came from, for the report.
    """
    root.mkdir(parents=True, exist_ok=True)
    tidy = pd.concat([tidy_bayes(f, ci) for f in result.fits.values()], ignore_index=True)
    tidy.to_csv(root / "tidy.csv", index=False)
    diags = {name: diagnostics(fit, tidy[tidy["model"] == name]) for name, fit in result.fits.items()}
    figures = make_figures(result, root, tidy)
    study = result.study
    opts = next(iter(result.fits.values())).options
    blocks: list[Block] = [Heading(study.title, 1)]
    if study.description:
        blocks.append(Para(study.description))
    prep = [f"`{k}` = `{v}` standardised (mean 0, sd 1 with n - 1, as R's `scale()`)" for k, v in study.scale.items()]
    prep += [f"`{k}` = `{':'.join(v)}` (explicit nesting, as R's `factor(a:b)`)" for k, v in study.nest.items()]
    blocks += [
        Heading("Data and settings", 2),
        Bullets((f"data: `{source}`, {len(result.data)} rows",
                 *prep,
                 f"sampler: Bambi + PyMC NUTS ({opts.sampler}), {opts.chains} chains x {opts.draws} draws "
                 f"after {opts.tune} tuning steps, target_accept {opts.target_accept}, seed {opts.seed}",
                 f"intervals: {ci:.0%} equal-tailed posterior intervals (the {(1 - ci) / 2:.1%} and "
                 f"{(1 + ci) / 2:.1%} quantiles); estimate = posterior mean, std_error = posterior sd")),
    ]
    diag_table = pd.DataFrame([{"model": k, **v} for k, v in diags.items()])
    problems = [f"{name}: {note}" for name, fit in result.fits.items() for note in fit.sampler_notes]
    advice = [f"{name}: {note}" for name, fit in result.fits.items() for note in fit.notes]
    if problems or advice:
        blocks += [Heading("Warnings", 2),
                   Para("What the checks found in the data, the formulas and the sampler's diagnostics. Each says "
                        "what to do."),
                   Bullets(tuple(dict.fromkeys(problems + advice)))]
    blocks += [Heading("Models", 2)]
    for spec in study.models:
        blocks += model_section(spec, result.fits[spec.name], tidy, diags[spec.name])
    blocks += [Heading("Figures", 2), *figures]
    blocks += [Heading("Sampler diagnostics", 2), Table(diag_table, digits=3)]
    blocks.append(Para("Every model passed the sampler checks (no divergences, r_hat <= 1.01, ESS >= 400)."
                       if not problems else "**Sampler warnings.** " + "; ".join(problems)))
    (root / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (root / "report.html").write_text(to_html(blocks, study.title, root), encoding="utf-8")
    return dataclasses.replace(result, tidy=tidy, notes=tuple(problems))
