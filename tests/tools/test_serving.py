"""The exported model, run by paddle.inference, against the dygraph net; the command lines."""
import csv
import os

import numpy as np
import paddle
import pytest

from conftest import CONFIG, MODEL_DIR, data_overrides, model_config, ok, read_jsonl, run_tool
from rectools import engines, model_loader
from rectools import serving as rec_serving

package = model_loader.import_model_package(MODEL_DIR)
serving = model_loader.model_module(package, "serving", "test")


@pytest.mark.parametrize("overrides", [["runner.counterfact_mode=DR"],
                                       ["runner.counterfact_mode=IPW", "hyper_parameters.backbone=mmoe"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.interaction=fm"]])
def test_exported_predictor_equals_the_dygraph_net(tmp_path, overrides):
    config = model_config(["hyper_parameters.sparse_feature_number=500", "hyper_parameters.max_len=4", *overrides])
    engine = engines.DygraphEngine(config, package, train=False)
    rec_serving.export(config, package, engine.parameters(), str(tmp_path))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, (1024, len(config["hyper_parameters.fields"]), 4))
    ids[rng.uniform(size=ids.shape) < 0.3] = 0
    engine.model.eval()
    with paddle.no_grad():
        expected = [t.numpy() for t in engine.model(paddle.to_tensor(ids))[:3]]
    predictor = rec_serving.create_predictor(str(tmp_path), serving, config)
    assert predictor.get_output_names() == ["pctr", "pcvr", "pctcvr"]
    assert sorted(predictor.get_input_names()) == sorted(f"field_{f}" for f in config["hyper_parameters.fields"])
    got = rec_serving.run_batch(predictor, serving.inputs({"ids": ids}, config), serving.OUTPUTS)
    for name, want, have in zip(serving.OUTPUTS, expected, got):
        assert np.abs(want - have).max() <= 1e-5, name


def test_static_training_exports_each_epoch_and_predict_scores_every_line(synthetic, tmp_path):
    common = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={tmp_path}"]
    ok(run_tool("static_trainer.py", *common, "runner.use_inference=True", cwd=str(tmp_path)))
    for epoch in ("0", "1"):
        assert sorted(os.listdir(tmp_path / epoch / "inference")) == ["checksums.json", "model.json", "model.pdiparams",
                                                                      "serving.json"]
    ok(run_tool("static_infer.py", *common, cwd=str(tmp_path)))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "infer_metrics.jsonl")] == [0, 1]
    ok(run_tool("predict.py", *common, "runner.predict_output=scores.csv", cwd=str(tmp_path)))
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.reader(f))
    test_file = next((synthetic[0] / "test").iterdir())
    with open(test_file) as f:
        sample_ids = [line.split(",", 1)[0] for line in f]
    assert rows[0] == ["sample_id", "pctr", "pcvr", "pctcvr"]
    assert [r[0] for r in rows[1:]] == sample_ids
    values = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    assert ((values > 0) & (values < 1)).all()
    np.testing.assert_allclose(values[:, 2], values[:, 0] * values[:, 1], rtol=1e-5)


def test_export_from_a_dygraph_checkpoint_and_a_mismatched_model_is_refused(synthetic, tmp_path):
    common = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={tmp_path}", "runner.epochs=1"]
    ok(run_tool("trainer.py", *common, cwd=str(tmp_path)))
    ok(run_tool("export.py", *common, "runner.export_dir=served", cwd=str(tmp_path)))
    assert sorted(os.listdir(tmp_path / "served")) == ["checksums.json", "model.json", "model.pdiparams", "serving.json"]
    result = run_tool("predict.py", *common, "runner.inference_model_dir=served", "hyper_parameters.max_len=3",
                      cwd=str(tmp_path))
    assert result.returncode == 2
    assert "runner.inference_model_dir" in result.stderr and "exported for max_len=6" in result.stderr
    result = run_tool("predict.py", *common, "runner.inference_model_dir=nowhere", cwd=str(tmp_path))
    assert result.returncode == 2 and "exported model folder not found" in result.stderr
    result = run_tool("predict.py", *common, f"runner.inference_model_dir={tmp_path / '0'}", cwd=str(tmp_path))
    assert result.returncode == 2 and "is not an exported model (no model.json)" in result.stderr
    result = run_tool("predict.py", *common, "runner.inference_model_dir=served", f"runner.predict_output={tmp_path}",
                      cwd=str(tmp_path))
    assert result.returncode == 2 and "runner.predict_output" in result.stderr and "is a folder" in result.stderr
    assert not list(tmp_path.glob(".*.tmp"))
    # an export never replaces a folder that holds anything but an exported model
    result = run_tool("export.py", *common, f"runner.export_dir={tmp_path}", cwd=str(tmp_path))
    assert result.returncode == 2 and "exists and is not an exported model" in result.stderr
    assert (tmp_path / "0" / "rec.pdparams").is_file() and (tmp_path / "train_metrics.jsonl").is_file()
