"""Every loss term against an independent numpy computation, and the gradient routing."""
import numpy as np
import paddle
import pytest

from conftest import MODEL_DIR
from rectools import model_loader

package = model_loader.import_model_package(MODEL_DIR)
losses = model_loader.model_module(package, "losses", "test")
net = model_loader.model_module(package, "net", "test")

FLOOR = 0.05
rng = np.random.default_rng(0)
N = 64
PCTR = rng.uniform(0.01, 0.6, N)  # some below the floor
PCVR = rng.uniform(0.02, 0.98, N)
CLICK = (rng.uniform(size=N) < 0.4).astype(np.float64)
BUY = CLICK * (rng.uniform(size=N) < 0.5)
E_HAT = rng.uniform(0.0, 4.0, N)  # imputed errors well above 1: not a probability


def np_bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_terms(mode, lc=0.3, lg=0.7):
    ctr = np_bce(PCTR, CLICK).mean()
    ctcvr = np_bce(PCTR * PCVR, BUY).mean()
    delta = np_bce(PCVR, BUY)
    o_hat = np.maximum(PCTR, FLOOR)
    cvr = {"ESMM": 0.0,
           "NAIVE": (CLICK * delta).sum() / CLICK.sum(),
           "IPW": np.sum(CLICK * delta / o_hat) / N,
           "DR": np.sum(E_HAT + CLICK * (delta - E_HAT) / o_hat) / N + np.sum(CLICK * (delta - E_HAT) ** 2 / o_hat) / N}
    return {"ctr_loss": ctr, "ctcvr_loss": ctcvr, "cvr_loss": cvr[mode], "loss": ctr + lc * cvr[mode] + lg * ctcvr,
            "r_err": np.sum(E_HAT + CLICK * (delta - E_HAT) / o_hat) / N,
            "r_imp": np.sum(CLICK * (delta - E_HAT) ** 2 / o_hat) / N}


def tensors(*arrays):
    return [paddle.to_tensor(a.astype("float32"), stop_gradient=False) for a in arrays]


@pytest.mark.parametrize("mode", ["ESMM", "NAIVE", "IPW", "DR"])
def test_terms_match_numpy(mode):
    pctr, pcvr, e_hat, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    outputs = (pctr, pcvr, pctr * pcvr) + ((e_hat,) if mode == "DR" else ())
    terms = losses.escm2_loss(outputs, click, buy, mode, 0.3, 0.7, FLOOR)
    expected = np_terms(mode)
    names = {"ESMM": ["loss", "ctr_loss", "ctcvr_loss"], "NAIVE": ["loss", "ctr_loss", "ctcvr_loss", "cvr_loss"],
             "IPW": ["loss", "ctr_loss", "ctcvr_loss", "cvr_loss"],
             "DR": ["loss", "ctr_loss", "ctcvr_loss", "cvr_loss", "r_err", "r_imp"]}[mode]
    assert sorted(terms) == sorted(names)
    for name in names:
        assert float(terms[name]) == pytest.approx(expected[name], rel=2e-5), name


def test_naive_risk_of_a_batch_without_clicks_is_zero():
    pctr, pcvr, buy = tensors(PCTR, PCVR, np.zeros(N))
    risk = losses.cvr_risk("NAIVE", pctr, pcvr, buy, buy, FLOOR)["cvr_loss"]
    assert float(risk) == 0.0


def grads(loss, *tensors_):
    return [None if g is None else g.numpy() for g in paddle.grad(loss, list(tensors_), allow_unused=True)]


@pytest.mark.parametrize("mode", ["IPW", "DR"])
def test_the_counterfactual_risk_does_not_train_the_ctr_tower(mode):
    pctr, pcvr, e_hat, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    risk = losses.cvr_risk(mode, pctr, pcvr, click, buy, FLOOR, e_hat)["cvr_loss"]
    g_ctr, g_cvr = grads(risk, pctr, pcvr)
    assert g_ctr is None or not g_ctr.any()
    assert np.abs(g_cvr).sum() > 0


def test_dr_routes_r_err_to_the_cvr_tower_and_r_imp_to_the_imputation_tower():
    pctr, pcvr, e_hat, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    parts = losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, e_hat)
    g_cvr, g_imp = grads(parts["r_err"], pcvr, e_hat)
    assert np.abs(g_cvr).sum() > 0 and (g_imp is None or not g_imp.any())
    g_cvr, g_imp = grads(parts["r_imp"], pcvr, e_hat)
    assert (g_cvr is None or not g_cvr.any()) and np.abs(g_imp).sum() > 0
    # d R_imp / d e_hat = -2 o (delta - e_hat) / (N o_hat), with delta held constant
    delta = np_bce(PCVR, BUY)
    expected = -2 * CLICK * (delta - E_HAT) / (N * np.maximum(PCTR, FLOOR))
    np.testing.assert_allclose(g_imp, expected, rtol=1e-4, atol=1e-7)


def test_dr_gradient_reaches_the_cvr_tower_weighted_by_inverse_propensity():
    pctr, pcvr, e_hat, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    r_err = losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, e_hat)["r_err"]
    (g_cvr,) = grads(r_err, pcvr)
    # d delta / d p = (p - y) / (p (1 - p)); only clicked impressions, each divided by its floored pCTR
    expected = CLICK * (PCVR - BUY) / (PCVR * (1 - PCVR)) / np.maximum(PCTR, FLOOR) / N
    np.testing.assert_allclose(g_cvr, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backbone", ["mlp", "mmoe"])
def test_in_the_network_the_ctr_tower_gets_no_gradient_from_the_cvr_risk(backbone):
    paddle.seed(1)
    model = net.ESCM2Net(50, 4, 3, with_imputation=True, backbone=backbone, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    ids = paddle.to_tensor(np.random.default_rng(1).integers(0, 50, (16, 3, 2)))
    click = paddle.to_tensor((np.arange(16) % 3 == 0).astype("float32"))
    outputs = model(ids)
    assert all(o.shape == [16] for o in outputs)
    assert float(outputs[3].min()) >= 0  # an error estimate: non-negative
    risk = losses.cvr_risk("DR", outputs[0], outputs[1], click, click, FLOOR, outputs[3])["cvr_loss"]
    risk.backward()
    ctr_tower = model.towers[0]
    assert all(p.grad is None or not p.grad.numpy().any() for p in ctr_tower.parameters())
    assert any(p.grad is not None and p.grad.numpy().any() for p in model.towers[1].parameters())
    assert any(p.grad is not None and p.grad.numpy().any() for p in model.towers[2].parameters())


def test_padding_id_contributes_nothing():
    paddle.seed(2)
    model = net.ESCM2Net(50, 4, 2, with_imputation=False, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    with_padding = paddle.to_tensor(np.array([[[3, 0, 0], [7, 9, 0]]]))
    rows = model.embedding(with_padding).numpy()
    assert not rows[0, 0, 1:].any() and not rows[0, 1, 2].any()
