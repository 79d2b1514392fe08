"""The PaddleRec dygraph contract for ESCM2 (rectools.contract.DygraphModel), used by
tools/trainer.py, tools/infer.py and export."""
import numpy as np
import paddle

from rectools.contract import DygraphModel as DygraphContract

from . import losses, net
from .metrics import ctr_cvr_report

PREDICTIONS = ("pctr", "pcvr")  # per-sample predictions kept for the metrics, beside the labels
LABELS = ("click", "buy")


class DygraphModel(DygraphContract):
    def create_model(self, config):
        return net.from_config(config)

    def create_feeds(self, batch, config):
        """numpy batch -> (distinct ids int64 [U], inverse int64 [B, fields, max_len], click float32 [B],
        buy float32 [B]) tensors: the batch's ids as net.distinct_ids gives them."""
        uniq, inverse = net.distinct_ids(batch["ids"], config["hyper_parameters.sparse_feature_number"])
        return (paddle.to_tensor(uniq), paddle.to_tensor(inverse),
                paddle.to_tensor(batch["click"], dtype="float32"),
                paddle.to_tensor(batch["buy"], dtype="float32"))

    def create_loss(self, outputs, click, buy, config):
        return losses.objective(outputs, click, buy, config)

    def create_optimizer(self, dy_model, config):
        return create_optimizer(dy_model.parameters(), config)

    def train_forward(self, dy_model, metrics, batch, config):
        uniq, inverse, click, buy = self.create_feeds(batch, config)
        outputs = dy_model(uniq, inverse)
        collect(metrics, batch, outputs[0].numpy(), outputs[1].numpy())
        return self.create_loss(outputs, click, buy, config)

    infer_forward = train_forward  # the same computation; the caller decides on gradients

    def summarize_metrics(self, predictions):
        return summarize_metrics(predictions)


def collect(metrics, batch, pctr, pcvr):
    """A batch's pCTR and pCVR [B] and its labels into the epoch's metrics (labels as int8: they
    are 0/1, and an epoch keeps them for every impression)."""
    metrics.add(pctr=pctr, pcvr=pcvr, **{k: np.asarray(batch[k], dtype=np.int8) for k in LABELS})


def summarize_metrics(predictions):
    """The ESMM/ESCM2 evaluation protocol (rectools.metrics.ctr_cvr_report) of an epoch's predictions."""
    return ctr_cvr_report(predictions)


def create_optimizer(parameters, config):
    hp = config.section("hyper_parameters")
    name, lr = hp["optimizer.class"], hp["optimizer.learning_rate"]
    if name == "adam":  # lazy: only the embedding rows of the batch move (sparse gradients)
        return paddle.optimizer.Adam(learning_rate=lr, parameters=parameters, lazy_mode=True)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters)
