"""bayeslmm: Bayesian mixed models with lme4's formulas, lme4's own answer beside the posterior.

Design note: where each thing lives, and which way data flows
==============================================================

One pass, no back and forth; each stage takes the previous stage's value and returns a new
frozen one (lme4's ``lFormula -> mkLmerDevfun -> optimize -> mkMerMod`` shape)::

    study file / CLI flags ─► model.study, model.options (Study, SamplerOptions, RunOptions)
    data file ─► model.data.load/prepare ─► DataFrame
    "y ~ x + (1|g)" ─► model.formula.parse ─► Formula ─► model.checks.validate (errors, warnings)
                                                     ─► model.formula.materialize/model_frame (arrays)
                ┌───────────────────────────────────────┴──────────────────────────────┐
    engines.bayes.prepare ─► Prepared ─► sample_prepared ─► BayesFit     lme4.frequentist.fit ─► FreqFit
      (engines.marginal: exact marginal engine;                          (lme4.lmer: PLS; lme4.profile:
       Bambi + PyMC otherwise; cached by content hash)                    profile-likelihood CIs)
                └──────────────────────┬────────────────────────────────────────────────┘
    summary: tables, side by side, LOO beside the LRT (compare), predictions, both sides together
             (in the shared vocabulary: results' tidy schema, labels' names, intervals' eti)
                                       │
    graphics: figures that teach partial pooling ─► reporting: report.md/html, tables, atomic folder
                                       │
    runner (orchestrates a study or one formula) ◄── cli (wires flags to stages, prints)

Subpackages, one job each:

- ``model``: what the user asks for. ``formula`` (lmer syntax, the model frame, aliased
  columns), ``rterms`` (R's idioms: ``factor()``, ``I(x^2)``, ``poly()``, ``offset()``),
  ``data`` (files, R's ``scale()``, explicit nesting), ``simulate`` (the built-in data),
  ``study`` (study files), ``checks`` (every check before a fit), ``options`` (frozen options).
- ``lme4``: lme4's side. ``lmer`` (penalized least squares, Satterthwaite), ``glmer`` (PIRLS,
  Laplace and AGQ deviances: binomial, Poisson, negative binomial at a given theta), ``glmer_nb``
  (``glmer.nb``'s search for theta, ``glm.nb``), ``frequentist`` (``lm``/``lmer``/``glm``/``glmer``
  fits with R's names), ``profile`` (``confint(method = "profile")``, linear mixed models).
- ``engines``: the Bayesian fits. ``bayes`` (prepare, sample, cache, the Bambi engine),
  ``marginal`` (the exact marginal engine's orchestration), ``marginal_lik`` (its numba kernels),
  ``reference`` (the same posterior as a plain PyMC model, random effects included: the check
  of the marginal engine where Bambi has no model, ``--engine pymc``), ``prior_density`` (each
  draw's log prior, each prior as a scipy distribution).
- ``summary``: what fits answer. ``tables`` (posterior summaries, diagnostics), ``sidebyside``,
  ``compare`` (LOO, LRT), ``predict``, ``analysis`` (both sides of a study together),
  ``sensitivity`` (power-scaling prior sensitivity), ``prior_predictive`` (data from the priors).
- ``graphics``: ``plots``, ``plots_checks``, ``plots_pooling``, ``plots_priors`` draw; ``figures`` chooses.
- ``reporting``: ``report`` assembles, ``document`` renders Markdown/HTML, ``export`` renders
  tables, ``output`` swaps folders in atomically.
- Top level: ``runner`` and ``cli`` orchestrate. The shared vocabulary every stage speaks sits
  beside them: ``labels`` (every Bambi <-> lme4 <-> formulae name rule), ``results`` (the one
  tidy schema and the fit protocol), ``intervals`` (the equal-tailed interval), ``numbers``
  (how every number is shown), ``errors`` (one-line user errors) and ``notices`` (warnings
  and progress).

Imports go one way: the shared vocabulary needs no subpackage; ``model`` needs only the
vocabulary; ``lme4`` and ``engines`` read ``model``; ``summary`` reads fits; ``graphics`` and
``reporting`` read summaries; ``runner`` and ``cli`` read everything. Two calls go back up,
inside functions: a fit's ``tidy()`` and sampler diagnostics are computed by ``summary.tables``,
and LOO (``summary.compare``) asks the engine that made a fit for its log-likelihood.
"""

__version__ = "0.2.0"
