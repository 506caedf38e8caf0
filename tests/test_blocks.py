"""Large data in bounded memory: what is computed a block of rows at a time equals the whole-array answer."""

import numpy as np
import pytest

from bayeslmm.engines import bayes
from bayeslmm.model.formula import parse
from bayeslmm.model.options import RunOptions, SamplerOptions
from bayeslmm.summary import predict

TINY = SamplerOptions(draws=50, tune=50, chains=2, seed=3)


@pytest.mark.parametrize("formula", ["testScore ~ bodyLength2 + (1|mountainRange) + (1|sample)",
                                     "testScore ~ bodyLength2 + (1 + bodyLength2||mountainRange)"])
def test_fitted_at_the_effects_means_is_the_mean_of_the_whole_linear_predictor(builtin, formula):
    fit = bayes.fit(parse(formula), builtin, TINY, run=RunOptions(progress=False))
    whole = predict.linear_predictor(fit).mean(axis=0)
    population = predict.linear_predictor(fit, groups=()).mean(axis=0)
    new = builtin.sample(40, random_state=1)
    on_new = predict.linear_predictor(fit, new).mean(axis=0)
    # the predictor is linear in the effects: the same numbers up to rounding (values ~50, sums of 100 draws)
    np.testing.assert_allclose(predict.fitted(fit), whole, rtol=1e-12)
    np.testing.assert_allclose(predict.fitted(fit, groups=()), population, rtol=1e-12)
    np.testing.assert_allclose(predict.fitted(fit, new), on_new, rtol=1e-12)
    with pytest.raises(AssertionError):  # and not trivially: dropping the group effects changes it
        np.testing.assert_allclose(predict.fitted(fit, groups=()), whole, rtol=1e-12)
