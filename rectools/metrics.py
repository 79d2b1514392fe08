"""Exact, epoch-wide metrics. Predictions are accumulated as arrays and ranked once per epoch:
no threshold buckets, so AUC stays exact for the tiny pCTCVR values of conversion data."""
import numpy as np

from .contract import Predictions

EPS = 1e-7


def auc(labels, scores):
    """Rank-based ROC AUC; tied scores share their average rank. NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    tie_ranks = (bounds[:-1] + bounds[1:] + 1) / 2.0  # average 1-based rank of each tie group
    ranks = np.empty(labels.size)
    ranks[order] = np.repeat(tie_ranks, np.diff(bounds))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs):
    if len(labels) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(labels, probs):
    """Mean prediction over mean label: 1 is calibrated, >1 over-estimates."""
    mean_label = float(np.mean(labels)) if len(labels) else 0.0
    return float(np.mean(probs)) / mean_label if mean_label > 0 else float("nan")


def ctr_cvr_report(pctr, pcvr, click, buy):
    """The ESMM/ESCM2 protocol: CTR and CTCVR over all impressions, CVR over clicked ones."""
    pctr, pcvr = np.asarray(pctr, np.float64), np.asarray(pcvr, np.float64)
    click, buy = np.asarray(click), np.asarray(buy)
    pctcvr = pctr * pcvr
    clicked = click == 1
    return {
        "auc_ctr": auc(click, pctr),
        "auc_cvr": auc(buy[clicked], pcvr[clicked]),
        "auc_ctcvr": auc(buy, pctcvr),
        "logloss_ctr": logloss(click, pctr),
        "logloss_cvr": logloss(buy[clicked], pcvr[clicked]),
        "logloss_ctcvr": logloss(buy, pctcvr),
        "calibration_ctr": calibration(click, pctr),
        "calibration_cvr": calibration(buy[clicked], pcvr[clicked]),
        "calibration_ctcvr": calibration(buy, pctcvr),
        "mean_pcvr": float(pcvr.mean()) if pcvr.size else float("nan"),
        "samples": int(click.size),
        "clicks": int(clicked.sum()),
        "conversions": int((buy == 1).sum()),
    }


class Accumulator(Predictions):
    """Collects named per-batch arrays over an epoch (rectools.contract.Predictions)."""

    def __init__(self):
        self.parts = {}

    def add(self, **arrays):
        for name, value in arrays.items():
            self.parts.setdefault(name, []).append(np.asarray(value).reshape(-1))

    def arrays(self, last_batches=None):
        """Every array so far, or only what the last `last_batches` calls to add() brought."""
        first = 0 if last_batches is None else -last_batches
        return {name: np.concatenate(parts[first:]) for name, parts in self.parts.items()}
