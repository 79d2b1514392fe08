"""The PaddleRec static-graph contract for ESCM2 (rectools.contract.StaticModel), used by
tools/static_trainer.py and tools/static_infer.py. The program is built from the same net.py and
losses.py as dygraph; only the embedding lookup differs, so that the table's update touches the
batch's rows only (rectools.static_sparse)."""
import paddle

from rectools import static_sparse
from rectools.contract import StaticGraph
from rectools.contract import StaticModel as StaticContract

from . import losses, net
from .dygraph_model import (PREDICTIONS, collect, create_optimizer, ctr_prior_bias, diagnose, recalibrate_ctr,
                            summarize_metrics)


class StaticModel(StaticContract):
    def __init__(self, config):
        self.config = config
        if not config["runner.calibrate_ctr"]:
            self.recalibrate = None
        if not config["runner.ctr_prior_init"]:
            self.initialize = None
        hp = config.section("hyper_parameters")
        self.shape = [-1, len(hp["fields"]), hp["max_len"], hp["sparse_feature_dim"]]

    def create_feeds(self):
        """uniq int64 [U] (the batch's distinct ids), inverse int64 [B*fields*max_len] (each
        position's index in uniq), click and buy float32 [B]."""
        data = paddle.static.data
        return {"uniq": data("uniq", [-1], "int64"), "inverse": data("inverse", [-1], "int64"),
                "click": data("click", [-1], "float32"), "buy": data("buy", [-1], "float32")}

    def feed(self, batch):
        uniq, inverse = net.distinct_ids(batch["ids"], self.config["hyper_parameters.sparse_feature_number"])
        feed = {"uniq": uniq, "inverse": inverse.reshape(-1),
                "click": batch["click"].astype("float32"), "buy": batch["buy"].astype("float32")}
        if "propensity" in batch:  # a training batch of runner.propensity_file
            feed["propensity"] = batch["propensity"].astype("float32")
        return feed

    def net(self, feeds):
        """Fetches: the loss terms and pctr, pcvr [B]. With runner.propensity_file the training program
        also feeds propensity float32 [B], which the CVR risks divide by instead of pCTR."""
        given = None
        if self.config["runner.propensity_file"] is not None:
            given = paddle.static.data("propensity", [-1], "float32")
        return self.infer_net(feeds, given)

    def infer_net(self, feeds, propensity=None):
        """As net, the CVR risks dividing by pCTR (evaluation batches bring no propensity)."""
        layer = net.from_config(self.config)
        embedded, rows = static_sparse.lookup(layer.embedding.weight, feeds["uniq"], feeds["inverse"])
        outputs = layer.heads(embedded.reshape(self.shape))
        terms = losses.objective(outputs, feeds["click"], feeds["buy"], self.config, propensity)
        return StaticGraph(fetches={**terms, **dict(zip(PREDICTIONS, outputs))},
                           parameters=dict(layer.named_parameters()),
                           state={"layer": layer, "rows": rows, "uniq": feeds["uniq"]})

    def create_optimizer(self, graph):
        layer, hp = graph.state["layer"], self.config.section("hyper_parameters")
        table = layer.embedding.weight
        dense = [p for p in layer.parameters() if not p.is_same(table)]
        static_sparse.minimize(graph.fetches["loss"], table, graph.state["rows"], graph.state["uniq"],
                               create_optimizer(dense, self.config), dense,
                               kind=hp["optimizer.class"], learning_rate=hp["optimizer.learning_rate"])

    def collect(self, metrics, batch, fetched):
        collect(metrics, batch, *(fetched[k] for k in PREDICTIONS))
        return {k: float(v) for k, v in fetched.items() if k not in PREDICTIONS}

    def summarize_metrics(self, predictions):
        return summarize_metrics(predictions, self.config)

    def diagnose(self, record):
        return diagnose(record, self.config)

    def recalibrate(self, predictions, parameters):
        return recalibrate_ctr(predictions, parameters)

    def initialize(self, columns, parameters):
        return ctr_prior_bias(columns, parameters)
