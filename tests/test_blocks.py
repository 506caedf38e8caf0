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
def test_fitted_in_blocks_of_rows_is_the_mean_of_the_whole_linear_predictor(builtin, formula, monkeypatch):
    fit = bayes.fit(parse(formula), builtin, TINY, run=RunOptions(progress=False))
    whole = predict.linear_predictor(fit).mean(axis=0)
    population = predict.linear_predictor(fit, groups=()).mean(axis=0)
    new = builtin.sample(40, random_state=1)
    on_new = predict.linear_predictor(fit, new).mean(axis=0)
    monkeypatch.setattr(predict, "BLOCK_BYTES", 7 * 100 * 8)  # 7 rows of 100 draws at a time
    np.testing.assert_array_equal(predict.fitted(fit), whole)
    np.testing.assert_array_equal(predict.fitted(fit, groups=()), population)
    np.testing.assert_array_equal(predict.fitted(fit, new), on_new)
