"""The PaddleRec dygraph contract for ESCM2 (rectools.contract.DygraphModel), used by
tools/trainer.py, tools/infer.py and export."""
import logging

import numpy as np
import paddle

from rectools.contract import DygraphModel as DygraphContract

from . import balance, losses, net
from .metrics import ctr_cvr_report

log = logging.getLogger("rectools")

PREDICTIONS = ("pctr", "pcvr")  # per-sample predictions kept for the metrics, beside the labels
LABELS = ("click", "buy")


class DygraphModel(DygraphContract):
    def create_model(self, config):
        self.config = config  # the propensity floor and the balance tolerance of summarize_metrics
        if not config["runner.calibrate_ctr"]:
            self.recalibrate = None
        return net.from_config(config)

    def create_feeds(self, batch, config):
        """numpy batch -> (distinct ids int64 [U], inverse int64 [B, fields, max_len], click float32 [B],
        buy float32 [B]) tensors: the batch's ids as net.distinct_ids gives them."""
        uniq, inverse = net.distinct_ids(batch["ids"], config["hyper_parameters.sparse_feature_number"])
        return (paddle.to_tensor(uniq), paddle.to_tensor(inverse),
                paddle.to_tensor(batch["click"], dtype="float32"),
                paddle.to_tensor(batch["buy"], dtype="float32"))

    def create_loss(self, outputs, click, buy, config, propensity=None):
        return losses.objective(outputs, click, buy, config, propensity)

    def create_optimizer(self, dy_model, config):
        return create_optimizer(dy_model.parameters(), config)

    def train_forward(self, dy_model, metrics, batch, config):
        uniq, inverse, click, buy = self.create_feeds(batch, config)
        outputs = dy_model(uniq, inverse)
        collect(metrics, batch, outputs[0].numpy(), outputs[1].numpy())
        # a batch may bring its own propensity [B] (the bias study's oracle arm: the true CTR)
        propensity = batch.get("propensity")
        if propensity is not None:
            propensity = paddle.to_tensor(propensity, dtype="float32")
        return self.create_loss(outputs, click, buy, config, propensity)

    infer_forward = train_forward  # the same computation; the caller decides on gradients

    def summarize_metrics(self, predictions):
        return summarize_metrics(predictions, self.config)

    def diagnose(self, record):
        return diagnose(record, self.config)

    def recalibrate(self, predictions, parameters):
        return recalibrate_ctr(predictions, parameters)


def collect(metrics, batch, pctr, pcvr):
    """A batch's pCTR and pCVR [B] and its labels into the epoch's metrics (labels as int8: they
    are 0/1, and an epoch keeps them for every impression)."""
    metrics.add(pctr=pctr, pcvr=pcvr, **{k: np.asarray(batch[k], dtype=np.int8) for k in LABELS})


def summarize_metrics(predictions, config):
    """The ESMM/ESCM2 evaluation protocol (rectools.metrics.ctr_cvr_report) of an epoch's predictions,
    and the balance check of pCTR as the propensity (balance.balance_report)."""
    return {**ctr_cvr_report(predictions),
            **balance.balance_report(predictions, config["hyper_parameters.propensity_floor"],
                                     config["runner.balance_tolerance"])}


def diagnose(record, config):
    """The warning lines of an evaluated epoch's record: a failed balance check."""
    line = balance.balance_warning(record, config["runner.balance_tolerance"])
    return [] if line is None else [line]


def ctr_logit_shift(pctr, click, steps=50):
    """delta with sum_i sigmoid(logit(pCTR_i) + delta) = sum_i click_i: the intercept of Platt scaling
    with its slope held at 1 (Platt 1999), by Newton's method on the monotone sum. pctr float [n]
    (clipped to [1e-7, 1 - 1e-7]), click 0/1 [n] with at least one click and one non-click."""
    p = np.clip(np.asarray(pctr, dtype=np.float64), 1e-7, 1 - 1e-7)
    logit, target, delta = np.log(p / (1 - p)), float(np.count_nonzero(click)), 0.0
    for _ in range(steps):
        q = 1.0 / (1.0 + np.exp(-(logit + delta)))
        gap = q.sum() - target
        delta -= gap / max(float((q * (1 - q)).sum()), 1e-12)
        if abs(gap) < 1e-9 * target:
            break
    return delta


def recalibrate_ctr(predictions, parameters):
    """runner.calibrate_ctr: the CTR tower's output bias [1] shifted by ctr_logit_shift over the
    given impressions (the validation split's, else the training data's), so that the checkpoint's
    mean pCTR equals their click rate (the last
    step of Adam leaves pCTR off the running average's calibration by up to ~10% either way). pCVR
    is untouched. Returns {name: new bias}, or {} without both classes of click."""
    pctr, click = predictions["pctr"], predictions["click"]
    clicks = int(np.count_nonzero(click))
    if not 0 < clicks < len(click):
        return {}
    delta = ctr_logit_shift(pctr, click)
    name = [k for k in parameters if k.startswith("towers.0.") and k.endswith(".bias")][-1]
    log.info("pCTR recalibrated on %d impressions: mean pCTR / clicks %.3f -> 1 (CTR logit %+.4f)",
             len(click), float(np.sum(pctr, dtype=np.float64)) / clicks, delta)
    return {name: (parameters[name] + delta).astype(parameters[name].dtype)}


def create_optimizer(parameters, config):
    hp = config.section("hyper_parameters")
    name, lr = hp["optimizer.class"], hp["optimizer.learning_rate"]
    if name == "adam":  # lazy: only the embedding rows of the batch move (sparse gradients)
        return paddle.optimizer.Adam(learning_rate=lr, parameters=parameters, lazy_mode=True)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters)
