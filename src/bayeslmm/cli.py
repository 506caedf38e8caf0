"""Command line: ``bayeslmm run``, ``bayeslmm fit``, ``bayeslmm simulate``.

This module only wires stages together; the work is done by the library's functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

from bayeslmm.errors import BayeslmmError, OptionsError

EXIT_USER = 2
EXIT_SAMPLER = 3


def _checked(convert, ok, wanted: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; else say what is wanted."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive whole number")
_seed = _checked(int, lambda v: v >= 0, "a non-negative whole number")
_nonnegative_int = _seed
_count = _checked(int, lambda v: v >= 0, "a whole number >= 0")
_prob = _checked(float, lambda v: 0 < v < 1, "a number between 0 and 1 (e.g. 0.95)")


def _family(text: str) -> str:
    """An argparse type: the family, or another name of the negative binomial refused with the one to use."""
    from bayeslmm.model.options import check_family

    try:
        return check_family(text)
    except OptionsError as exc:  # "--family 'nb': the negative ..." or "--family must be one of ..."
        msg = str(exc).removeprefix(f"--family {text!r}: ").removeprefix("--family ")
        raise argparse.ArgumentTypeError(msg) from exc


def _nagq(text: str) -> int:
    from bayeslmm.model.options import NAGQ_MAX

    return _checked(int, lambda v: 1 <= v <= NAGQ_MAX, f"a whole number from 1 (Laplace) to {NAGQ_MAX}")(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise OptionsError(f"{message} (see 'bayeslmm {self.prog.split()[-1]} --help')")


def _sampler_args(p: argparse.ArgumentParser) -> None:
    from bayeslmm.model.options import Engine, NaAction, RunOptions, Sampler, SamplerOptions

    d, r = SamplerOptions(), RunOptions()  # one source of truth for the defaults
    g = p.add_argument_group("sampling")
    g.add_argument("--draws", type=_positive_int, default=d.draws, help=f"posterior draws per chain ({d.draws})")
    g.add_argument("--tune", type=_positive_int, default=d.tune, help=f"tuning steps per chain ({d.tune})")
    g.add_argument("--chains", type=_positive_int, default=d.chains, help=f"chains ({d.chains})")
    g.add_argument("--seed", type=_seed, default=d.seed, help=f"random seed ({d.seed})")
    g.add_argument("--target-accept", type=_prob, default=d.target_accept,
                   help=f"NUTS target acceptance ({d.target_accept})")
    g.add_argument("--engine", choices=get_args(Engine), default=d.engine,
                   help=f"{d.engine} (default): the exact marginal engine where it applies, else Bambi's NUTS; "
                        "pymc: bayeslmm's plain PyMC model (the reference for correlated effects); glmm: the "
                        "binomial, Poisson and negative binomial engine (auto's choice for them)")
    g.add_argument("--sampler", choices=get_args(Sampler), default=d.sampler,
                   help=f"NUTS implementation of the Bambi engine ({d.sampler})")
    g.add_argument("--ci", type=_prob, default=r.ci, help=f"credible interval mass ({r.ci})")
    g.add_argument("--refit", action="store_true", help="ignore cached posteriors")
    g.add_argument("--na", choices=get_args(NaAction), default=r.na,
                   help="rows with missing values in used columns: drop with a warning (default) or refuse")
    g.add_argument("--strict", action="store_true",
                   help="exit with code 3 when the sampler's diagnostics fail (divergences, r_hat, ESS)")
    g.add_argument("--strict-prior", action="store_true",
                   help="exit with code 3 when a parameter shows prior-data conflict (power-scaling sensitivity "
                        ">= 0.05 to both the prior and the likelihood)")
    g.add_argument("--no-progress", action="store_true", help="hide the sampler's progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayeslmm`` command."""
    from bayeslmm.model.options import MAX_REFITS, Family

    p = _Parser(prog="bayeslmm", description="Bayesian linear mixed models with lme4's formulas.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a study file end to end and write a report folder")
    run.add_argument("study", help="study file, e.g. models/dragons.toml")
    run.add_argument("--data", help="data file to use instead of the study's source")
    run.add_argument("--object", help="which data frame of an .RData file")
    run.add_argument("--out", help="report folder (default out/<study name>)")
    run.add_argument("--pb", type=_nonnegative_int, default=0, metavar="N",
                     help="parametric-bootstrap LRT with N simulations beside each comparison's chi-square test "
                          "(linear mixed models; pbkrtest uses 1000)")
    run.add_argument("--logo", metavar="GROUP",
                     help="leave-one-group-out cross-validation by this grouping factor beside LOO in every "
                          "comparison (one refit per level): predicting a new GROUP")
    run.add_argument("--max-refits", type=_count, default=MAX_REFITS, metavar="N",
                     help=f"refit without each observation whose PSIS-LOO Pareto k > 0.7, at most N per model, "
                          f"worst first ({MAX_REFITS}; 0: PSIS alone)")
    _sampler_args(run)

    fit = sub.add_parser("fit", help="fit one lmer formula to a data file and print a summary")
    fit.add_argument("data", help="data file (.RData, .rda, .rds, .csv, .parquet) or builtin:dragons")
    fit.add_argument("formula", help="lmer formula, e.g. 'y ~ x + (1|g)'")
    fit.add_argument("--object", help="which data frame of an .RData file")
    fit.add_argument("--out", help="also write a report folder here")
    fit.add_argument("--family", choices=get_args(Family), default="gaussian", type=_family,
                     help="response distribution, as glmer's family: gaussian (default, lmer), binomial "
                          "(cbind(successes, failures), 0/1 or yes/no; logit link), poisson (counts; log link), "
                          "negbinomial (counts more variable than Poisson's; log link; lme4's glmer.nb)")
    fit.add_argument("--newdata", metavar="CSV",
                     help="rows to predict: prints the mean response with credible and prediction intervals "
                          "(and writes predictions.csv into --out)")
    fit.add_argument("--re-form", choices=("existing", "new", "population"), default="existing",
                     help="group effects of the predictions: the fitted groups' (default, lme4's predict), new "
                          "groups drawn from the population (brms's allow_new_levels), or none (re.form = NA)")
    fit.add_argument("--nagq", type=_nagq, default=None, metavar="N",
                     help="lme4's side of a binomial or Poisson mixed model: glmer's nAGQ, 1 = Laplace (default), "
                          "up to 100 adaptive Gauss-Hermite nodes for a single scalar random term, as lme4")
    fit.add_argument("--prior", action="append", default=[], metavar="STATEMENT",
                     help="a prior in brms's classes, e.g. 'sd(site) ~ HalfNormal(10)', 'b ~ Normal(0, 5)', "
                          "'sigma ~ Exponential(0.1)', 'cor ~ LKJ(2)' (repeatable; Bambi's defaults otherwise)")
    _sampler_args(fit)

    tab = sub.add_parser("table", help="print a table of a report folder as text, markdown, LaTeX or HTML")
    tab.add_argument("report", help="report folder written by 'bayeslmm run' (e.g. out/dragons)")
    tab.add_argument("--what", choices=["sidebyside", "comparison", "variance", "tidy"], default="sidebyside",
                     help="which table (sidebyside)")
    tab.add_argument("--model", help="only this model (default: every model)")
    tab.add_argument("--format", choices=["text", "markdown", "latex", "html"], default="text", help="(text)")

    sim = sub.add_parser("simulate", help="write the built-in data set")
    sim.add_argument("design", choices=["dragons"], help="which design")
    sim.add_argument("--seed", type=_seed, default=None, help="random seed (the built-in default)")
    sim.add_argument("--out", required=True, help="CSV file to write")
    return p


def _options(args):
    from bayeslmm.engines.bayes import SamplerOptions

    return SamplerOptions(draws=args.draws, tune=args.tune, chains=args.chains, seed=args.seed,
                          target_accept=args.target_accept, sampler=args.sampler, engine=args.engine)


def _run_options(args):
    from bayeslmm.model.options import RunOptions

    extra = {k: getattr(args, k) for k in ("max_refits", "logo", "pb") if getattr(args, k, None) is not None}
    return RunOptions(ci=args.ci, refit=args.refit, na=args.na, progress=not args.no_progress, **extra)


def _cmd_run(args) -> int:
    from bayeslmm.model.study import load
    from bayeslmm.runner import run_study

    study = load(args.study)
    result = run_study(study, data=args.data, obj=args.object, out=args.out, options=_options(args),
                       run=_run_options(args))
    return _strict(args, result)


def _strict(args, result) -> int:
    """Under --strict, sampler trouble is an error; under --strict-prior, prior-data conflict (after the
    report is written)."""
    trouble = [f"{name}: {note}" for name, fit in result.fits.items() for note in fit.sampler_notes]
    trouble += list(result.notes)  # LOO's Pareto-k warnings
    if args.strict and trouble:
        print(f"error: sampler diagnostics failed (--strict): {trouble[0]}"
              + (f" (and {len(trouble) - 1} more)" if len(trouble) > 1 else ""), file=sys.stderr)
        return EXIT_SAMPLER
    if args.strict_prior:
        from bayeslmm.summary import sensitivity

        for name, fit in result.fits.items():
            why = sensitivity.unavailable(fit)
            if why:
                print(f"warning: --strict-prior: {name} not checked: {why}", file=sys.stderr)
        conflicts = sensitivity.conflicts(result.fits)
        if conflicts:
            print(f"error: prior-data conflict (--strict-prior): {conflicts[0]}"
                  + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""), file=sys.stderr)
            return EXIT_SAMPLER
    return 0


def _cmd_fit(args) -> int:
    from bayeslmm.model.priors import Priors
    from bayeslmm.runner import fit_formula
    from bayeslmm.summary.tables import format_table

    newdata = None
    if args.newdata:  # checked before fitting, so that a bad file fails in a second, not after the fit
        from bayeslmm.model.data import load
        from bayeslmm.model.formula import parse
        from bayeslmm.summary.newdata import check_newdata

        newdata = check_newdata(parse(args.formula, args.family), load(args.newdata), args.re_form)
    result = fit_formula(args.data, args.formula, obj=args.object, out=args.out, options=_options(args),
                         run=_run_options(args), priors=Priors.from_texts(args.prior), family=args.family,
                         nagq=args.nagq)
    tidy = result.tidy
    t = tidy[tidy["effect"].isin(["fixed", "ran_pars"]) & (tidy["method"] == "bayes")]  # --out adds lme4's rows
    cols = ["effect", "group", "term", "estimate", "std_error", "conf_low", "conf_high", "r_hat", "ess_bulk"]
    print(f"{args.formula}   (n = {len(result.data)}; posterior mean, sd, {args.ci:.0%} interval)")
    shown = t[cols].rename(columns={"estimate": "mean", "std_error": "sd"}).assign(ess_bulk=t["ess_bulk"].round())
    print(format_table(shown))
    if newdata is not None:
        _predictions(args, next(iter(result.fits.values())), newdata)
    return _strict(args, result)


def _predictions(args, fit, newdata) -> None:
    """``--newdata``: predictions for the rows of a CSV file, printed (and saved into ``--out``)."""
    from bayeslmm.summary.tables import format_table

    pred = fit.predict(newdata, re_form=args.re_form, ci=args.ci)
    print(f"\npredictions ({args.re_form} groups; mean response with {args.ci:.0%} credible and prediction "
          "intervals):")
    print(format_table(pred))
    if args.out:
        pred.to_csv(Path(args.out) / "predictions.csv", index=False)


def _cmd_table(args) -> int:
    import pandas as pd

    from bayeslmm.reporting.export import compact_side, render

    files = {"sidebyside": "sidebyside.csv", "comparison": "comparison.csv", "variance": "variance_partition.csv",
             "tidy": "tidy.csv"}
    path = Path(args.report) / files[args.what]
    if not path.is_file():
        raise OptionsError(f"{str(path)!r} not found; give a folder written by 'bayeslmm run'")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("group", "level", "lme4_ci", "lrt_against"):
        if col in df:
            df[col] = df[col].fillna("")
    if args.model is not None:
        if args.model not in set(df["model"]):
            models = ", ".join(dict.fromkeys(df["model"]))
            raise OptionsError(f"no model {args.model!r} in {path.name}; models: {models}")
        df = df[df["model"] == args.model]
    if args.what == "sidebyside":
        for model, rows in df.groupby("model", sort=False):
            print(render(compact_side(rows), args.format, caption=str(model)))
    else:
        print(render(df, args.format))
    return 0


def _cmd_simulate(args) -> int:
    from bayeslmm.model.simulate import simulate_dragons

    df = simulate_dragons() if args.seed is None else simulate_dragons(args.seed)
    out = Path(args.out)
    if out.is_dir():
        raise OptionsError(f"--out {args.out!r} is a folder; give a .csv file name")
    tmp = out.with_name(f".{out.name}.partial")
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OptionsError(f"cannot write {args.out!r}: {exc.strerror}") from exc
    print(f"wrote {len(df)} rows to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayeslmm`` command; returns the exit code."""
    import signal
    import warnings

    from bayeslmm import interrupt

    interrupt.reset()
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; no window
    warnings.filterwarnings("ignore", message="Cannot cache compiled function")  # pytensor's numba backend
    unraisable = sys.unraisablehook
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt.on_sigint)
        sys.unraisablehook = interrupt.quiet_unraisable
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        handler = {"run": _cmd_run, "fit": _cmd_fit, "table": _cmd_table, "simulate": _cmd_simulate}[args.command]
        code = handler(args)
        if interrupt.interrupted():  # Ctrl-C that a library swallowed: the run did not end as asked
            return _interrupt_exit()
        sys.stdout.flush()  # a reader that left early (| head) shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _broken_pipe_exit()
    except BayeslmmError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return _interrupt_exit()
    except Exception:
        if interrupt.interrupted():  # a library turned our KeyboardInterrupt into another error
            return _interrupt_exit()
        raise
    finally:
        interrupt.reset()  # in-process callers (tests, notebooks) go on with a clean slate
        if signal.getsignal(signal.SIGINT) is interrupt.on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = unraisable


def _broken_pipe_exit() -> int:
    """The reader of stdout went away (``bayeslmm table ... | head``): stop quietly.

    Exit code 141 (128 + SIGPIPE) is what the shell reports for any program cut off this
    way (``seq 100000 | head`` under ``set -o pipefail``), so scripts see the same as with
    standard tools; 0 would claim the whole output was delivered. Standard output is pointed
    at /dev/null so that Python's final flush does not fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to flush
        pass
    return 141


def _interrupt_exit() -> int:
    print("error: interrupted; nothing was written (the previous report, if any, is intact)", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
