"""The dygraph training step's lookup of each distinct id once (net.distinct_ids, ESCM2Net.forward
with `inverse`) against the plain lookup of every position: same losses, predictions, gradients and
updated parameters."""
import numpy as np
import paddle
import pytest

from conftest import MODEL_DIR, model_config
from rectools import engines, model_loader
from rectools.metrics import Accumulator

STEPS = 5


def batches(config, seed=0, size=48):
    """Skewed ids with padding and repeats within and across batches; batch 1 has no padding
    position and batch 3 nothing but padding."""
    rng = np.random.default_rng(seed)
    shape = (size, len(config["hyper_parameters.fields"]), config["hyper_parameters.max_len"])
    vocabulary = config["hyper_parameters.sparse_feature_number"]
    out = []
    for step in range(STEPS):
        ids = (vocabulary * rng.uniform(size=shape) ** 3).astype(np.int64)
        ids[rng.uniform(size=shape) < 0.4] = 0
        ids[:, :, 1] = np.where(rng.uniform(size=shape[:2]) < 0.3, ids[:, :, 0], ids[:, :, 1])
        if step == 1:
            ids = np.maximum(ids, 1)
        if step == 3:
            ids[:] = 0
        click = (rng.uniform(size=size) < 0.3).astype(np.int64)
        buy = click * (rng.uniform(size=size) < 0.4).astype(np.int64)
        out.append({"ids": ids, "click": click, "buy": buy, "sample_id": np.arange(size)})
    return out


def _net_module():
    package = model_loader.import_model_package(MODEL_DIR)
    return package, model_loader.model_module(package, "net", "test")


@pytest.mark.parametrize("ids", [
    np.array([[[0, 5, 5], [7, 0, 0]], [[9, 9, 0], [0, 0, 0]]]),
    np.array([[[3, 1, 2]], [[2, 2, 8]]]),  # no padding position
    np.zeros((2, 3, 2), dtype=np.int64),  # padding only
])
def test_distinct_ids_are_numpys_unique_with_inverse(ids):
    uniq, inverse = _net_module()[1].distinct_ids(ids.astype(np.int64), vocabulary=10)
    expected_uniq, expected_inverse = np.unique(ids, return_inverse=True)
    np.testing.assert_array_equal(uniq, expected_uniq)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(ids.shape))
    assert uniq.dtype == inverse.dtype == np.int64


def plain_step(contract, model, optimizer, batch, config):
    """The step as the plain lookup of every position runs it: the reference."""
    ids, click, buy = (paddle.to_tensor(batch["ids"]), paddle.to_tensor(batch["click"], dtype="float32"),
                       paddle.to_tensor(batch["buy"], dtype="float32"))
    outputs = model(ids)
    terms = contract.create_loss(outputs, click, buy, config)
    terms["loss"].backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if "embedding" not in name}
    optimizer.step()
    optimizer.clear_grad()
    return {k: float(v) for k, v in terms.items()}, outputs[0].numpy(), outputs[1].numpy(), grads


@pytest.mark.parametrize("overrides", [
    ["runner.counterfact_mode=DR"],
    ["runner.counterfact_mode=DR", "hyper_parameters.backbone=mmoe"],
    ["runner.counterfact_mode=IPW", "hyper_parameters.interaction=none"],
    ["runner.counterfact_mode=DR", "hyper_parameters.optimizer.class=sgd"],
])
def test_training_on_distinct_ids_follows_the_plain_lookup_step_for_step(overrides):
    config = model_config(["hyper_parameters.sparse_feature_number=3000", "hyper_parameters.max_len=3",
                           "hyper_parameters.ctr_fc_sizes=[16, 8]", "hyper_parameters.cvr_fc_sizes=[16, 8]",
                           "hyper_parameters.optimizer.learning_rate=0.01", *overrides])
    package = _net_module()[0]
    # Rounding only: Adam sums a row's repeated gradients before its update in both lookups; SGD
    # applies them one by one to the plain lookup's row (a row repeated n times rounds n times)
    tolerance, rel = (1e-7, 1e-6) if config["hyper_parameters.optimizer.class"] == "adam" else (1e-5, 1e-5)
    engine = engines.DygraphEngine(config, package, train=True)
    contract, reference = engines.dygraph_network(config, package)
    optimizer = contract.create_optimizer(reference, config)
    initial = engine.parameters()
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), initial[name])
    for step, batch in enumerate(batches(config)):
        metrics = Accumulator()
        terms = engine.contract.train_forward(engine.trained, metrics, batch, config)
        terms["loss"].backward()
        grads = {name: p.grad.numpy().copy() for name, p in engine.model.named_parameters() if "embedding" not in name}
        engine.optimizer.step()
        engine.optimizer.clear_grad()
        expected, pctr, pcvr, expected_grads = plain_step(contract, reference, optimizer, batch, config)
        for name, value in expected.items():
            assert float(terms[name]) == pytest.approx(value, rel=rel, abs=tolerance), (step, name)
        np.testing.assert_allclose(metrics.arrays()["pctr"], pctr, rtol=rel, atol=tolerance)
        np.testing.assert_allclose(metrics.arrays()["pcvr"], pcvr, rtol=rel, atol=tolerance)
        for name, grad in expected_grads.items():
            np.testing.assert_allclose(grads[name], grad, rtol=1e-5, atol=tolerance, err_msg=f"{step} {name}")
        for name, value in reference.state_dict().items():
            np.testing.assert_allclose(engine.model.state_dict()[name].numpy(), value.numpy(), rtol=1e-5,
                                       atol=tolerance, err_msg=f"{step} {name}")
    final = engine.parameters()
    moved = np.abs(final["embedding.weight"] - initial["embedding.weight"]).max(axis=1) > 0
    assert moved[0], "the padding row moves as in the plain lookup (its gradient is that of its positions)"
    assert moved[1:].any() and not moved.all()
