"""The model-folder contract: this repository's folder meets it, and a second model written here,
a logistic regression on dense features, trains, evaluates, exports and serves through the same
tools in both graph modes, with nothing of it in rectools."""
import csv
import textwrap

import numpy as np
import pytest

from conftest import MODEL_DIR, model_config, ok, read_jsonl, run_tool
from rectools import model_loader
from rectools.contract import check_model_folder

TOY = {
    "config_schema.py": '''
        from rectools.config import Key
        from rectools.errors import ConfigError

        KEYS = [
            Key("runner.train_reader_path", "str", "dense_reader", "reader module"),
            Key("runner.infer_reader_path", "str", "dense_reader", "reader module used by infer"),
            Key("hyper_parameters.features", "int", 4, "dense features per sample", minimum=1),
            Key("hyper_parameters.learning_rate", "float", 1.0, "SGD learning rate", minimum=0),
        ]
        PARAMETER_KEYS = ("hyper_parameters.features",)


        def validate(config):
            if config["runner.train_batch_size"] > 100000:
                raise ConfigError("toy: batches this large are not for a toy")
        ''',
    "dense_reader.py": '''
        import numpy as np

        from rectools.contract import Reader


        class RecDataset(Reader):
            """Lines `sample_id,label,x_1,...,x_F`."""

            def __init__(self, file_list, config):
                self.file_list = list(file_list)

            def chunks(self):
                for path in self.file_list:
                    table = np.loadtxt(path, delimiter=",", ndmin=2)
                    yield {"sample_id": table[:, 0].astype(np.int64), "label": table[:, 1].astype(np.int64),
                           "x": table[:, 2:].astype(np.float32)}
        ''',
    "net.py": '''
        import paddle


        class Logistic(paddle.nn.Layer):
            def __init__(self, features):
                super().__init__()
                self.linear = paddle.nn.Linear(features, 1)

            def forward(self, x):
                return paddle.nn.functional.sigmoid(self.linear(x)).squeeze(-1)


        def loss(p, label):
            return paddle.nn.functional.binary_cross_entropy(p, label)
        ''',
    "dygraph_model.py": '''
        import paddle

        from rectools.contract import DygraphModel as Contract
        from rectools.metrics import auc

        from . import net


        class DygraphModel(Contract):
            def create_model(self, config):
                return net.Logistic(config["hyper_parameters.features"])

            def create_optimizer(self, dy_model, config):
                return paddle.optimizer.SGD(config["hyper_parameters.learning_rate"], parameters=dy_model.parameters())

            def train_forward(self, dy_model, metrics, batch, config):
                p = dy_model(paddle.to_tensor(batch["x"]))
                metrics.add(p=p.numpy(), label=batch["label"])
                return {"loss": net.loss(p, paddle.to_tensor(batch["label"], dtype="float32"))}

            infer_forward = train_forward

            def summarize_metrics(self, predictions):
                return {"auc": auc(predictions["label"], predictions["p"])}
        ''',
    "static_model.py": '''
        import paddle

        from rectools.contract import StaticGraph
        from rectools.contract import StaticModel as Contract
        from rectools.metrics import auc

        from . import net


        class StaticModel(Contract):
            def __init__(self, config):
                self.config = config

            def create_feeds(self):
                return {"x": paddle.static.data("x", [-1, self.config["hyper_parameters.features"]], "float32"),
                        "label": paddle.static.data("label", [-1], "float32")}

            def feed(self, batch):
                return {"x": batch["x"], "label": batch["label"].astype("float32")}

            def net(self, feeds):
                layer = net.Logistic(self.config["hyper_parameters.features"])
                p = layer(feeds["x"])
                return StaticGraph(fetches={"loss": net.loss(p, feeds["label"]), "p": p},
                                   parameters=dict(layer.named_parameters()))

            infer_net = net

            def create_optimizer(self, graph):
                paddle.optimizer.SGD(self.config["hyper_parameters.learning_rate"]).minimize(graph.fetches["loss"])

            def collect(self, metrics, batch, fetched):
                metrics.add(p=fetched["p"], label=batch["label"])
                return {"loss": float(fetched["loss"])}

            def summarize_metrics(self, predictions):
                return {"auc": auc(predictions["label"], predictions["p"])}
        ''',
    "serving.py": '''
        import json
        import os

        import paddle

        from rectools.serving import save_inference_model

        OUTPUTS = ("p",)
        MODEL, PARAMS, SIGNATURE = "model.json", "model.pdiparams", "serving.json"


        def signature(config):
            return {"features": config["hyper_parameters.features"]}


        def export(net, config, out_dir):
            spec = [paddle.static.InputSpec([None, config["hyper_parameters.features"]], "float32", name="x")]
            net.eval()
            save_inference_model(net, spec, OUTPUTS, out_dir, MODEL)
            with open(os.path.join(out_dir, SIGNATURE), "w") as f:
                json.dump(signature(config), f)


        def inputs(batch, config):
            return {"x": batch["x"]}
        ''',
    "config.yaml": '''
        runner:
          train_data_dir: "data/train"
          test_data_dir: "data/test"
          epochs: 2
          train_batch_size: 64
          print_interval: 5
          model_save_path: "output"
        hyper_parameters:
          features: 4
        ''',
}


def write_toy(folder, rows=600, seed=0):
    for name, text in TOY.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    rng = np.random.default_rng(seed)
    weights = np.array([2.0, -1.5, 1.0, 0.0])
    for split, offset in (("train", 0), ("test", rows)):
        x = rng.normal(size=(rows, 4))
        label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-x @ weights))).astype(int)
        (folder / "data" / split).mkdir(parents=True)
        with open(folder / "data" / split / "part-0.csv", "w") as f:
            for i in range(rows):
                f.write(f"{offset + i},{label[i]}," + ",".join(f"{v:.5f}" for v in x[i]) + "\n")
    return folder / "config.yaml"


def test_the_escm2_folder_meets_the_contract():
    config = model_config()
    assert check_model_folder(model_loader.import_model_package(MODEL_DIR), config) == []


def test_a_folder_that_does_not_declare_the_contract_is_told_what_it_lacks(tmp_path):
    config_path = write_toy(tmp_path)
    (tmp_path / "dygraph_model.py").write_text("class DygraphModel:\n    pass\n")
    config, package = model_loader.load(str(config_path))
    assert check_model_folder(package, config) == ["dygraph_model.DygraphModel is not a rectools.contract.DygraphModel"]


@pytest.mark.parametrize("trainer, evaluator", [("trainer.py", "infer.py"), ("static_trainer.py", "static_infer.py")])
def test_a_second_model_folder_trains_evaluates_exports_and_serves(tmp_path, trainer, evaluator):
    config_path = str(write_toy(tmp_path))
    config, package = model_loader.load(config_path)
    assert check_model_folder(package, config) == []
    train = ok(run_tool(trainer, "-m", config_path, cwd=str(tmp_path)))
    assert "epoch: 1, batch_id: 5, loss:" in train.stdout and "auc: " in train.stdout
    records = read_jsonl(tmp_path / "output" / "train_metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["loss"] < records[0]["loss"]
    ok(run_tool(evaluator, "-m", config_path, cwd=str(tmp_path)))
    evaluated = read_jsonl(tmp_path / "output" / "infer_metrics.jsonl")
    assert [r["epoch"] for r in evaluated] == [0, 1] and evaluated[1]["auc"] > 0.75  # the weights are learnt
    ok(run_tool("export.py", "-m", config_path, cwd=str(tmp_path)))
    ok(run_tool("predict.py", "-m", config_path, "-o", "runner.predict_output=p.csv", cwd=str(tmp_path)))
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sample_id", "p"] and [int(r[0]) for r in rows[1:]] == list(range(600, 1200))
    # a checkpoint of another shape is refused with the model's own hint
    result = run_tool(evaluator, "-m", config_path, "-o", "hyper_parameters.features=3", cwd=str(tmp_path))
    assert result.returncode == 2 and "does not fit this model" in result.stderr


def test_shards_of_an_epoch_cover_every_sample_once(tmp_path):
    from rectools.data import Shard, epoch_batches
    config, package = model_loader.load(str(write_toy(tmp_path, rows=250)))
    dataset = model_loader.model_module(package, "dense_reader", "test").RecDataset(
        [str(tmp_path / "data" / "train" / "part-0.csv")], config)
    whole = [b["sample_id"] for b in epoch_batches(dataset, 16)]
    parts = [[b["sample_id"] for b in epoch_batches(dataset, 16, Shard(i, 3))] for i in range(3)]
    assert sorted(np.concatenate([np.concatenate(p) for p in parts])) == list(range(250))
    assert [len(p) for p in parts] == [6, 5, 5]  # balanced to within one batch
    assert all(np.array_equal(parts[n % 3][n // 3], whole[n]) for n in range(len(whole)))
