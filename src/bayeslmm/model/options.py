"""The options of a run, as frozen records checked where they are made.

:class:`SamplerOptions` says how to sample (it enters the cache key); :class:`RunOptions` says
how a run treats its fits and reports (interval mass, reuse of cached fits, missing values,
progress). The CLI builds both from its flags, the API takes them as arguments, and every
stage reads them from here: no option travels as a loose keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from bayeslmm.errors import OptionsError

Sampler = Literal["pymc", "nutpie"]
Engine = Literal["auto", "bambi", "marginal", "pymc", "glmm"]
NaAction = Literal["drop", "fail"]
#: The response distribution (lme4's glmer ``family``): gaussian (identity link, lmer), binomial
#: (logit link: cbind(successes, failures), a 0/1 column or a two-level factor), poisson (log link),
#: negbinomial (the negative binomial, log link: lme4's glmer.nb, Bambi's "negativebinomial", brms's name).
Family = Literal["gaussian", "binomial", "poisson", "negbinomial"]
#: The families of counts: non-negative whole numbers, log link, offsets as log exposures.
COUNT_FAMILIES = ("poisson", "negbinomial")
#: Other names of the negative binomial, refused with the one bayeslmm uses.
_NEGBINOMIAL_ALIASES = ("negativebinomial", "negative_binomial", "negative.binomial", "nb", "nbinom", "nbinom2")


#: Most Gauss-Hermite nodes of glmer's adaptive quadrature (lme4's ``nAGQ <= 100``); 1 is the Laplace approximation.
NAGQ_MAX = 100
#: The families whose glmer fits here take more than one node (checked against lme4: tests/test_glmer.py).
NAGQ_FAMILIES = ("binomial", "poisson")


def check_nagq(nagq, formula) -> int:
    """``nagq`` (glmer's ``nAGQ``) as an int if ``formula`` may be fitted with it, else a one-line OptionsError.

    lme4's rules, as far as the formula shows them: a whole number from 1 (the Laplace
    approximation, glmer's default) to :data:`NAGQ_MAX`; only for mixed models of a family other than
    the Gaussian (lmer integrates the random effects exactly, a glm has none); more than 1 only for
    :data:`NAGQ_FAMILIES` and a single random term of one coefficient, ``(1|g)`` or ``(0 + x|g)``. A
    factor slope, which is a column per level, is known only from the data:
    :func:`bayeslmm.lme4.glmer.check_nagq` checks the frame.
    """
    if isinstance(nagq, bool) or not isinstance(nagq, int | np.integer) or not 1 <= nagq <= NAGQ_MAX:
        raise OptionsError(f"nAGQ must be a whole number from 1 (Laplace) to {NAGQ_MAX}, not {nagq!r}")
    if not formula.is_glmm:
        raise OptionsError(f"nAGQ is for binomial and Poisson mixed models (glmer); {formula.text!r} is Gaussian "
                           "(lmer integrates its random effects exactly): drop nAGQ or choose the family")
    if not formula.is_mixed:
        raise OptionsError(f"nAGQ is for mixed models (glmer); {formula.text!r} has no random terms (a glm "
                           "integrates nothing): drop nAGQ")
    if nagq > 1 and formula.family not in NAGQ_FAMILIES:
        raise OptionsError(f"nAGQ > 1 is fitted here for {' and '.join(NAGQ_FAMILIES)} mixed models, not "
                           f"{formula.family}: use nAGQ = 1 (Laplace)")
    if nagq > 1 and (len(formula.random) != 1 or len(formula.random[0].coefs) != 1):
        terms = " + ".join(t.lme4 for t in formula.random)
        raise OptionsError(f"nAGQ > 1 needs a single random term with one coefficient, such as (1|g), as in lme4; "
                           f"{formula.text!r} has {terms}: use nAGQ = 1 (Laplace)")
    return int(nagq)
#: Default cap on the observations refitted per model where PSIS-LOO fails (each refit of the dragons takes ~0.3 s).
MAX_REFITS = 20


def check_family(family) -> str:
    """``family`` if it is one bayeslmm fits, else a one-line OptionsError naming those it does."""
    if isinstance(family, str) and family.lower() in _NEGBINOMIAL_ALIASES:
        raise OptionsError(f"--family {family!r}: the negative binomial is called 'negbinomial' here (lme4's "
                           "glmer.nb, Bambi's negativebinomial); use --family negbinomial")
    _check_choice("--family", family, Family)
    return family


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample.

    The defaults were chosen by measurement (README, "Engines and samplers"): ``engine="auto"``
    takes the exact marginal engine wherever it applies (hundreds of times the effective
    samples per second, no divergences); for the Bambi engine, PyMC's NUTS with
    ``target_accept=0.95`` gave no divergences and r_hat <= 1.01 on the tutorial models where
    0.8 left divergences and nutpie's Intercept r_hat stayed above 1.01 at 1000 draws.
    ``sampler`` applies to the Bambi engine only. ``target_ess`` (the marginal engine only; set by
    its plan for large designs, :func:`bayeslmm.engines.marginal.plan`) stops sampling at the first
    100 draws per chain where every fixed effect, sd and correlation has bulk and tail ESS of at
    least ``target_ess`` and r_hat <= 1.01; ``draws`` is then the most each chain takes.
    """

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 20260401
    target_accept: float = 0.95
    sampler: Sampler = "pymc"
    engine: Engine = "auto"
    target_ess: int | None = None

    def __post_init__(self) -> None:
        for name in ("draws", "tune", "chains") + (("target_ess",) if self.target_ess is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise OptionsError(f"--{name.replace('_', '-')} must be a positive whole number, not {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise OptionsError(f"--seed must be a non-negative whole number, not {self.seed!r}")
        if not 0.5 <= float(self.target_accept) < 1.0:
            raise OptionsError(f"--target-accept must be in [0.5, 1), not {self.target_accept!r}")
        _check_choice("--sampler", self.sampler, Sampler)
        _check_choice("--engine", self.engine, Engine)


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its fits and reports.

    Attributes
    ----------
    ci : float
        Mass of every interval: tables, figures, the report (``--ci``).
    refit : bool
        Ignore cached posteriors (``--refit``).
    na : {"drop", "fail"}
        Rows with missing values in a model's columns: drop them with a warning, or refuse (``--na``).
    progress : bool
        Show the sampler's progress bar (on stderr, when it is a terminal).
    pb : int
        Simulations of a parametric-bootstrap LRT beside each comparison's chi-square one (``--pb``;
        0: none). Linear mixed models only.
    max_refits : int
        Observations refitted per model where PSIS-LOO's Pareto k > 0.7, the worst first (``--max-refits``;
        0: PSIS alone).
    logo : str, optional
        Grouping factor for leave-one-group-out cross-validation in every comparison (``--logo``).
    """

    ci: float = 0.95
    refit: bool = False
    na: NaAction = "drop"
    progress: bool = True
    pb: int = 0
    max_refits: int = MAX_REFITS
    logo: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ci, bool) or not isinstance(self.ci, int | float | np.floating) or not 0 < self.ci < 1:
            raise OptionsError(f"--ci must be a number between 0 and 1 (e.g. 0.95), not {self.ci!r}")
        _check_choice("--na", self.na, NaAction)
        for name in ("refit", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise OptionsError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if isinstance(self.pb, bool) or not isinstance(self.pb, int) or self.pb < 0:
            raise OptionsError(f"--pb must be a whole number of simulations (0 for none; 1000 as pbkrtest), "
                               f"not {self.pb!r}")
        refits = self.max_refits
        if isinstance(refits, bool) or not isinstance(refits, int | np.integer) or refits < 0:
            raise OptionsError(f"--max-refits must be a whole number >= 0, not {refits!r}")
        if self.logo is not None and (not isinstance(self.logo, str) or not self.logo.strip()):
            raise OptionsError(f"--logo must name a grouping factor, not {self.logo!r}")


def _check_choice(flag: str, value, kind) -> None:
    if value not in get_args(kind):
        raise OptionsError(f"{flag} must be one of {', '.join(get_args(kind))}, not {value!r}")
