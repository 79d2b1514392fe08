"""The dygraph training step's lookup of each distinct id once (net.distinct_ids, ESCM2Net.forward
with `inverse`) against the plain lookup of every position: the same losses, predictions and
gradients, and step after step the same parameters up to float rounding."""
import numpy as np
import paddle
import pytest

from conftest import MODEL_DIR, model_config
from rectools import engines, model_loader
from rectools.metrics import Accumulator

STEPS = 5
CONFIGS = [
    ["runner.counterfact_mode=DR"],
    ["runner.counterfact_mode=DR", "hyper_parameters.backbone=mmoe"],
    ["runner.counterfact_mode=DR", "hyper_parameters.dr_imputation=label", "hyper_parameters.max_len=1"],
    ["runner.counterfact_mode=IPW", "hyper_parameters.interaction=none"],
    ["runner.counterfact_mode=DR", "hyper_parameters.optimizer.class=sgd"],
]


def small_config(overrides):
    return model_config(["hyper_parameters.sparse_feature_number=3000", "hyper_parameters.max_len=3",
                         "hyper_parameters.ctr_fc_sizes=[16, 8]", "hyper_parameters.cvr_fc_sizes=[16, 8]",
                         "hyper_parameters.optimizer.learning_rate=0.01", *overrides])


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
        if shape[2] > 1:
            ids[:, :, 1] = np.where(rng.uniform(size=shape[:2]) < 0.3, ids[:, :, 0], ids[:, :, 1])
        if step == 1:
            ids = np.maximum(ids, 1)
        if step == 3:
            ids[:] = 0
        click = (rng.uniform(size=size) < 0.3).astype(np.int64)
        buy = click * (rng.uniform(size=size) < 0.4).astype(np.int64)
        out.append({"ids": ids, "click": click, "buy": buy, "sample_id": np.arange(size)})
    return out


def package_and_net():
    package = model_loader.import_model_package(MODEL_DIR)
    return package, model_loader.model_module(package, "net", "test")


@pytest.mark.parametrize("ids", [
    np.array([[[0, 5, 5], [7, 0, 0]], [[9, 9, 0], [0, 0, 0]]]),
    np.array([[[3, 1, 2]], [[2, 2, 8]]]),  # no padding position
    np.zeros((2, 3, 2), dtype=np.int64),  # padding only
])
@pytest.mark.parametrize("vocabulary", [10, 10 ** 6])  # a table of the vocabulary's size; a sort
def test_distinct_ids_are_numpys_unique_with_inverse(ids, vocabulary):
    uniq, inverse = package_and_net()[1].distinct_ids(ids.astype(np.int64), vocabulary=vocabulary)
    expected_uniq, expected_inverse = np.unique(ids, return_inverse=True)
    np.testing.assert_array_equal(uniq, expected_uniq)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(ids.shape))
    assert uniq.dtype == inverse.dtype == np.int64


def table_gradient(parameter):
    """The embedding table's SelectedRows gradient as a dense float64 array (repeated rows summed
    exactly), and its rows as given."""
    grad = parameter.grad
    assert grad.is_selected_rows()
    rows = np.asarray(grad.rows(), dtype=np.int64)
    values = np.asarray(grad.value().get_selected_rows().get_tensor(), dtype=np.float64)
    dense = np.zeros(parameter.shape, dtype=np.float64)
    np.add.at(dense, rows, values)
    return dense, rows


def plain_forward(contract, model, batch, config):
    """The forward pass of the plain lookup of every position: the reference."""
    click, buy = (paddle.to_tensor(batch[k], dtype="float32") for k in ("click", "buy"))
    outputs = model(paddle.to_tensor(batch["ids"]))
    return contract.create_loss(outputs, click, buy, config), outputs


@pytest.mark.parametrize("overrides", CONFIGS)
def test_a_step_on_distinct_ids_has_the_plain_lookups_losses_predictions_and_gradients(overrides):
    config = small_config(overrides)
    package, _ = package_and_net()
    contract, model = engines.dygraph_network(config, package)
    for batch in batches(config):
        metrics = Accumulator()
        terms = contract.train_forward(model, metrics, batch, config)
        terms["loss"].backward()
        grads = {name: p.grad.numpy() for name, p in model.named_parameters() if name != "embedding.weight"}
        table, rows = table_gradient(model.embedding.weight)
        model.clear_gradients()
        expected, outputs = plain_forward(contract, model, batch, config)
        expected["loss"].backward()
        assert terms.keys() == expected.keys()
        for name, value in expected.items():
            assert float(terms[name]) == pytest.approx(float(value), rel=1e-6, abs=1e-7), name
        np.testing.assert_allclose(metrics.arrays()["pctr"], outputs[0].numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(metrics.arrays()["pcvr"], outputs[1].numpy(), rtol=1e-6, atol=1e-7)
        for name, p in model.named_parameters():
            if name != "embedding.weight":
                np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
        expected_table, plain_rows = table_gradient(model.embedding.weight)
        # one row per distinct id, in order (nothing left for Adam to merge), the padding row included
        np.testing.assert_array_equal(rows, np.unique(plain_rows))
        np.testing.assert_allclose(table, expected_table, rtol=1e-5, atol=1e-7)
        model.clear_gradients()


@pytest.mark.parametrize("overrides", CONFIGS)
def test_training_on_distinct_ids_follows_the_plain_lookup_step_for_step(overrides):
    config = small_config(overrides)
    package, _ = package_and_net()
    engine = engines.DygraphEngine(config, package, train=True)
    contract, reference = engines.dygraph_network(config, package)
    optimizer = contract.create_optimizer(reference, config)
    initial = engine.parameters()
    for step, batch in enumerate(batches(config)):
        metrics = Accumulator()
        terms = engine.train_step(batch, metrics)
        expected, outputs = plain_forward(contract, reference, batch, config)
        expected["loss"].backward()
        optimizer.step()
        optimizer.clear_grad()
        for name, value in expected.items():
            assert terms[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), (step, name)
        np.testing.assert_allclose(metrics.arrays()["pctr"], outputs[0].numpy(), rtol=1e-5, atol=1e-6)
        # Rounding only, ~1e-6 here: a repeated id's gradient is summed in another order (and
        # SGD applies the plain lookup's repeats one by one); Adam's normalised step turns the
        # rounding of a near-zero gradient into a full step of lr in either direction
        for name, value in reference.state_dict().items():
            np.testing.assert_allclose(engine.model.state_dict()[name].numpy(), value.numpy(), rtol=1e-4,
                                       atol=2e-5, err_msg=f"{step} {name}")
    final = engine.parameters()
    moved = np.abs(final["embedding.weight"] - initial["embedding.weight"]).max(axis=1) > 0
    assert moved[0], "the padding row moves as in the plain lookup (its gradient is that of its positions)"
    assert moved[1:].any() and not moved.all()
