"""bayeslmm: Bayesian linear mixed models with lme4's formulas, beside lme4's own answer."""

__version__ = "0.1.0"
