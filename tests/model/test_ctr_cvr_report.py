"""The model's evaluation protocol (metrics.py): CTR and CTCVR over all impressions, CVR over clicked ones."""
import numpy as np
import pytest

from conftest import MODEL_DIR, pairwise_auc
from rectools.metrics import logloss
from rectools.model_loader import import_model_package, model_module

ctr_cvr_report = model_module(import_model_package(MODEL_DIR), "metrics", "test").ctr_cvr_report


def test_cvr_is_evaluated_over_clicked_impressions_only():
    click = np.array([1, 1, 1, 1, 0, 0])
    buy = np.array([1, 0, 1, 0, 0, 0])
    pctr = np.full(6, 0.5)
    pcvr = np.array([0.9, 0.1, 0.8, 0.2, 0.99, 0.95])  # unclicked scores would ruin an all-impression AUC
    report = ctr_cvr_report({"pctr": pctr, "pcvr": pcvr, "click": click, "buy": buy})
    assert report["auc_cvr"] == 1.0
    assert report["auc_ctcvr"] == pytest.approx(pairwise_auc(buy, pctr * pcvr))
    assert report["clicks"] == 4 and report["conversions"] == 2 and report["samples"] == 6
    assert report["calibration_cvr"] == pytest.approx(np.mean(pcvr[:4]) / 0.5)
    assert report["mean_pcvr"] == pytest.approx(pcvr.mean())
    assert report["logloss_cvr"] == pytest.approx(logloss(buy[:4], pcvr[:4]))


def test_logloss_and_calibration():
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    report = ctr_cvr_report({"pctr": np.full(4, 0.5), "pcvr": np.full(4, 0.5), "click": [1, 0, 0, 0], "buy": [0] * 4})
    assert report["calibration_ctr"] == pytest.approx(2.0) and np.isnan(report["calibration_cvr"])


def test_labels_of_any_integer_dtype_and_float32_scores_give_the_same_report():
    rng = np.random.default_rng(3)
    pctr, pcvr = rng.random(500).astype(np.float32), rng.random(500).astype(np.float32)
    click = (rng.random(500) < 0.4).astype(np.int64)
    buy = click * (rng.random(500) < 0.5)
    wide = ctr_cvr_report({"pctr": pctr.astype(np.float64), "pcvr": pcvr.astype(np.float64), "click": click, "buy": buy})
    narrow = ctr_cvr_report({"pctr": pctr, "pcvr": pcvr, "click": click.astype(np.int8), "buy": buy.astype(np.int8)})
    assert wide.keys() == narrow.keys()
    for key in wide:
        assert narrow[key] == pytest.approx(wide[key], rel=1e-6), key
