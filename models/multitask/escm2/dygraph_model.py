"""The PaddleRec dygraph contract for ESCM2, used by tools/trainer.py and tools/infer.py."""
import paddle

from rectools.metrics import Accumulator, ctr_cvr_report

from . import losses, net


class DygraphModel:
    def create_model(self, config):
        return net.from_config(config)

    def create_feeds(self, batch, config):
        """numpy batch -> (ids tensor, click, buy as float tensors)."""
        return (paddle.to_tensor(batch["ids"]),
                paddle.to_tensor(batch["click"], dtype="float32"),
                paddle.to_tensor(batch["buy"], dtype="float32"))

    def create_loss(self, outputs, click, buy, config):
        return losses.objective(outputs, click, buy, config)

    def create_optimizer(self, dy_model, config):
        return create_optimizer(dy_model.parameters(), config)

    def create_metrics(self):
        return Accumulator()

    def train_forward(self, dy_model, metrics, batch, config):
        """The loss terms of the batch (dict of scalar tensors); the batch's predictions go to metrics."""
        ids, click, buy = self.create_feeds(batch, config)
        outputs = dy_model(ids)
        metrics.add(pctr=outputs[0].numpy(), pcvr=outputs[1].numpy(), click=batch["click"], buy=batch["buy"])
        return self.create_loss(outputs, click, buy, config)

    infer_forward = train_forward  # the same computation; the caller decides on gradients

    def summarize_metrics(self, metrics, last_batches=None):
        return summarize_metrics(metrics, last_batches)


def summarize_metrics(metrics, last_batches=None):
    return ctr_cvr_report(**metrics.arrays(last_batches))


def create_optimizer(parameters, config):
    name = config["hyper_parameters.optimizer.class"]
    lr = config["hyper_parameters.optimizer.learning_rate"]
    if name == "adam":  # lazy: only the embedding rows of the batch move (sparse gradients)
        return paddle.optimizer.Adam(learning_rate=lr, parameters=parameters, lazy_mode=True)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters)
