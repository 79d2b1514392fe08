"""The PaddleRec dygraph contract for ESCM2 (rectools.contract.DygraphModel), used by
tools/trainer.py, tools/infer.py and export."""
import logging

import numpy as np
import paddle

from rectools.contract import DygraphModel as DygraphContract

from . import balance, losses, net
from .config_schema import PROPENSITY_MODES
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
                                     config["runner.balance_tolerance"],
                                     propensity_power=config["hyper_parameters.propensity_power"])}


def diagnose(record, config):
    """The warning lines of an evaluated epoch's record: a failed balance check, in the modes that
    divide by the propensity (IPW, DR)."""
    if config["runner.counterfact_mode"] not in PROPENSITY_MODES:
        return []
    line = balance.balance_warning(record, config["runner.balance_tolerance"])
    return [] if line is None else [line]


def ctr_logit_shift(pctr, click, steps=100):
    """delta with sum_i sigmoid(logit(pCTR_i) + delta) = sum_i click_i: the intercept of Platt scaling
    with its slope held at 1 (Platt 1999). The sum rises monotonically with delta, so bisection in
    [-30, 30] finds it whatever pCTR's scale (Newton's steps overshoot when pCTR is far off). pctr
    float [n] (clipped to [1e-7, 1 - 1e-7]), click 0/1 [n]. Returns None when no delta in the bracket
    reaches the click rate (all clicks or none, or pCTR off by more than a factor e^30)."""
    p = np.clip(np.asarray(pctr, dtype=np.float64), 1e-7, 1 - 1e-7)
    logit, target = np.log(p / (1 - p)), float(np.count_nonzero(click))

    def excess(delta):
        return float((1.0 / (1.0 + np.exp(-(logit + delta)))).sum()) - target

    low, high = -30.0, 30.0
    if not excess(low) < 0 < excess(high):
        return None
    for _ in range(steps):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if excess(middle) < 0 else (low, middle)
        if high - low < 1e-9:
            break
    return 0.5 * (low + high)


def recalibrate_ctr(predictions, parameters):
    """runner.calibrate_ctr: the CTR tower's output bias [1] shifted by ctr_logit_shift over the
    given training impressions, so that the checkpoint's mean pCTR equals their click rate (Adam's
    last steps leave pCTR off the running average's calibration by up to ~10% either way). pCVR is
    untouched. Returns {name: new bias}, or {} (with a warning) when no shift reaches the click rate.
    Raises ValueError when the parameters hold no CTR tower bias (towers.0.*.bias)."""
    pctr, click = predictions["pctr"], predictions["click"]
    names = [k for k in parameters if k.startswith("towers.0.") and k.endswith(".bias")]
    if not names:
        raise ValueError("no CTR tower output bias (towers.0.*.bias) among the parameters")
    clicks = int(np.count_nonzero(click))
    delta = ctr_logit_shift(pctr, click)
    if delta is None:
        log.warning("pCTR not recalibrated: no shift of its logit within +-30 makes mean pCTR the click rate "
                    "of these %d impressions (%d clicks)", len(click), clicks)
        return {}
    log.info("pCTR recalibrated on %d training impressions: mean pCTR / clicks %.3f -> 1 (CTR logit %+.4f)",
             len(click), float(np.sum(pctr, dtype=np.float64)) / clicks, delta)
    return {names[-1]: (parameters[names[-1]] + delta).astype(parameters[names[-1]].dtype)}


def create_optimizer(parameters, config):
    hp = config.section("hyper_parameters")
    name, lr = hp["optimizer.class"], hp["optimizer.learning_rate"]
    if name == "adam":  # lazy: only the embedding rows of the batch move (sparse gradients)
        return paddle.optimizer.Adam(learning_rate=lr, parameters=parameters, lazy_mode=True)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters)
