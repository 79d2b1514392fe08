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
    model = net.ESCM2Net(50, 4, 3, imputation="error", backbone=backbone, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
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


def test_the_fm_term_is_the_sum_over_field_pairs_of_the_pooled_embeddings_products():
    pooled = np.random.default_rng(3).normal(size=(5, 4, 3)).astype("float32")  # [B, fields, dim]
    pairs = sum(pooled[:, f] * pooled[:, g] for f in range(4) for g in range(f + 1, 4))
    np.testing.assert_allclose(net.fm_interaction(paddle.to_tensor(pooled)).numpy(), pairs, rtol=1e-5, atol=1e-6)
    # in the network: each tower's logit = its MLP's + (its weights, ones at first) . crosses
    paddle.seed(4)
    model = net.ESCM2Net(50, 3, 4, interaction="fm", ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    ids = paddle.to_tensor(np.random.default_rng(4).integers(0, 50, (6, 4, 2)))
    pctr = model(ids)[0].numpy()
    embedded = model.embedding(ids).sum(axis=2)
    mlp_logit = model.towers[0](embedded.reshape([6, 12])).squeeze(-1).numpy()
    crosses = net.fm_interaction(embedded).numpy().sum(axis=1)
    np.testing.assert_allclose(pctr, 1 / (1 + np.exp(-(mlp_logit + crosses))), rtol=1e-5)
    with pytest.raises(ValueError, match="ffm"):
        net.ESCM2Net(50, 4, 3, interaction="ffm")


def test_padding_id_contributes_nothing():
    paddle.seed(2)
    model = net.ESCM2Net(50, 4, 2, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    with_padding = paddle.to_tensor(np.array([[[3, 0, 0], [7, 9, 0]]]))
    rows = model.embedding(with_padding).numpy()
    assert not rows[0, 0, 1:].any() and not rows[0, 1, 2].any()


# ---- DR as practised (imputed labels), MRDR weights, self-normalisation (SNIPS) ----

R_TILDE = rng.uniform(0.02, 0.98, N)  # pseudo conversion labels of the imputation tower
DR_VARIANTS = [(imputation, weight, normalization) for imputation in ("error", "label")
               for weight in ("dr_jl", "mrdr") for normalization in ("batch", "self")]


def np_dr(imputation, weight, normalization, click=CLICK, buy=BUY):
    """R_err and R_imp written out from their definitions, in float64."""
    o_hat = np.maximum(PCTR, FLOOR)
    delta = np_bce(PCVR, buy)
    imputed = E_HAT if imputation == "error" else R_TILDE
    e_hat = imputed if imputation == "error" else np_bce(PCVR, R_TILDE)
    inverse = click / o_hat
    w = inverse if weight == "dr_jl" else click * (1 - o_hat) / o_hat ** 2
    if normalization == "batch":
        r_err = np.mean(e_hat + inverse * (delta - e_hat))
        r_imp = np.sum(w * (delta - e_hat) ** 2) / N
    else:
        r_err = np.mean(e_hat) + (np.sum(inverse * (delta - e_hat)) / inverse.sum() if click.any() else 0.0)
        r_imp = np.sum(w * (delta - e_hat) ** 2) / w.sum() if click.any() else 0.0
    return r_err, r_imp


def dr_parts(imputation, weight, normalization, click=CLICK, buy=BUY):
    """(pctr, pcvr, imputed) leaf tensors and the DR parts computed from them."""
    pctr, pcvr, imputed, click, buy = tensors(PCTR, PCVR, E_HAT if imputation == "error" else R_TILDE, click, buy)
    parts = losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, imputed, dr_imputation=imputation,
                            imputation_weight=weight, ipw_normalization=normalization)
    return (pctr, pcvr, imputed), parts


@pytest.mark.parametrize("imputation, weight, normalization", DR_VARIANTS)
def test_dr_variants_match_numpy(imputation, weight, normalization):
    (pctr, pcvr, imputed), _ = dr_parts(imputation, weight, normalization)
    _, _, _, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    terms = losses.escm2_loss((pctr, pcvr, pctr * pcvr, imputed), click, buy, "DR", 0.3, 0.7, FLOOR,
                              dr_imputation=imputation, imputation_weight=weight, ipw_normalization=normalization)
    r_err, r_imp = np_dr(imputation, weight, normalization)
    base = np_terms("ESMM")
    expected = {"r_err": r_err, "r_imp": r_imp, "cvr_loss": r_err + r_imp, "ctr_loss": base["ctr_loss"],
                "ctcvr_loss": base["ctcvr_loss"], "loss": base["loss"] + 0.3 * (r_err + r_imp)}
    assert sorted(terms) == sorted(expected)
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=2e-5), name


def test_the_defaults_are_the_paper_dr():
    _, default = dr_parts("error", "dr_jl", "batch")
    pctr, pcvr, e_hat, click, buy = tensors(PCTR, PCVR, E_HAT, CLICK, BUY)
    plain = losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, e_hat)
    for name in ("r_err", "r_imp", "cvr_loss"):
        assert float(plain[name]) == float(default[name])


@pytest.mark.parametrize("weight", ["dr_jl", "mrdr"])
def test_label_imputation_loss_is_a_squared_label_error_scaled_by_the_cvr_logit(weight):
    """For a clicked impression, BCE(p, r) - BCE(p, r~) = (r~ - r) * log(p / (1 - p)): R_imp with
    imputed labels fits r~ to r, weighted by the squared logit of pCVR."""
    _, parts = dr_parts("label", weight, "batch")
    o_hat = np.maximum(PCTR, FLOOR)
    w = CLICK / o_hat if weight == "dr_jl" else CLICK * (1 - o_hat) / o_hat ** 2
    expected = np.sum(w * (R_TILDE - BUY) ** 2 * np.log(PCVR / (1 - PCVR)) ** 2) / N
    assert float(parts["r_imp"]) == pytest.approx(expected, rel=1e-4)


def test_snips_ipw_matches_numpy_and_is_a_weighted_mean_of_the_clicked_errors():
    pctr, pcvr, click, buy = tensors(PCTR, PCVR, CLICK, BUY)
    risk = float(losses.cvr_risk("IPW", pctr, pcvr, click, buy, FLOOR, ipw_normalization="self")["cvr_loss"])
    o_hat, delta = np.maximum(PCTR, FLOOR), np_bce(PCVR, BUY)
    clicked = CLICK == 1
    assert risk == pytest.approx(np.average(delta[clicked], weights=1 / o_hat[clicked]), rel=2e-5)
    # one click: the SNIPS risk is that click's error, whatever its propensity
    one = np.zeros(N)
    one[np.flatnonzero(clicked)[0]] = 1
    pctr, pcvr, click, buy = tensors(PCTR, PCVR, one, one * BUY)
    single = float(losses.cvr_risk("IPW", pctr, pcvr, click, buy, FLOOR, ipw_normalization="self")["cvr_loss"])
    assert single == pytest.approx(float(np_bce(PCVR, one * BUY)[one == 1][0]), rel=2e-5)


@pytest.mark.parametrize("imputation, weight", [("error", "dr_jl"), ("label", "mrdr")])
def test_a_batch_without_clicks_gives_finite_snips_risks_and_gradients(imputation, weight):
    none = np.zeros(N)
    pctr, pcvr, click, buy = tensors(PCTR, PCVR, none, none)
    ipw = losses.cvr_risk("IPW", pctr, pcvr, click, buy, FLOOR, ipw_normalization="self")["cvr_loss"]
    assert float(ipw) == 0.0
    (pctr, pcvr, imputed), parts = dr_parts(imputation, weight, "self", click=none, buy=none)
    r_err, r_imp = np_dr(imputation, weight, "self", click=none, buy=none)
    assert float(parts["r_imp"]) == 0.0
    # no clicks: R_err is the imputed term alone, mean_D e_hat
    assert float(parts["r_err"]) == pytest.approx(r_err, rel=2e-5)
    assert r_err == pytest.approx(np.mean(E_HAT if imputation == "error" else np_bce(PCVR, R_TILDE)))
    g = grads(parts["cvr_loss"], pcvr, imputed)
    assert all(x is None or np.isfinite(x).all() for x in g)


def d_bce(p, y):
    """d BCE(p, y) / d p."""
    return (p - y) / (p * (1 - p))


@pytest.mark.parametrize("normalization", ["batch", "self"])
def test_label_imputation_trains_the_cvr_tower_on_unclicked_impressions(normalization):
    (_, pcvr, imputed), parts = dr_parts("label", "dr_jl", normalization)
    (g_cvr,) = grads(parts["r_err"], pcvr)
    inverse = CLICK / np.maximum(PCTR, FLOOR)
    z = N if normalization == "batch" else inverse.sum()
    # (1/|D|) grad e_hat over every impression, then the o/o_hat-weighted correction grad (delta - e_hat) / Z
    expected = d_bce(PCVR, R_TILDE) / N + inverse * (d_bce(PCVR, BUY) - d_bce(PCVR, R_TILDE)) / z
    np.testing.assert_allclose(g_cvr, expected, rtol=2e-4, atol=1e-7)
    unclicked = CLICK == 0
    assert np.abs(g_cvr[unclicked]).min() > 0  # each unclicked impression pulls pCVR towards its r~


@pytest.mark.parametrize("weight, normalization", [("dr_jl", "batch"), ("mrdr", "self")])
def test_error_imputation_gives_the_cvr_tower_nothing_from_unclicked_impressions(weight, normalization):
    (_, pcvr, _), parts = dr_parts("error", weight, normalization)
    (g_cvr,) = grads(parts["r_err"], pcvr)
    assert not g_cvr[CLICK == 0].any() and np.abs(g_cvr[CLICK == 1]).min() > 0


@pytest.mark.parametrize("imputation, weight, normalization", DR_VARIANTS)
def test_r_err_trains_the_cvr_tower_and_r_imp_the_imputation_tower(imputation, weight, normalization):
    (pctr, pcvr, imputed), parts = dr_parts(imputation, weight, normalization)
    g_cvr, g_imp = grads(parts["r_err"], pcvr, imputed)
    assert np.abs(g_cvr).sum() > 0 and (g_imp is None or not g_imp.any())
    g_cvr, g_imp = grads(parts["r_imp"], pcvr, imputed)
    assert g_cvr is None or not g_cvr.any()
    o_hat = np.maximum(PCTR, FLOOR)
    w = CLICK / o_hat if weight == "dr_jl" else CLICK * (1 - o_hat) / o_hat ** 2
    z = N if normalization == "batch" else w.sum()
    delta = np_bce(PCVR, BUY)
    if imputation == "error":  # d/d e_hat of (delta - e_hat)^2
        expected = -2 * w * (delta - E_HAT) / z
    else:  # e_imp = BCE(p, r~) is linear in r~ with slope log((1 - p) / p)
        expected = -2 * w * (delta - np_bce(PCVR, R_TILDE)) * np.log((1 - PCVR) / PCVR) / z
    np.testing.assert_allclose(g_imp, expected, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("mode, imputation, weight, normalization",
                         [("IPW", "error", "dr_jl", "self")] + [("DR", *v) for v in DR_VARIANTS])
def test_no_counterfactual_risk_trains_the_ctr_tower(mode, imputation, weight, normalization):
    pctr, pcvr, imputed, click, buy = tensors(PCTR, PCVR, E_HAT if imputation == "error" else R_TILDE, CLICK, BUY)
    risk = losses.cvr_risk(mode, pctr, pcvr, click, buy, FLOOR, imputed, dr_imputation=imputation,
                           imputation_weight=weight, ipw_normalization=normalization)["cvr_loss"]
    (g_ctr,) = grads(risk, pctr)
    assert g_ctr is None or not g_ctr.any()


def tower_gradients(model):
    """Per tower (CTR, CVR, imputation): does any of its parameters have a non-zero gradient?"""
    return [any(p.grad is not None and p.grad.numpy().any() for p in tower.parameters()) for tower in model.towers]


@pytest.mark.parametrize("imputation, cvr_tower_learns", [("label", True), ("error", False)])
def test_in_the_network_unclicked_impressions_train_the_cvr_tower_only_with_imputed_labels(imputation,
                                                                                           cvr_tower_learns):
    paddle.seed(3)
    model = net.ESCM2Net(50, 4, 3, imputation=imputation, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    ids = paddle.to_tensor(np.random.default_rng(3).integers(1, 50, (16, 3, 2)))
    outputs = model(ids)
    if imputation == "label":
        assert 0 < float(outputs[3].min()) and float(outputs[3].max()) < 1  # a pseudo label
    no_clicks = paddle.zeros([16])
    parts = losses.cvr_risk("DR", outputs[0], outputs[1], no_clicks, no_clicks, FLOOR, outputs[3],
                            dr_imputation=imputation, ipw_normalization="self")
    parts["r_err"].backward()
    assert tower_gradients(model) == [False, cvr_tower_learns, False]


@pytest.mark.parametrize("imputation", ["label", "error"])
def test_in_the_network_r_imp_trains_the_imputation_tower_only(imputation):
    paddle.seed(4)
    model = net.ESCM2Net(50, 4, 3, imputation=imputation, ctr_fc_sizes=[8], cvr_fc_sizes=[8])
    ids = paddle.to_tensor(np.random.default_rng(4).integers(1, 50, (16, 3, 2)))
    click = paddle.to_tensor((np.arange(16) % 3 == 0).astype("float32"))
    buy = paddle.to_tensor((np.arange(16) % 6 == 0).astype("float32"))
    outputs = model(ids)
    losses.cvr_risk("DR", outputs[0], outputs[1], click, buy, FLOOR, outputs[3], dr_imputation=imputation,
                    imputation_weight="mrdr")["r_imp"].backward()
    assert tower_gradients(model) == [False, False, True]


def test_unknown_options_are_refused():
    pctr, pcvr, imputed, click, buy = tensors(PCTR, PCVR, R_TILDE, CLICK, BUY)
    for option in ({"dr_imputation": "rating"}, {"imputation_weight": "ips"}, {"ipw_normalization": "clicks"}):
        with pytest.raises(ValueError, match=list(option.values())[0]):
            losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, imputed, **option)
    with pytest.raises(ValueError, match="rating"):
        net.ESCM2Net(50, 4, 3, imputation="rating")


@pytest.mark.parametrize("weight", ["dr_jl", "mrdr"])
def test_with_one_click_each_self_normalised_sum_is_that_clicks_value(weight):
    """Whatever its weight, even an MRDR weight (1 - o_hat) / o_hat^2 far below 1 at a high pCTR."""
    one = np.zeros(N)
    i = 0
    pctr_high = PCTR.copy()
    pctr_high[i] = 0.9  # MRDR weight (1 - 0.9) / 0.9^2 ~ 0.12
    one[i] = 1
    pctr, pcvr, imputed, click, buy = tensors(pctr_high, PCVR, E_HAT, one, one)
    parts = losses.cvr_risk("DR", pctr, pcvr, click, buy, FLOOR, imputed, imputation_weight=weight,
                            ipw_normalization="self")
    delta = np_bce(PCVR[i], 1.0)
    assert float(parts["r_imp"]) == pytest.approx((delta - E_HAT[i]) ** 2, rel=2e-5)
    assert float(parts["r_err"]) == pytest.approx(np.mean(E_HAT) + delta - E_HAT[i], rel=2e-5)
