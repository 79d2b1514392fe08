import itertools

import numpy as np
import pytest

from rectools.metrics import auc, calibration, ctr_cvr_report, logloss


def pairwise_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.uniform(size=200) + 0.3 * labels, 1)  # coarse: many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_is_exact_for_tiny_probabilities():
    scores = np.array([1e-6, 2e-6, 3e-6, 4e-6])  # a 4095-bucket AUC would see four equal scores
    assert auc([0, 0, 1, 1], scores) == 1.0
    assert auc([1, 1, 0, 0], scores) == 0.0


def test_auc_with_one_class_is_nan():
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_cvr_is_evaluated_over_clicked_impressions_only():
    click = np.array([1, 1, 1, 1, 0, 0])
    buy = np.array([1, 0, 1, 0, 0, 0])
    pctr = np.full(6, 0.5)
    pcvr = np.array([0.9, 0.1, 0.8, 0.2, 0.99, 0.95])  # unclicked scores would ruin an all-impression AUC
    report = ctr_cvr_report(pctr, pcvr, click, buy)
    assert report["auc_cvr"] == 1.0
    assert report["auc_ctcvr"] == pytest.approx(pairwise_auc(buy, pctr * pcvr))
    assert report["clicks"] == 4 and report["conversions"] == 2 and report["samples"] == 6
    assert report["calibration_cvr"] == pytest.approx(np.mean(pcvr[:4]) / 0.5)
    assert report["mean_pcvr"] == pytest.approx(pcvr.mean())
    assert report["logloss_cvr"] == pytest.approx(logloss(buy[:4], pcvr[:4]))


def test_logloss_and_calibration():
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert calibration([1, 0, 0, 0], [0.5] * 4) == pytest.approx(2.0)


def test_labels_of_any_integer_dtype_and_float32_scores_give_the_same_report():
    rng = np.random.default_rng(3)
    pctr, pcvr = rng.random(500).astype(np.float32), rng.random(500).astype(np.float32)
    click = (rng.random(500) < 0.4).astype(np.int64)
    buy = click * (rng.random(500) < 0.5)
    wide = ctr_cvr_report(pctr.astype(np.float64), pcvr.astype(np.float64), click, buy)
    narrow = ctr_cvr_report(pctr, pcvr, click.astype(np.int8), buy.astype(np.int8))
    assert wide.keys() == narrow.keys()
    for key in wide:
        assert narrow[key] == pytest.approx(wide[key], rel=1e-6), key


@pytest.mark.parametrize("seed", range(3))
def test_auc_without_ties_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    labels, scores = rng.integers(0, 2, 150), rng.permutation(150).astype(np.float32)
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)
