"""Which figures a report shows, drawn with :mod:`bayeslmm.plots` into ``figures/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bayeslmm import plots
from bayeslmm.document import Image
from bayeslmm.tables import fixed_draws


def focus_term(result) -> str | None:
    """The numeric predictor the study is about: the first numeric fixed term of its first model."""
    for spec in result.study.models:
        for term in spec.formula.fixed:
            if term in result.data.columns and pd.api.types.is_numeric_dtype(result.data[term]):
                return term
    return None


def focus_group(result) -> str | None:
    """The first grouping factor used by any model of the study."""
    for spec in result.study.models:
        if spec.formula.random:
            return spec.formula.random[0].group
    return None


def _save(fig: plt.Figure, root: Path, name: str, caption: str, figures: list[Image]) -> None:
    (root / "figures").mkdir(exist_ok=True)
    fig.savefig(root / "figures" / f"{name}.png", bbox_inches="tight")
    plt.close(fig)
    figures.append(Image(f"figures/{name}.png", caption))


def _pooled_draws(result, x: str) -> dict[str, np.ndarray] | None:
    """Draws of the simplest model with ``x`` and an intercept and no random terms."""
    for spec in result.study.models:
        f = spec.formula
        if not f.random and f.fixed == (x,) and f.intercept and spec.name in result.fits:
            fit = result.fits[spec.name]
            return {"(Intercept)": fixed_draws(fit, "(Intercept)"), x: fixed_draws(fit, x)}
    return None


def make_figures(result, root: Path, tidy: pd.DataFrame) -> list[Image]:
    """Draw every figure of the report into ``root/figures``."""
    df, figures = result.data, []
    response = result.study.models[0].formula.response
    x, group = focus_term(result), focus_group(result)
    _save(plots.response_histogram(df, response), root, "response_histogram",
          f"Distribution of {response}.", figures)
    if x is not None:
        _save(plots.pooled_regression(df, x, response, _pooled_draws(result, x)), root, "pooled_regression",
              f"{response} against {x} with the pooled regression (posterior mean and 95% band): "
              "every observation treated as independent.", figures)
    if group is not None and ":" not in group:
        _save(plots.group_boxplot(df, response, group), root, f"boxplot_{group}",
              f"{response} by {group}: groups differ in their typical {response}.", figures)
        if x is not None:
            _save(plots.group_facets(df, x, response, group), root, f"facets_{group}",
                  f"A separate regression in each {group} (no pooling).", figures)
    if x is not None:
        order = [m.name for m in result.study.models]
        _save(plots.forest(tidy, x, models=order), root, f"forest_{x}",
              f"The estimate of {x} in every model, with its 95% interval.", figures)
    return figures
