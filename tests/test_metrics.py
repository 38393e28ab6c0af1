"""The IQA metrics against independent textbook formulas."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from utils.metrics import iqa_metrics


def _ranks(x):
    return np.argsort(np.argsort(x)).astype(float)


def test_metrics_against_textbook_formulas():
    rng = np.random.default_rng(0)
    label = rng.uniform(0, 1, 40)
    pred = label ** 2 + rng.normal(0, 0.1, 40)
    m = iqa_metrics(pred, label)
    assert m["plcc"] == pytest.approx(np.corrcoef(pred, label)[0, 1], abs=1e-12)
    assert m["srcc"] == pytest.approx(np.corrcoef(_ranks(pred), _ranks(label))[0, 1], abs=1e-12)
    pairs = list(itertools.combinations(range(40), 2))
    concordant = sum(np.sign(pred[i] - pred[j]) * np.sign(label[i] - label[j]) for i, j in pairs)
    assert m["krcc"] == pytest.approx(concordant / len(pairs), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(((pred - label) ** 2).mean()), abs=1e-12)
    assert m["main_score"] == pytest.approx(m["plcc"] + m["srcc"])


def test_perfect_and_reversed_order():
    x = np.linspace(0, 1, 10)
    assert iqa_metrics(x ** 3, x)["srcc"] == pytest.approx(1.0)
    assert iqa_metrics(-x, x)["krcc"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        iqa_metrics(np.ones(1), np.ones(1))


def test_logistic_mapping_recovers_a_known_curve():
    from utils.metrics import fit_logistic4, logistic4
    pred = np.linspace(-3, 3, 60)
    label = logistic4(pred, 0.9, 0.1, 0.4, 0.7)
    params = fit_logistic4(pred, label)
    np.testing.assert_allclose(logistic4(pred, *params), label, atol=1e-6)
    m = iqa_metrics(pred, label)
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-9) and m["plcc"] < 0.99  # raw PLCC sees the bend
    assert m["plcc_logistic_note"] is None
    few = iqa_metrics(np.arange(3.0), np.arange(3.0))
    assert few["plcc_logistic"] is None and few["plcc_logistic_note"] == "fewer than 5 images"


def test_the_fits_jacobian_is_the_curves_derivative():
    """The logistic fit's analytic Jacobian against central differences, on the slope and where the curve is flat."""
    from utils.metrics import _rising, _rising_jacobian
    x = np.array([-3.0, -0.2, 0.1, 0.45, 0.8, 40.0])
    for params in ([0.1, 0.8, 0.4, 0.7], [-1.0, 2.5, 0.2, 0.05], [0.0, 1.0, 0.0, 1e-3]):
        step = 1e-6 * np.maximum(np.abs(params), 1e-3)
        numeric = np.stack([(_rising(x, *np.add(params, np.eye(4)[k] * step[k]))
                             - _rising(x, *np.subtract(params, np.eye(4)[k] * step[k]))) / (2 * step[k])
                            for k in range(4)], axis=1)
        np.testing.assert_allclose(_rising_jacobian(x, *params), numeric, rtol=1e-5, atol=1e-6)


def test_a_logistic_fit_that_is_a_step_gives_no_logistic_plcc():
    """Six images whose labels fall in two groups: the least-squares logistic is a step between the groups, and its
    PLCC (1.0 here) would say the model is perfect whatever the order within the groups."""
    pred = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.6])
    label = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    m = iqa_metrics(pred, label)
    assert m["plcc_logistic"] is None and m["plcc_logistic_note"].startswith("the fitted logistic is a step")
    assert m["plcc"] == pytest.approx(np.corrcoef(pred, label)[0, 1])


def test_metrics_are_strict_json_when_a_correlation_is_undefined():
    import json
    m = iqa_metrics(np.ones(6), np.arange(6.0))  # constant predictions: no correlation is defined
    assert m["srcc"] is None and m["plcc"] is None and m["main_score"] is None
    json.dumps(m, allow_nan=False)
