"""Exact, epoch-wide metrics. Predictions are accumulated as arrays and ranked once per epoch:
no threshold buckets, so AUC stays exact for the tiny pCTCVR values of conversion data."""
import numpy as np

from .contract import Predictions

EPS = 1e-7


def auc(labels, scores):
    """Rank-based ROC AUC of `scores` ([n], any real dtype, ranked as given) for 0/1 `labels` [n];
    tied scores share their average rank. NaN when one class is absent.
    Memory: about 14 bytes an item at once (the sort order, then the labels in score order)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered, hits = scores[order], labels[order]
    del order
    tie = ordered[1:] == ordered[:-1]
    del ordered
    if tie.any():  # average 1-based rank of each tie group, counted once per positive in it
        bounds = np.flatnonzero(np.r_[True, ~tie, True])
        positives = np.add.reduceat(hits, bounds[:-1], dtype=np.int64)
        rank_sum = float(positives @ ((bounds[:-1] + bounds[1:] + 1) / 2.0))
    else:
        rank_sum = float(np.flatnonzero(hits).sum()) + n_pos
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(labels, probs):
    """Mean binary cross-entropy of probabilities `probs` [n] (clipped to [EPS, 1 - EPS]) for 0/1 `labels` [n]."""
    if len(labels) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    np.subtract(1.0, p, out=p, where=np.asarray(labels) == 0)  # the probability given to the label seen
    return float(-np.log(p, out=p).mean())


def calibration(labels, probs):
    """Mean prediction over mean label: 1 is calibrated, >1 over-estimates."""
    mean_label = float(np.mean(labels, dtype=np.float64)) if len(labels) else 0.0
    return float(np.mean(probs, dtype=np.float64)) / mean_label if mean_label > 0 else float("nan")


def ctr_cvr_report(pctr, pcvr, click, buy):
    """The ESMM/ESCM2 protocol: CTR and CTCVR over all impressions, CVR over clicked ones.
    pctr, pcvr: probabilities [n] (float32 or float64, kept as given); click, buy: 0/1 [n] (any
    integer dtype). pCTCVR = pCTR * pCVR in float64, so that its tiny values keep their order."""
    pctr, pcvr = np.asarray(pctr), np.asarray(pcvr)
    click, buy = np.asarray(click), np.asarray(buy)
    pctcvr = pctr.astype(np.float64) * pcvr
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
        "mean_pcvr": float(pcvr.mean(dtype=np.float64)) if pcvr.size else float("nan"),
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
