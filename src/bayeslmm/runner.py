"""Run a whole study, or one formula, from data to a report folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from bayeslmm import bayes
from bayeslmm import data as data_mod
from bayeslmm.bayes import BayesFit, SamplerOptions
from bayeslmm.checks import NaAction
from bayeslmm.formula import Formula, parse
from bayeslmm.notices import collected
from bayeslmm.study import ModelSpec, Study


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunResult:
    """What a run produced: the fits, their tidy table, the report folder and run-level warnings.

    ``notes`` are the run's sampler-side warnings (LOO's Pareto k: ``--strict`` fails on them);
    ``report_notes`` the other warnings (lme4's side, the report, loading the data: Python
    warnings turned into text by :func:`bayeslmm.notices.collected`), shown but never a failure.
    """

    study: Study
    data: pd.DataFrame
    fits: dict[str, BayesFit]
    tidy: pd.DataFrame
    out: Path | None
    seconds: float
    notes: tuple[str, ...] = field(default=())
    report_notes: tuple[str, ...] = field(default=())


def prepared_data(study: Study, data: str | Path | None = None, obj: str | None = None) -> pd.DataFrame:
    """Load the study's data (or ``data`` instead) and apply its preparation."""
    source = str(data) if data is not None else study.source
    df = data_mod.load(source, obj=obj or study.data_object)
    return data_mod.prepare(df, study.scale, study.nest)


def fit_models(
    models: tuple[ModelSpec, ...],
    df: pd.DataFrame,
    options: SamplerOptions,
    *,
    cache_dir: Path | None = None,
    save_dir: Path | None = None,
    refit: bool = False,
    echo: Callable[[str], None] = _stderr,
    progress: bool = True,
    na: NaAction = "drop",
    log_likelihood: bool = True,
) -> dict[str, BayesFit]:
    """Fit each model in turn, saying which one and how many are left.

    Every model is checked against the data first, so a mistake in the last model stops the
    run before any sampling.
    """
    from bayeslmm.checks import validate
    from bayeslmm.errors import BayeslmmError

    for spec in models:
        try:
            validate(spec.formula, df, na)
        except BayeslmmError as exc:
            if len(models) == 1:
                raise
            raise type(exc)(f"model {spec.name!r}: {exc}") from exc
    fits: dict[str, BayesFit] = {}
    for i, spec in enumerate(models, 1):
        echo(f"[{i}/{len(models)}] {spec.name}: {spec.formula.text}")
        with collected() as caught:  # library warnings become notes or nothing, never raw text on stderr
            fit = bayes.fit(spec.formula, df, options, name=spec.name, cache_dir=cache_dir, save_dir=save_dir,
                            refit=refit, progress=progress, na=na, log_likelihood=log_likelihood)
        if caught:
            fit = replace(fit, notes=(*fit.notes, *caught))
        how = "reused cached posterior" if fit.cached else f"fitted in {fit.seconds:.1f} s"
        echo(f"      {how} ({fit.engine_note}); {len(models) - i} model(s) left")
        for note in (*fit.notes, *fit.sampler_notes):
            echo(f"warning: {spec.name}: {note}" if len(models) > 1 else f"warning: {note}")
        fits[spec.name] = fit
    return fits


def run_study(
    study: Study,
    *,
    data: str | Path | None = None,
    obj: str | None = None,
    out: str | Path | None = None,
    options: SamplerOptions | None = None,
    ci: float = 0.95,
    refit: bool = False,
    echo: Callable[[str], None] = _stderr,
    progress: bool = True,
    na: NaAction = "drop",
) -> RunResult:
    """Run a study end to end and write its report folder (atomically).

    Parameters
    ----------
    study : Study
    data : path, optional
        Data file to use instead of the study's source.
    obj : str, optional
        Object name inside an ``.RData`` file.
    out : path, optional
        Report folder; ``out/<study name>`` by default.
    options : SamplerOptions, optional
    ci : float
        Mass of the credible intervals in tables and figures.
    refit : bool
        Ignore cached posteriors.
    echo : callable
        Where progress lines go (stderr by default).
    progress : bool
        Show the sampler's own progress bars.
    na : {"drop", "fail"}
        What to do with rows that have missing values in a model's columns.
    """
    from bayeslmm import report
    from bayeslmm.output import staged_folder

    options = options or SamplerOptions()
    start = time.perf_counter()
    out_dir = Path(out) if out is not None else Path("out") / study.name
    with collected() as stray:  # what no inner stage turned into a note (loading the data, ...)
        df = prepared_data(study, data, obj)
        with staged_folder(out_dir) as stage:
            fits = fit_models(study.models, df, options, cache_dir=out_dir / "fits", save_dir=stage / "fits",
                              refit=refit, echo=echo, progress=progress, na=na)
            echo("writing report ...")
            result = RunResult(study, df, fits, pd.DataFrame(), out_dir, 0.0)
            result = report.write(result, stage, ci=ci, source=str(data) if data else study.source)
    seconds = time.perf_counter() - start
    report_notes = (*result.report_notes, *stray)
    for note in (*result.notes, *report_notes):
        echo(f"warning: {note}")
    echo(f"report written to {out_dir}/ in {seconds:.1f} s")
    return RunResult(study, df, fits, result.tidy, out_dir, seconds, result.notes, report_notes)


def fit_formula(
    data: str | Path,
    formula: str | Formula,
    *,
    obj: str | None = None,
    out: str | Path | None = None,
    options: SamplerOptions | None = None,
    ci: float = 0.95,
    refit: bool = False,
    echo: Callable[[str], None] = _stderr,
    progress: bool = True,
    na: NaAction = "drop",
) -> RunResult:
    """Fit one formula to a data file; with ``out``, write the same kind of report folder.

    Without ``out`` the result's tidy table holds the fixed effects and standard deviations
    (what the console shows; ``fit.ranef()`` gives the group levels), and the fit keeps no
    pointwise log-likelihood (no LOO is computed, and for large data it is the largest cost).
    """
    formula = parse(formula) if isinstance(formula, str) else formula
    study = Study(
        name="fit", title=f"{formula.text}", description=f"One model fitted to {data}.",
        source=str(data), data_object=obj, models=(ModelSpec("model", formula),),
    )
    if out is not None:
        return run_study(study, out=out, options=options, ci=ci, refit=refit, echo=echo, progress=progress, na=na)
    from bayeslmm.tables import fixed_terms, tidy_posterior

    with collected() as stray:  # what fit_models did not turn into a note (loading the data, the summary)
        df = prepared_data(study)
        fits = fit_models(study.models, df, options or SamplerOptions(), echo=echo, progress=progress, na=na,
                          log_likelihood=False)
        tidy = pd.concat([tidy_posterior(f.idata["posterior"], f.name, ci, effects=("fixed", "ran_pars"),
                                         fixed_terms=fixed_terms(f)) for f in fits.values()], ignore_index=True)
    for note in stray:
        echo(f"warning: {note}")
    return RunResult(study, df, fits, tidy, None, 0.0, report_notes=tuple(stray))
