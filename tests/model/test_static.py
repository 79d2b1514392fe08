"""Static graph against dygraph, in one process: same initial parameters, same batches."""
import numpy as np
import paddle
import pytest

from conftest import CONFIG, MODEL_DIR, data_overrides, model_config, ok, read_jsonl, run_tool
from rectools import engines, model_loader
from rectools.metrics import Accumulator

STEPS = 6


def batches(config, seed=0, size=64):
    """Skewed ids with padding and repeats, so batches share rows and rows repeat within one;
    the third batch has no clicks (the guards of NAIVE's and SNIPS's divisions)."""
    rng = np.random.default_rng(seed)
    shape = (size, len(config["hyper_parameters.fields"]), config["hyper_parameters.max_len"])
    out = []
    for _ in range(STEPS):
        ids = (config["hyper_parameters.sparse_feature_number"] * rng.uniform(size=shape) ** 3).astype(np.int64)
        ids[rng.uniform(size=shape) < 0.2] = 0
        ids[:, :, 1] = np.where(rng.uniform(size=shape[:2]) < 0.3, ids[:, :, 0], ids[:, :, 1])
        click = (rng.uniform(size=size) < (0.3 if len(out) != 2 else 0.0)).astype(np.int64)
        buy = click * (rng.uniform(size=size) < 0.4)
        out.append({"ids": ids, "click": click, "buy": buy.astype(np.int64)})
        if config["runner.propensity_file"] is not None:  # the batches of a run given its propensities
            out[-1]["propensity"] = rng.uniform(0.001, 1.0, size).astype(np.float32)
    return out


def trajectory(engine, data):
    losses, predictions = [], []
    for batch in data:
        metrics = Accumulator()
        losses.append(engine.train_step(batch, metrics))
        predictions.append(metrics.arrays())
    return losses, predictions


@pytest.mark.parametrize("overrides", [["runner.counterfact_mode=ESMM"], ["runner.counterfact_mode=NAIVE"],
                                       ["runner.counterfact_mode=IPW"], ["runner.counterfact_mode=DR"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.backbone=mmoe"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.dr_imputation=label"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.dr_imputation=label",
                                        "hyper_parameters.imputation_weight=mrdr",
                                        "hyper_parameters.ipw_normalization=self"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.ipw_normalization=self",
                                        "hyper_parameters.imputation_weight=mrdr", "hyper_parameters.backbone=mmoe"],
                                       ["runner.counterfact_mode=IPW", "hyper_parameters.ipw_normalization=self"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.interaction=fm",
                                        "hyper_parameters.dr_imputation=label"],
                                       ["runner.counterfact_mode=IPW", "hyper_parameters.interaction=fm",
                                        "hyper_parameters.backbone=mmoe"],
                                       ["runner.counterfact_mode=IPW", "runner.propensity_file=given.csv"],
                                       ["runner.counterfact_mode=DR", "runner.propensity_file=given.csv",
                                        "hyper_parameters.ipw_normalization=self"],
                                       ["runner.counterfact_mode=IPW", "hyper_parameters.optimizer.class=sgd",
                                        "hyper_parameters.optimizer.learning_rate=0.05"]])
def test_static_training_follows_dygraph_step_for_step(overrides):
    config = model_config(["hyper_parameters.sparse_feature_number=300", "hyper_parameters.ctr_fc_sizes=[32, 16]",
                           "hyper_parameters.cvr_fc_sizes=[32, 16]", "hyper_parameters.max_len=3",
                           "hyper_parameters.optimizer.learning_rate=0.01", *overrides])
    package = model_loader.import_model_package(MODEL_DIR)
    data = batches(config)
    dygraph = engines.DygraphEngine(config, package, train=True)
    initial = dygraph.parameters()
    dy_losses, dy_predictions = trajectory(dygraph, data)
    dy_final = dygraph.parameters()
    try:
        static = engines.StaticEngine(config, package, train=True)
        static.set_parameters(initial, "initial", "test")
        st_losses, st_predictions = trajectory(static, data)
        st_final = static.parameters()
    finally:
        paddle.disable_static()
    for step in range(STEPS):
        assert st_losses[step].keys() == dy_losses[step].keys()
        for name, value in dy_losses[step].items():
            assert st_losses[step][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, name)
        for name in ("pctr", "pcvr"):
            np.testing.assert_allclose(st_predictions[step][name], dy_predictions[step][name], rtol=1e-5, atol=1e-6)
    for name, value in dy_final.items():
        np.testing.assert_allclose(st_final[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # and training did move the parameters, the embedding rows of the batches included
    assert np.abs(dy_final["embedding.weight"] - initial["embedding.weight"]).max() > 1e-4


def test_static_update_leaves_rows_outside_the_batch_untouched():
    config = model_config(["hyper_parameters.sparse_feature_number=300", "hyper_parameters.max_len=3"])
    package = model_loader.import_model_package(MODEL_DIR)
    data = batches(config)
    try:
        static = engines.StaticEngine(config, package, train=True)
        before = static.parameters()["embedding.weight"]
        static.train_step(data[0], Accumulator())
        after = static.parameters()["embedding.weight"]
    finally:
        paddle.disable_static()
    touched = np.zeros(len(before), bool)
    touched[np.unique(data[0]["ids"])] = True
    assert (after[~touched] == before[~touched]).all()
    assert (np.abs(after[touched] - before[touched]).max(axis=1) > 0).all()


@pytest.mark.parametrize("tool", ["static_trainer.py", "trainer.py"])
def test_a_resumed_run_continues_exactly_where_it_stopped(synthetic, tmp_path, tool):
    """Epoch 1 of a two-epoch run equals epoch 1 of a run resumed from epoch 0's checkpoint:
    parameters and the whole optimizer state (row moments and beta powers included) come back."""
    common = ["-m", CONFIG, "-o", *data_overrides(synthetic), "runner.epochs=2", "runner.counterfact_mode=DR"]
    ok(run_tool(tool, *common, "runner.model_save_path=straight", cwd=str(tmp_path)))
    ok(run_tool(tool, *common, "runner.model_save_path=resumed", "runner.epochs=1", cwd=str(tmp_path)))
    ok(run_tool(tool, *common, "runner.model_save_path=resumed", "runner.model_init_path=resumed/0",
                cwd=str(tmp_path)))
    straight = read_jsonl(tmp_path / "straight" / "train_metrics.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "train_metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [0, 1]
    for name in ("loss", "auc_ctr", "auc_cvr", "r_imp"):
        assert resumed[1][name] == pytest.approx(straight[1][name], rel=1e-6), name
