"""Run a whole study, or one formula, from data to a report folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from bayeslmm.engines import bayes
from bayeslmm.engines.bayes import BayesFit
from bayeslmm.model import data as data_mod
from bayeslmm.model.formula import Formula, parse
from bayeslmm.model.options import RunOptions, SamplerOptions, check_nagq
from bayeslmm.model.priors import Priors
from bayeslmm.model.study import ModelSpec, Study
from bayeslmm.notices import collected
from bayeslmm.store import Store


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Fitted:
    """A study's fits before the report: the study, its prepared data and one fit per model."""

    study: Study
    data: pd.DataFrame
    fits: dict[str, BayesFit]


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
    run: RunOptions | None = None,
    *,
    cache_dir: Path | None = None,
    save_dir: Path | None = None,
    echo: Callable[[str], None] = _stderr,
) -> dict[str, BayesFit]:
    """Prepare every model (all checks, once each), then sample each in turn, saying which and how many are left.

    A mistake in the last model stops the run before any sampling.
    """
    from bayeslmm.errors import BayeslmmError

    run = run or RunOptions()
    prepared = []
    for spec in models:
        with collected() as caught:
            try:
                prep = bayes.prepare(spec.formula, df, options, name=spec.name, na=run.na, priors=spec.priors)
                if spec.nagq > 1:  # lme4's side runs after sampling: check what only the data shows (a factor slope)
                    from bayeslmm.lme4.glmer import check_nagq
                    from bayeslmm.model.formula import model_frame

                    check_nagq(model_frame(prep.formula, prep.data), spec.nagq)
            except BayeslmmError as exc:
                if len(models) == 1:
                    raise
                raise type(exc)(f"model {spec.name!r}: {exc}") from exc
        prepared.append(replace(prep, notes=(*prep.notes, *caught)) if caught else prep)
    fits: dict[str, BayesFit] = {}
    for i, (spec, prep) in enumerate(zip(models, prepared, strict=True), 1):
        echo(f"[{i}/{len(models)}] {spec.name}: {spec.formula.text}")
        with collected() as caught:  # library warnings become notes or nothing, never raw text on stderr
            fit = bayes.sample_prepared(prep, cache_dir=cache_dir, save_dir=save_dir, refit=run.refit,
                                        progress=run.progress)
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
    run: RunOptions | None = None,
    echo: Callable[[str], None] = _stderr,
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
        How to sample.
    run : RunOptions, optional
        Interval mass, reuse of cached fits, missing values, progress.
    echo : callable
        Where progress lines go (stderr by default).
    """
    from bayeslmm.reporting import report
    from bayeslmm.reporting.output import staged_folder
    from bayeslmm.summary.crossval import CrossValidation

    options, run = options or SamplerOptions(), run or RunOptions()
    if run.logo is not None:
        check_logo_option(study, run.logo)
    start = time.perf_counter()
    out_dir = Path(out) if out is not None else Path("out") / study.name
    with collected() as stray:  # what no inner stage turned into a note (loading the data, ...)
        df = prepared_data(study, data, obj)
        with staged_folder(out_dir) as stage:
            fits = fit_models(study.models, df, options, run, cache_dir=out_dir / "fits", save_dir=stage / "fits",
                              echo=echo)
            echo("writing report ...")
            crossval = CrossValidation(run.max_refits, run.logo, {m.name: m.formula for m in study.models},
                                       {m.name: m.priors for m in study.models}, out_dir / "fits", stage / "fits",
                                       run.refit, echo)
            written = report.write(Fitted(study, df, fits), stage, ci=run.ci,
                                   source=str(data) if data else study.source, pb=run.pb, echo=echo,
                                   crossval=crossval, store=Store.beside(out_dir / "fits", stage / "fits", run.refit))
    seconds = time.perf_counter() - start
    report_notes = (*written.report_notes, *stray)
    for note in (*written.notes, *report_notes):
        echo(f"warning: {note}")
    echo(f"report written to {out_dir}/ in {seconds:.1f} s")
    return RunResult(study, df, fits, written.tidy, out_dir, seconds, written.notes, report_notes)


def check_logo_option(study: Study, group: str) -> None:
    """Refuse ``--logo`` for a study without comparisons or a group none of its compared models has."""
    from bayeslmm.errors import OptionsError
    from bayeslmm.model.study import check_logo

    if not study.comparisons:
        raise OptionsError(f"--logo {group!r}: study {study.name!r} has no [[comparison]]; leave-one-group-out is "
                           "shown beside each comparison's LOO")
    compared = {m for c in study.comparisons for m in c.models}
    check_logo(group, [m for m in study.models if m.name in compared], "--logo")


def fit_formula(
    data: str | Path,
    formula: str | Formula,
    *,
    obj: str | None = None,
    out: str | Path | None = None,
    options: SamplerOptions | None = None,
    run: RunOptions | None = None,
    priors: Priors | None = None,
    family: str = "gaussian",
    nagq: int | None = None,
    echo: Callable[[str], None] = _stderr,
) -> RunResult:
    """Fit one formula to a data file; with ``out``, write the same kind of report folder.

    ``family`` is the response distribution (``--family``) when ``formula`` is text. ``nagq`` is
    glmer's ``nAGQ`` for lme4's side of a binomial or Poisson mixed model (``--nagq``; 1, Laplace,
    by default; :func:`~bayeslmm.model.options.check_nagq`); lme4's side is computed for the report
    only, so without ``out`` it is checked and said to be unused.

    ``priors`` are the user's (``--prior``); the rest are Bambi's defaults.

    Without ``out`` the result's tidy table holds the fixed effects and standard deviations
    (what the console shows; ``fit.ranef()`` gives the group levels) and no LOO is computed.
    """
    formula = parse(formula, family) if isinstance(formula, str) else formula
    spec = ModelSpec("model", formula, priors=priors or Priors(), nagq=1 if nagq is None else check_nagq(nagq, formula))
    study = Study(
        name="fit", title=f"{formula.text}", description=f"One model fitted to {data}.",
        source=str(data), data_object=obj, models=(spec,),
    )
    (priors or Priors()).check_groups(formula.grouping_factors,
                                      tuple(r.group for r in formula.random if r.may_correlate))
    if out is not None:
        return run_study(study, out=out, options=options, run=run, echo=echo)
    run = run or RunOptions()
    if nagq is not None:
        echo(f"warning: nAGQ = {nagq} sets lme4's side, which 'bayeslmm fit' computes only for a report: add --out")
    with collected() as stray:  # what fit_models did not turn into a note (loading the data, the summary)
        df = prepared_data(study)
        fits = fit_models(study.models, df, options or SamplerOptions(), run, echo=echo)
        for f in fits.values():  # a GLMM's residual checks (overdispersion, zero inflation), as the report has them
            if f.formula.is_glmm:
                from bayeslmm.summary.residuals import check_notes

                for note in check_notes(f):
                    echo(f"warning: {note}")
        tidy = pd.concat([f.tidy(run.ci, ("fixed", "ran_pars")) for f in fits.values()], ignore_index=True)
    for note in stray:
        echo(f"warning: {note}")
    return RunResult(study, df, fits, tidy, None, 0.0, report_notes=tuple(stray))
