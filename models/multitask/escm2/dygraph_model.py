"""The PaddleRec dygraph contract for ESCM2 (rectools.contract.DygraphModel), used by
tools/trainer.py, tools/infer.py and export."""
import logging
import math
import re

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
        if not config["runner.ctr_prior_init"]:
            self.initialize = None
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
        # a training batch of runner.propensity_file brings its propensity [B]; static feeds it only then too
        propensity = batch.get("propensity") if config["runner.propensity_file"] is not None else None
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

    def initialize(self, columns, parameters):
        return ctr_prior_bias(columns, parameters)


def collect(metrics, batch, pctr, pcvr):
    """A batch's pCTR and pCVR [B] and its labels into the epoch's metrics (labels as int8: they
    are 0/1, and an epoch keeps them for every impression), and its given propensity [B] where it
    brings one (runner.propensity_file), which the balance check then reads in place of pCTR."""
    given = {"propensity": batch["propensity"]} if "propensity" in batch else {}
    metrics.add(pctr=pctr, pcvr=pcvr, **given, **{k: np.asarray(batch[k], dtype=np.int8) for k in LABELS})


def summarize_metrics(predictions, config):
    """The ESMM/ESCM2 evaluation protocol (rectools.metrics.ctr_cvr_report) of an epoch's predictions,
    and the balance check of the propensity the CVR risks divide by (balance.balance_report)."""
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


def output_bias(parameters, tower):
    """The name of tower `tower`'s output bias [1] (0 CTR, 1 CVR, 2 DR's imputation) among the
    parameters' names: the bias of the last Linear of towers.<tower>, whichever backbone (by layer
    number, not as text: layer 10 comes after layer 4). Raises ValueError when there is none."""
    pattern = re.compile(rf"towers\.{tower}\.(\d+)\.bias")
    layers = [int(m.group(1)) for m in map(pattern.fullmatch, parameters) if m]
    if not layers:
        raise ValueError(f"no output bias of tower {tower} (towers.{tower}.*.bias) among the parameters")
    return f"towers.{tower}.{max(layers)}.bias"


def ctr_prior_bias(columns, parameters):
    """runner.ctr_prior_init: the CTR tower's output bias set to logit(c), c the click rate of the
    training sample (rectools.loops.spread_sample), so that the fresh net (its other terms near 0 at
    the initialisation's scale) starts at the click rate, the constant its loss is best at, instead
    of sigmoid(0) = 0.5 (the "prior" initialisation of Lin et al., ICCV 2017, section 4.1). Started
    at 0.5 far from its rate (CTR ~0.04 on Ali-CCP), the tower spends its first steps moving its bias
    while the shared embeddings learn from a loss dominated by that miscalibration: the propensity
    it gives after two epochs is weaker (docs/bias_study.md: CTR AUC 0.67 -> 0.72 where the
    selection runs through user x item ids). The CVR tower keeps its start: its base rate over all impressions is what
    the model is there to estimate, and the clicked impressions' rate is the selection-biased one.

    columns: the training sample's 1-D arrays, "click" (0/1) among them (the others are ignored);
    parameters: name -> array. Returns {name: new bias, float32 [1]}, or {} (with a warning) when the
    sample's click rate is 0 or 1. Raises ValueError when the parameters hold no CTR tower output
    bias, KeyError when the columns hold no "click"."""
    name = output_bias(parameters, 0)
    click = np.asarray(columns["click"]) > 0
    clicks = int(click.sum())
    if not 0 < clicks < click.size:
        log.warning("runner.ctr_prior_init: %d of the %d training impressions read are clicks: the CTR tower "
                    "starts at about 0.5", clicks, click.size)
        return {}
    rate = clicks / click.size
    bias = math.log(rate / (1.0 - rate))
    log.info("the CTR tower starts at the click rate of %d training impressions, %.4g (output bias %+.4f)",
             click.size, rate, bias)
    return {name: np.full_like(parameters[name], bias)}


def recalibrate_ctr(predictions, parameters):
    """runner.calibrate_ctr: the CTR tower's output bias [1] shifted by ctr_logit_shift over the
    given training impressions, so that the checkpoint's mean pCTR equals their click rate (Adam's
    last steps leave pCTR off the running average's calibration by up to ~10% either way). pCVR is
    untouched. Returns {name: new bias}, or {} (with a warning) when no shift reaches the click rate.
    Raises ValueError when the parameters hold no CTR tower bias (towers.0.*.bias)."""
    pctr, click = predictions["pctr"], predictions["click"]
    name = output_bias(parameters, 0)
    clicks = int(np.count_nonzero(click))
    delta = ctr_logit_shift(pctr, click)
    if delta is None:
        log.warning("pCTR not recalibrated: no shift of its logit within +-30 makes mean pCTR the click rate "
                    "of these %d impressions (%d clicks)", len(click), clicks)
        return {}
    log.info("pCTR recalibrated on %d training impressions: mean pCTR / clicks %.3f -> 1 (CTR logit %+.4f)",
             len(click), float(np.sum(pctr, dtype=np.float64)) / clicks, delta)
    return {name: (parameters[name] + delta).astype(parameters[name].dtype)}


def create_optimizer(parameters, config):
    hp = config.section("hyper_parameters")
    name, lr = hp["optimizer.class"], hp["optimizer.learning_rate"]
    if name == "adam":  # lazy: only the embedding rows of the batch move (sparse gradients)
        return paddle.optimizer.Adam(learning_rate=lr, parameters=parameters, lazy_mode=True)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters)
