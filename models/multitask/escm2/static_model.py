"""The PaddleRec static-graph contract for ESCM2, used by tools/static_trainer.py and
tools/static_infer.py. The program is built from the same net.py and losses.py as dygraph;
only the embedding lookup differs, so that the table's update touches the batch's rows only."""
import paddle

from rectools import static_sparse
from rectools.metrics import Accumulator

from . import losses, net
from .dygraph_model import create_optimizer, summarize_metrics


class StaticModel:
    def __init__(self, config):
        self.config = config
        hp = lambda key: config["hyper_parameters." + key]  # noqa: E731
        self.shape = [-1, len(hp("fields")), hp("max_len"), hp("sparse_feature_dim")]

    def create_feeds(self):
        data = paddle.static.data
        return {"uniq": data("uniq", [-1], "int64"), "inverse": data("inverse", [-1], "int64"),
                "click": data("click", [-1], "float32"), "buy": data("buy", [-1], "float32")}

    def feed(self, batch):
        """numpy batch -> the program's feed dict."""
        uniq, inverse = static_sparse.host_unique(batch["ids"])
        return {"uniq": uniq, "inverse": inverse,
                "click": batch["click"].astype("float32"), "buy": batch["buy"].astype("float32")}

    def net(self, feeds):
        """Fetches: the loss terms and the predictions."""
        self.layer = net.from_config(self.config)
        self.feeds = feeds
        embedded, self.rows = static_sparse.lookup(self.layer.embedding.weight, feeds["uniq"], feeds["inverse"])
        outputs = self.layer.heads(embedded.reshape(self.shape))
        terms = losses.objective(outputs, feeds["click"], feeds["buy"], self.config)
        return {**terms, "pctr": outputs[0], "pcvr": outputs[1]}

    infer_net = net

    def create_optimizer(self, fetches):
        table = self.layer.embedding.weight
        dense = [p for p in self.layer.parameters() if not p.is_same(table)]
        optimizer = create_optimizer(dense, self.config)
        static_sparse.minimize(fetches["loss"], table, self.rows, self.feeds["uniq"], optimizer, dense,
                               kind=self.config["hyper_parameters.optimizer.class"],
                               learning_rate=self.config["hyper_parameters.optimizer.learning_rate"])

    def parameter_names(self):
        """Checkpoint name (as in dygraph's state_dict) -> the program's parameter name."""
        return {key: p.name for key, p in self.layer.named_parameters()}

    def create_metrics(self):
        return Accumulator()

    def collect(self, metrics, batch, fetched):
        """Predictions of a step into the metrics; returns the loss terms as floats."""
        metrics.add(pctr=fetched["pctr"], pcvr=fetched["pcvr"], click=batch["click"], buy=batch["buy"])
        return {k: float(v) for k, v in fetched.items() if k not in ("pctr", "pcvr")}

    def summarize_metrics(self, metrics, last_batches=None):
        return summarize_metrics(metrics, last_batches)
