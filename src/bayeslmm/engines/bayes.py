"""Build and fit the Bayesian model of an lmer formula with Bambi and PyMC's NUTS.

Posteriors are cached as NetCDF files named by a content hash of everything that
determines them (formula, data, priors, sampler settings, library versions), so the same
fit is never run twice and models with the same posterior share one file. A file holds only
what cannot be recomputed: the pointwise log-likelihood (draws x rows, most of the bytes) is
recomputed from the posterior and the data by :func:`log_likelihood` when LOO needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm import interrupt
from bayeslmm.errors import FormulaError, OptionsError
from bayeslmm.model.checks import NaAction, sampler_warnings, validate
from bayeslmm.model.formula import Formula, to_bambi
from bayeslmm.model.options import Engine, RunOptions, Sampler, SamplerOptions  # noqa: F401 -- re-exported
from bayeslmm.model.prior_model import PriorModel, bambi_family
from bayeslmm.model.priors import Priors
from bayeslmm.numbers import format_number
from bayeslmm.results import EFFECTS, fixef_table, memo, ranef_table, varcorr_table
from bayeslmm.store import Store


@dataclass(frozen=True)
class BayesFit:
    """A fitted Bayesian model: the posterior and what produced it.

    Attributes
    ----------
    name : str
        Model name (``mixed.lmer2``), or ``"fit"`` for a one-off fit.
    formula : Formula
    data : DataFrame
        The rows and columns the model used.
    idata : xarray.DataTree
        ArviZ data: ``posterior``, ``sample_stats``, ``observed_data`` (and the marginal
        engine's internal draws); no ``log_likelihood``: :func:`log_likelihood` computes it.
    options : SamplerOptions
    priors : dict
        Prior of every parameter, as text (Bambi's defaults unless set).
    engine : str
        Which engine produced the posterior: ``marginal``, ``bambi`` or ``pymc`` (the reference engine).
    seconds : float
        Wall time of the fit (0 when loaded from the cache).
    cached : bool
        Whether the posterior came from the cache.
    key : str
        Content hash of everything that determines the posterior.
    notes : tuple of str
        Warnings about the data and the design (shown in the CLI and the report).
    sampler_notes : tuple of str
        Sampler trouble: divergences, r_hat > 1.01, low ESS, tree depth (``--strict`` fails on these).
    engine_note : str
        Which engine ran and why (``auto`` says so).
    model : PriorModel or None
        The terms and priors the engine sampled (kept to recompute the log-likelihood; rebuilt when ``None``).
    user_priors : Priors
        The priors the user set (``model`` has them applied).
    store : Store
        Where results derived from the posterior (its LOO, its prior sensitivity) are kept for a
        re-run: beside the cached posterior (:class:`bayeslmm.store.Store`; nowhere by default).
    """

    name: str
    formula: Formula
    data: pd.DataFrame
    idata: xr.DataTree
    options: SamplerOptions
    priors: dict[str, str]
    engine: str
    seconds: float
    cached: bool
    key: str
    notes: tuple[str, ...] = field(default=())
    sampler_notes: tuple[str, ...] = field(default=())
    engine_note: str = ""
    model: object = field(default=None, repr=False, compare=False)
    user_priors: Priors = field(default_factory=Priors, repr=False)
    store: Store = field(default_factory=Store, repr=False, compare=False)

    _summaries: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def method(self) -> str:
        """``"bayes"``: the ``method`` column of its tidy rows."""
        return "bayes"

    def tidy(self, ci: float = 0.95, effects: tuple[str, ...] = EFFECTS, median: bool = False) -> pd.DataFrame:
        """Posterior summary in broom.mixed's schema, computed once per ``(ci, effects)`` and kept.

        ``estimate`` is the posterior mean, ``std_error`` the posterior sd, ``conf_low``/``conf_high``
        the equal-tailed interval of mass ``ci``; ``median=True`` adds a ``median`` column.
        """
        from bayeslmm.labels import auxiliary_variables
        from bayeslmm.summary.tables import fixed_terms, ran_pars_order, tidy_posterior

        effects = tuple(effects)
        t = memo(self._summaries, (float(ci), effects),
                 lambda: tidy_posterior(self.idata["posterior"], self.name, ci, median=True, effects=effects,
                                        fixed_terms=fixed_terms(self), ran_pars=ran_pars_order(self.formula),
                                        auxiliary=auxiliary_variables(self.formula.family)))
        return t if median else t.drop(columns="median")

    def fixef(self, ci: float = 0.95) -> pd.DataFrame:
        """Posterior summary of the fixed effects (lme4's ``fixef``), estimate first."""
        return fixef_table(self.tidy(ci, ("fixed",)))

    def ranef(self, ci: float = 0.95) -> pd.DataFrame:
        """Posterior summary of each group level's effect (lme4's ``ranef``)."""
        return ranef_table(self.tidy(ci, ("ran_vals",)))

    def __repr__(self) -> str:
        draws = self.idata["posterior"].sizes
        return (f"<BayesFit {self.name}: {self.formula.text} ({self.formula.family}); {self.engine} engine, "
                f"{draws['chain']} chains x {draws['draw']} draws; {len(self.data)} rows>")

    def summary(self, ci: float = 0.95) -> Summary:
        """What lme4's ``summary()`` prints, with posterior columns: groups, random effects, fixed effects."""
        from bayeslmm.summary.text import fit_summary

        return Summary(fit_summary(self, ci))

    def predict(self, newdata: pd.DataFrame, re_form: str = "existing", ci: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
        """Mean response with credible and prediction intervals for new rows
        (:func:`bayeslmm.summary.newdata.predict`: ``re_form`` existing, new or population groups)."""
        from bayeslmm.summary.newdata import predict

        return predict(self, newdata, re_form, ci, seed)

    def varcorr(self) -> pd.DataFrame:
        """Posterior means of the standard deviations and correlations, laid out as lme4's ``print(VarCorr(fit))``.

        Columns ``Groups``, ``Name``, ``Std.Dev.``, ``Corr`` (:func:`~bayeslmm.results.varcorr_table`;
        the columns' name says "posterior means"); ``fit.tidy()``'s ``ran_pars`` rows have their sds
        and intervals.
        """
        return varcorr_table(self.tidy(effects=("ran_pars",)))


class Summary(str):
    """Text that displays as itself (``fit.summary()`` in a notebook or REPL prints like R's ``summary``)."""

    def __repr__(self) -> str:
        return str(self)


def model_data(formula: Formula, df: pd.DataFrame) -> pd.DataFrame:
    """The columns a formula uses (and those its R expressions make, :func:`~bayeslmm.model.formula.materialize`),
    grouping columns and text slopes as categoricals in R's level order (ids are labels), so that
    Bambi codes a factor slope's levels in lme4's order."""
    from bayeslmm.model.formula import materialize
    from bayeslmm.model.rterms import as_factor, column_names

    data = materialize(formula, df.loc[:, list(formula.variables)].copy())
    slopes = [c for r in formula.random for s in r.slopes for c in column_names(s)
              if not pd.api.types.is_numeric_dtype(data[c]) and not isinstance(data[c].dtype, pd.CategoricalDtype)]
    for col in [*(c for r in formula.random for c in r.group_columns), *slopes]:
        if not isinstance(data[col].dtype, pd.CategoricalDtype):
            data[col] = as_factor(data[col])
        data[col] = data[col].cat.remove_unused_categories()
    if formula.family == "binomial" and not formula.cbind:  # yes/no as 0/1, the first level a failure (as glmer)
        from bayeslmm.model.formula import binary_response

        data[formula.response] = binary_response(data[formula.response], formula.response)[0]
    return data.reset_index(drop=True)


def build_model(formula: Formula, data: pd.DataFrame, pm: PriorModel | None = None):
    """The Bambi model of ``formula``: with the priors of ``pm``, else Bambi's default (weakly
    informative, data-scaled) priors, which :func:`~bayeslmm.model.prior_model.default_model` computes
    without Bambi."""
    import bambi as bmb

    from bayeslmm.model.prior_model import bambi_priors

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = bmb.Model(to_bambi(formula), data, family=bambi_family(formula),
                              priors=bambi_priors(pm) if pm is not None else None)
        model.build()
    except Exception as exc:  # formulae/Bambi raise many types for terms they cannot build
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise FormulaError(f"cannot build the model of {formula.text!r}: {msg}") from exc
    return model


def prior_table(model, formula: Formula | None = None, priors: Priors | None = None) -> dict[str, str]:
    """Each parameter's prior as text: the prior model's (or a Bambi model's), and the LKJ prior of
    each correlated term, keyed by its group's correlation matrix, ``cor(Subject)``."""
    from bayeslmm.engines.marginal import prior_model

    out = prior_model(model).texts()
    priors = priors or Priors()
    for term in formula.random if formula is not None else ():
        if term.correlated:
            out[f"cor({term.group})"] = f"LKJ(eta={format_number(priors.lkj_eta(term.group))})"
    return out


def _versions() -> dict[str, str]:
    """Versions that change a posterior: Bambi and PyMC (Bambi engine), nutpie and bayeslmm (marginal).

    Read from the installed packages' metadata, so keying a cache imports none of them.
    """
    from importlib.metadata import version

    import bayeslmm

    return {"bambi": version("bambi"), "pymc": version("pymc"), "nutpie": version("nutpie"),
            "bayeslmm": bayeslmm.__version__}


def cache_key(formula: Formula, data: pd.DataFrame, priors: dict[str, str], options: SamplerOptions) -> str:
    """Content hash of the formula, data, priors, sampler settings and library versions."""
    h = hashlib.sha256()
    h.update(to_bambi(formula).encode())
    if formula.is_glmm:  # (a Gaussian model's key stays what it was)
        h.update(bambi_family(formula).encode())
    h.update(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
    h.update(json.dumps(list(map(str, data.columns))).encode())
    h.update(json.dumps(priors, sort_keys=True).encode())
    settings = {k: v for k, v in asdict(options).items() if not (k == "target_ess" and v is None)}  # keys as before
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(json.dumps(_versions(), sort_keys=True).encode())
    return h.hexdigest()


#: Which model uses which file, in every folder posteriors are saved to.
INDEX = "index.json"


def cache_path(cache_dir: Path, key: str) -> Path:
    """Where a posterior is cached: ``<cache_dir>/<hash prefix>.nc``, one file per content hash."""
    return Path(cache_dir) / f"{key[:16]}.nc"


def find_cached(folder: str | Path | None, key: str) -> Path | None:
    """The cached posterior with this content hash in ``folder``, if any."""
    if folder is None:
        return None
    path = cache_path(Path(folder), key)
    return path if path.is_file() else None


def _required_groups(engine: str | None) -> tuple[str, ...]:
    base = ("posterior", "sample_stats", "observed_data")
    if engine in ("marginal", "pymc", "glmm"):
        from bayeslmm.engines.marginal import ENGINE_GROUP

        return (*base, ENGINE_GROUP)
    return base


def load_cached(path: Path, engine: str | None = None) -> xr.DataTree | None:
    """Load a cached posterior, or ``None`` if it is missing, truncated, corrupt or incomplete.

    ``engine`` names the engine that must have produced it (the marginal and reference engines'
    files also hold their internal draws, which :func:`log_likelihood` needs).
    """
    if not path.is_file():
        return None
    try:
        tree = xr.open_datatree(path).load()
        tree.close()
        for group in _required_groups(engine):
            if group not in tree.children:
                return None
        if tree["posterior"].sizes.get("draw", 0) == 0:
            return None
        return tree
    except Exception:  # any unreadable file is simply refitted
        return None


def save(tree: xr.DataTree, path: Path) -> None:
    """Write a posterior to NetCDF atomically (temporary file, then rename), float64 as it is.

    A ``log_likelihood`` group is left out: it is recomputed (:func:`log_likelihood`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".nc.part")
    if "log_likelihood" in tree.children:
        tree = tree.copy()
        del tree["log_likelihood"]
    tree.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def _record(folder: Path, name: str, path: Path) -> None:
    """Note in ``folder``'s index that model ``name`` uses posterior file ``path``."""
    index_path = Path(folder) / INDEX
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    if index.get(name) == path.name:
        return
    index[name] = path.name
    tmp = index_path.with_name(f".{INDEX}.part")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, index_path)


def sample(model, options: SamplerOptions, progress: bool = True, log_likelihood: bool = True) -> xr.DataTree:
    """Run NUTS on a built Bambi model and (by default) add the pointwise log-likelihood.

    The progress bar is drawn on stderr, and only when it is a terminal; PyMC's and Bambi's own
    log lines are silenced (see :mod:`bayeslmm.notices`).
    """
    from bayeslmm.notices import progress_shown, sampler_output

    kwargs: dict = {}
    if options.sampler == "pymc":
        kwargs["cores"] = min(options.chains, os.cpu_count() or 1)
    progress = progress_shown(progress)
    with warnings.catch_warnings(), sampler_output():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        idata = model.fit(
            draws=options.draws,
            tune=options.tune,
            chains=options.chains,
            random_seed=options.seed,
            target_accept=options.target_accept,
            inference_method=options.sampler,
            progressbar=progress,
            **kwargs,
        )
        if log_likelihood:
            model.compute_log_likelihood(idata)
    post = idata["posterior"].to_dataset()
    if "mu" in post:  # one value per draw and row: large, and derivable from the parameters
        idata["posterior"] = post.drop_vars("mu")
    return idata


@dataclass(frozen=True)
class Prepared:
    """A model ready to sample: checked, built and keyed (lme4's ``lFormula`` + ``mkLmerDevfun`` stage).

    Attributes
    ----------
    name : str
    formula : Formula
        The formula fitted: collinear terms dropped (its text as written).
    data : DataFrame
        The rows and columns the model uses (R expressions evaluated, grouping factors as factors).
    model : PriorModel
        Every term with its prior (:mod:`bayeslmm.model.prior_model`): what the engines read, and
        what Bambi's model is given when Bambi's engine runs.
    frame : ModelFrame
        The arrays of lme4's side and the marginal engine.
    priors : dict of str to str
    engine, engine_note : str
        The engine that will run, and why.
    key : str
        Content hash of everything that determines the posterior (the cache key).
    notes : tuple of str
        Warnings about the data and the design.
    options : SamplerOptions
    """

    name: str
    formula: Formula
    data: pd.DataFrame
    model: object = field(repr=False)
    frame: object = field(repr=False)
    priors: dict[str, str]
    engine: str
    engine_note: str
    key: str
    notes: tuple[str, ...]
    options: SamplerOptions
    user_priors: Priors = field(default_factory=Priors)


def prepare(formula: Formula, df: pd.DataFrame, options: SamplerOptions | None = None, *, name: str = "fit",
            na: NaAction = "drop", priors: Priors | None = None, pin: PriorModel | None = None) -> Prepared:
    """Check a formula against the data, build its model, choose the engine and key the cache.

    Every check runs here, once (:func:`bayeslmm.model.checks.validate`, then lme4's dropping of
    aliased columns); nothing is sampled.

    Raises
    ------
    BayeslmmError
        For data or a formula that cannot be fitted (see :mod:`bayeslmm.model.checks`).
    """
    from bayeslmm.model.formula import correlation_note, drop_aliased, model_frame, split_notes
    from bayeslmm.model.prior_model import apply_priors, default_model, pin_priors

    options = options or SamplerOptions()
    user_priors = priors or Priors()
    user_priors.check_groups(formula.grouping_factors, tuple(r.group for r in formula.random if r.may_correlate))
    rows, check_notes = validate(formula, df, na)
    formula, alias_notes = drop_aliased(formula, rows)
    data = model_data(formula, rows)
    frame = model_frame(formula, data)
    # Bambi's default priors (without building Bambi's model), then the user's in their place
    model = apply_priors(default_model(frame, data), user_priors)
    if pin is not None:  # a refit for cross-validation keeps the full fit's priors
        model = pin_priors(model, pin)
    formula = frame.formula  # random terms resolved against the data: a factor slope's columns (fA, fB, ...)
    from bayeslmm.engines.marginal import coding_mismatch

    mismatch = coding_mismatch(frame, model)
    if mismatch:
        raise FormulaError(mismatch)
    user_priors.check_groups(formula.grouping_factors, tuple(r.group for r in formula.random if r.correlated))
    engine, engine_note = choose_engine(options.engine, formula, frame, model)
    if engine == "marginal":  # a large design gets fewer, cheaper draws unless the options were chosen
        from bayeslmm.engines.marginal import plan

        options, plan_note = plan(frame, model, options, user_priors)
        engine_note += plan_note
    # Bambi's engine drops correlations, so its fits have no LKJ prior (nor one in their cache key)
    table = prior_table(model, formula if engine != "bambi" else None, user_priors)
    # The cache knows the engine that ran, so "auto" and an explicit choice share posteriors.
    key = cache_key(formula, data, table, replace(options, engine=engine))
    # only Bambi's engine drops the correlations of (x|g)
    dropped = [correlation_note(formula)] if engine == "bambi" else []
    notes = (*alias_notes, *check_notes, *split_notes(formula), *(n for n in dropped if n))
    return Prepared(name, formula, data, model, frame, table, engine, engine_note, key, notes, options, user_priors)


def sample_prepared(prep: Prepared, *, cache_dir: str | Path | None = None, save_dir: str | Path | None = None,
                    refit: bool = False, progress: bool = True) -> BayesFit:
    """The posterior of a prepared model: reused from a cache folder, or sampled (and saved).

    Parameters
    ----------
    prep : Prepared
    cache_dir : path, optional
        Folder of cached posteriors to reuse; ``None`` disables reuse.
    save_dir : path, optional
        Folder to save the posterior in (``cache_dir`` by default); a reused posterior is
        copied there, so a new report folder holds every fit it shows.
    refit : bool
        Ignore a cached posterior (one saved by this same run in a staged ``save_dir`` is still reused).
    progress : bool
        Show the sampler's progress bar.
    """
    options, key, engine = prep.options, prep.key, prep.engine
    save_dir = save_dir if save_dir is not None else cache_dir
    target = cache_path(Path(save_dir), key) if save_dir is not None else None
    made = dict(name=prep.name, formula=prep.formula, data=prep.data, options=options, priors=prep.priors,
                engine=engine, key=key, notes=prep.notes, engine_note=prep.engine_note, model=prep.model,
                user_priors=prep.user_priors, store=Store.beside(cache_dir, save_dir, refit))
    # save_dir first: another model of this run may have saved the same posterior there.
    # With refit, only posteriors saved by this same run (a staged save_dir) may be reused.
    folders = (save_dir, cache_dir) if not refit else ((save_dir,) if save_dir != cache_dir else ())
    for folder in dict.fromkeys(f for f in folders if f is not None):
        path = find_cached(folder, key)
        tree = load_cached(path, engine) if path is not None else None
        if tree is not None:
            if target is not None and target != path:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            if target is not None:
                _record(target.parent, prep.name, target)
            return _with_diagnostics(BayesFit(idata=tree, seconds=0.0, cached=True, **made))
    start = time.perf_counter()
    if engine == "marginal":
        from bayeslmm.engines import marginal

        tree = marginal.sample(prep.model, prep.frame, options, progress=progress, log_likelihood=False,
                               priors=prep.user_priors)
    elif engine == "pymc":
        from bayeslmm.engines import reference

        tree = reference.sample(prep.model, prep.frame, options, progress=progress, log_likelihood=False,
                                priors=prep.user_priors)
    elif engine == "glmm":
        from bayeslmm.engines import glmm

        tree = glmm.sample(prep.model, prep.frame, options, progress=progress, log_likelihood=False,
                           priors=prep.user_priors)
    else:  # Bambi's NUTS on Bambi's model, given the prior model's priors
        tree = sample(build_model(prep.formula, prep.data, prep.model), options, progress=progress,
                      log_likelihood=False)
    seconds = time.perf_counter() - start
    interrupt.check()  # PyMC returns what it has when Ctrl-C stops it, and may not say so
    _check_complete(tree, options)
    tree = _contiguous(tree)
    if target is not None:
        save(tree, target)
        _record(target.parent, prep.name, target)
    return _with_diagnostics(BayesFit(idata=tree, seconds=seconds, cached=False, **made))


def fit(formula: Formula, df: pd.DataFrame, options: SamplerOptions | None = None, *, name: str = "fit",
        run: RunOptions | None = None, cache_dir: str | Path | None = None,
        save_dir: str | Path | None = None, priors: Priors | None = None,
        pin: PriorModel | None = None) -> BayesFit:
    """Fit the Bayesian mixed model of an lmer formula: :func:`prepare`, then :func:`sample_prepared`.

    Parameters
    ----------
    formula : Formula
        From :func:`bayeslmm.model.formula.parse`.
    df : DataFrame
        Prepared data.
    options : SamplerOptions, optional
        How to sample.
    name : str
        Name for tables and the cache index.
    run : RunOptions, optional
        ``na``, ``refit`` and ``progress`` are used here.
    cache_dir, save_dir : path, optional
        See :func:`sample_prepared`.
    priors : Priors, optional
        Priors set by the user (``Priors.from_texts(["cor ~ LKJ(2)"])``); Bambi's defaults otherwise.
    pin : PriorModel, optional
        Another fit's prior model whose priors to keep (a cross-validation refit on some of the rows:
        :func:`~bayeslmm.model.prior_model.pin_priors`).

    Returns
    -------
    BayesFit
        ``notes`` holds the data and design warnings, ``sampler_notes`` the sampler's.
    """
    run = run or RunOptions()
    prep = prepare(formula, df, options, name=name, na=run.na, priors=priors, pin=pin)
    return sample_prepared(prep, cache_dir=cache_dir, save_dir=save_dir, refit=run.refit, progress=run.progress)


def log_likelihood(fit: BayesFit, rows: slice | np.ndarray | None = None) -> xr.DataArray:
    """The pointwise log-likelihood of a fit, recomputed from its posterior and data.

    Exactly what the engine computes after sampling (the marginal engine's kernel on the
    saved internal draws of the marginal or reference engine; Bambi's ``compute_log_likelihood``),
    so a reloaded fit gives the same LOO as a fresh one.

    Parameters
    ----------
    fit : BayesFit
    rows : slice or ndarray of int, optional
        Rows of ``fit.data`` (all by default): memory is draws x rows x 8 bytes, so large data is
        best taken in blocks (:func:`log_likelihood_blocks`).

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw, __obs__)``, ``__obs__`` numbered as the rows of ``fit.data``.
    """
    return next(log_likelihood_blocks(fit, [rows]))


def log_likelihood_blocks(fit: BayesFit, blocks):
    """:func:`log_likelihood` of each of ``blocks`` (slices or arrays of row numbers, ``None`` for all rows) in
    turn: the posterior and the data are read once, so the whole data set goes through in bounded memory."""
    from bayeslmm.model.formula import model_frame

    n = len(fit.data)
    blocks = (slice(*(slice(None) if b is None else b).indices(n)) if b is None or isinstance(b, slice)
              else np.asarray(b, dtype=np.int64) for b in blocks)
    model = prior_model_of(fit)
    if fit.engine in ("marginal", "pymc"):
        from bayeslmm.engines import marginal

        yield from marginal.log_likelihood_blocks(model, model_frame(fit.formula, fit.data), fit.idata, blocks)
        return
    if fit.engine == "glmm":
        from bayeslmm.engines import glmm

        yield from glmm.log_likelihood_blocks(model, model_frame(fit.formula, fit.data), fit.idata, blocks)
        return
    model = build_model(fit.formula, fit.data, model)  # Bambi's model, given the priors its engine sampled
    for rows in blocks:
        whole = rows == slice(0, n, 1) if isinstance(rows, slice) else False
        tree = xr.DataTree.from_dict({"posterior": fit.idata["posterior"].to_dataset()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.compute_log_likelihood(tree, data=None if whole else fit.data.iloc[rows])
        ll = next(iter(tree["log_likelihood"].to_dataset().data_vars.values()))
        yield ll.assign_coords(__obs__=np.arange(n)[rows])


def summed_log_likelihood(fit: BayesFit, block_cells: int = 2**24) -> np.ndarray:
    """Each draw's log-likelihood of all rows, shape ``(chain, draw)`` (what power-scaling scales).

    The marginal engine's from the data's cross-products (:func:`bayeslmm.engines.marginal.summed_log_likelihood`);
    other engines' a block of rows at a time, at most ``block_cells`` draws x rows at once.
    """
    from bayeslmm.model.formula import model_frame

    if fit.engine in ("marginal", "pymc"):
        from bayeslmm.engines import marginal

        return marginal.summed_log_likelihood(prior_model_of(fit), model_frame(fit.formula, fit.data), fit.idata)
    post = fit.idata["posterior"]
    n, step = len(fit.data), max(1, block_cells // max(post.sizes["chain"] * post.sizes["draw"], 1))
    total = np.zeros((post.sizes["chain"], post.sizes["draw"]))
    for block in log_likelihood_blocks(fit, (slice(start, min(n, start + step)) for start in range(0, n, step))):
        total += block.sum("__obs__").values
    return total


def prior_model_of(fit: BayesFit) -> PriorModel:
    """The terms and priors a fit's engine sampled: ``fit.model``, or rebuilt from its formula, data and
    the user's priors."""
    if fit.model is not None:
        from bayeslmm.engines.marginal import prior_model

        return prior_model(fit.model)  # a Bambi model a caller built is read as one
    from bayeslmm.model.formula import model_frame
    from bayeslmm.model.prior_model import apply_priors, default_model

    return apply_priors(default_model(model_frame(fit.formula, fit.data), fit.data), fit.user_priors)


def log_prior(fit: BayesFit) -> xr.DataArray:
    """Each draw's log prior density (chain, draw): :func:`bayeslmm.engines.prior_density.log_prior`."""
    from bayeslmm.engines import prior_density

    return prior_density.log_prior(fit)


def _contiguous(tree: xr.DataTree) -> xr.DataTree:
    """Every array C-contiguous, as a reloaded file gives them.

    NumPy's sums depend on memory layout in the last bits, so without this a fresh fit and
    the same fit reused from the cache would print slightly different summaries.
    """
    return tree.map_over_datasets(
        lambda ds: ds.copy(data={k: np.ascontiguousarray(v.values) for k, v in ds.data_vars.items()}))


def _check_complete(tree: xr.DataTree, options: SamplerOptions) -> None:
    """Refuse a truncated posterior: PyMC returns what it has when Ctrl-C stops it (a run with a
    ``target_ess`` may stop early, and says where in the posterior's ``stopped_at_draw``)."""
    sizes = tree["posterior"].sizes
    stopped = tree["posterior"].attrs.get("stopped_at_draw") if options.target_ess is not None else None
    if sizes.get("chain") != options.chains or sizes.get("draw") != (options.draws if stopped is None else stopped):
        raise KeyboardInterrupt("sampling was interrupted")


def choose_engine(requested: Engine, formula: Formula, frame, model) -> tuple[str, str]:
    """The engine that fits this model, and a note saying why.

    ``auto`` takes the marginal engine whenever it applies (Gaussian model, random intercepts
    and slopes, correlated or not), the GLMM engine for binomial and Poisson models, and Bambi's
    NUTS otherwise, never the reference engine;
    ``marginal`` and ``pymc`` (the reference engine, built from the marginal engine's reading of
    the model) refuse models they cannot fit.
    """
    if requested == "bambi":
        return "bambi", "Bambi engine, as asked"
    if formula.is_glmm:  # binomial, Poisson, negative binomial: the GLMM engine (NUTS on the joint, numba kernels)
        from bayeslmm.engines import glmm

        reason = glmm.supports(formula, frame, model)
        if reason is None and requested in ("auto", "glmm"):
            return "glmm", "GLMM engine"
        if requested != "auto":
            why = reason or "it fits Gaussian models; use the glmm engine"
            raise OptionsError(f"--engine {requested} cannot fit {formula.text!r}: {why}; use --engine auto or bambi")
        return "bambi", f"Bambi engine; the GLMM engine does not apply: {reason}"
    from bayeslmm.engines import marginal

    reason = marginal.supports(formula, frame, model)
    if requested == "glmm":
        raise OptionsError(f"--engine glmm fits binomial, Poisson and negative binomial models; {formula.text!r} is "
                           "Gaussian: use "
                           "--engine auto")
    if requested == "pymc":
        if reason is not None:
            raise OptionsError(f"--engine pymc cannot fit {formula.text!r}: {reason}; use --engine auto or bambi")
        return "pymc", "reference engine (PyMC model with the random effects), as asked"
    if reason is None:
        return "marginal", "marginal engine"
    if requested == "marginal":
        raise OptionsError(f"--engine marginal cannot fit {formula.text!r}: {reason}; use --engine auto or bambi")
    return "bambi", f"Bambi engine; the marginal engine does not apply: {reason}"


def _with_diagnostics(fit: BayesFit) -> BayesFit:
    """Add the sampler's warnings (divergences, r_hat, ESS, tree depth) to the fit's notes."""
    from bayeslmm.summary.tables import diagnostics

    core = fit.tidy(effects=("fixed", "ran_pars"))
    notes = sampler_warnings(diagnostics(fit, core), engine=fit.engine, gaussian=not fit.formula.is_glmm)
    return replace(fit, sampler_notes=tuple(notes))
