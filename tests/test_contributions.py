"""Path contributions: they add up to the booster's raw score and credit only the features a row's path splits on."""

import lightgbm as lgb
import numpy as np
import pytest

from nexttouch.contributions import PathContributions


@pytest.fixture(scope="module")
def booster() -> tuple[lgb.Booster, np.ndarray]:
    """Numeric, categorical and missing values, as in the decision model (the action is categorical)."""
    rng = np.random.default_rng(0)
    n = 3000
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 30, n).astype(float), rng.integers(0, 4, n)])
    x[rng.random(n) < 0.2, 0] = np.nan
    y = ((np.nan_to_num(x[:, 0]) > 0.3) ^ (x[:, 2] == 2)) | (x[:, 1] > 25)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 15, "min_data_in_leaf": 10}
    return lgb.train(params, lgb.Dataset(x, y.astype(float), categorical_feature=[2]), num_boost_round=60), x


def test_contributions_and_bias_add_up_to_the_raw_score(booster: tuple[lgb.Booster, np.ndarray]) -> None:
    model, x = booster
    paths = PathContributions(model)
    contrib = paths(x[:500])
    assert contrib.shape == (500, 3)
    np.testing.assert_allclose(paths.bias + contrib.sum(axis=1), model.predict(x[:500], raw_score=True), atol=1e-9)
    one = paths(x[7:8])  # the single-row path gives the same numbers
    np.testing.assert_allclose(one, contrib[7:8], atol=1e-12)
    assert paths.binary  # the leaves reached give the prediction itself
    np.testing.assert_allclose(paths.probability(paths.leaves(x[:500])), model.predict(x[:500]), rtol=1e-12)
    # TreeSHAP agrees on the total (both are exact decompositions of the same score)
    shap = model.predict(x[:500], pred_contrib=True)
    np.testing.assert_allclose(shap.sum(axis=1), paths.bias + contrib.sum(axis=1), atol=1e-9)


def test_a_feature_no_tree_splits_on_gets_nothing() -> None:
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(size=2000), np.full(2000, 3.0)])  # the second column cannot split
    y = (x[:, 0] > 0).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 4, "min_data_in_leaf": 50}
    model = lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)
    assert model.feature_importance()[1] == 0
    contrib = PathContributions(model)(x[:100])
    assert np.all(contrib[:, 1] == 0)
    assert np.all(np.sign(contrib[:, 0]) == np.where(x[:100, 0] > 0, 1, -1))  # the signal pushes the right way


def test_a_huge_model_falls_back_to_treeshap(booster: tuple[lgb.Booster, np.ndarray], monkeypatch) -> None:
    import nexttouch.contributions as contributions

    model, x = booster
    monkeypatch.setattr(contributions, "MAX_TABLE_BYTES", 1)
    paths = contributions.PathContributions(model)
    assert not paths.enabled
    np.testing.assert_allclose(paths(x[:20]), model.predict(x[:20], pred_contrib=True)[:, :-1])
