"""The propensity seam: a propensity given in place of pCTR, shrunk weights, and the balance check,
each against numpy; the check's warning through tools/infer.py."""
import json

import numpy as np
import paddle
import pytest

from conftest import MODEL_DIR, run_tool
from rectools import model_loader
from test_losses import np_bce

package = model_loader.import_model_package(MODEL_DIR)
losses = model_loader.model_module(package, "losses", "test")
balance = model_loader.model_module(package, "balance", "test")

FLOOR = 0.05
rng = np.random.default_rng(3)
N = 96
PCTR = rng.uniform(0.01, 0.6, N)
GIVEN = rng.uniform(0.02, 0.9, N)  # the propensity handed in (e.g. the true CTR)
PCVR = rng.uniform(0.02, 0.98, N)
CLICK = (rng.uniform(size=N) < 0.4).astype(np.float64)
BUY = CLICK * (rng.uniform(size=N) < 0.5)
IMPUTED = rng.uniform(0.0, 3.0, N)


def np_cvr_risk(mode, normalization, power):
    """cvr_loss of IPW / DR-error with GIVEN as the propensity: the formulas of losses.py in numpy."""
    o_hat = np.maximum(GIVEN, FLOOR) ** power
    delta, weight = np_bce(PCVR, BUY), CLICK / o_hat
    z = N if normalization == "batch" else weight.sum()
    if mode == "IPW":
        return np.sum(weight * delta) / z
    correction = np.sum(weight * (delta - IMPUTED)) / z
    r_err = (np.sum(IMPUTED + weight * (delta - IMPUTED)) / N if normalization == "batch"
             else IMPUTED.mean() + correction)
    return r_err + np.sum(weight * (delta - IMPUTED) ** 2) / z


CASES = [(mode, normalization, power) for mode in ("IPW", "DR") for normalization in ("batch", "self")
         for power in (1.0, 0.5)]


def loss_terms(values, mode, normalization, power):
    pctr, pcvr, click, buy, given, imputed = values
    outputs = (pctr, pcvr, pctr * pcvr) + ((imputed,) if mode == "DR" else ())
    return losses.escm2_loss(outputs, click, buy, mode, 0.3, 0.7, FLOOR, ipw_normalization=normalization,
                             propensity=given, propensity_power=power)


@pytest.mark.parametrize("mode, normalization, power", CASES)
def test_a_given_propensity_and_shrunk_weights_match_numpy_in_dygraph(mode, normalization, power):
    values = [paddle.to_tensor(a.astype("float32"), stop_gradient=False)
              for a in (PCTR, PCVR, CLICK, BUY, GIVEN, IMPUTED)]
    terms = loss_terms(values, mode, normalization, power)
    assert float(terms["cvr_loss"]) == pytest.approx(np_cvr_risk(mode, normalization, power), rel=3e-5)
    # the given propensity is a constant: neither it nor pCTR learns from the CVR risk
    g_ctr, g_given = paddle.grad(terms["cvr_loss"], [values[0], values[4]], allow_unused=True)
    assert (g_ctr is None or not g_ctr.numpy().any()) and (g_given is None or not g_given.numpy().any())


@pytest.mark.parametrize("mode, normalization, power", CASES)
def test_a_given_propensity_and_shrunk_weights_match_numpy_in_a_static_graph(mode, normalization, power):
    names = ("pctr", "pcvr", "click", "buy", "given", "imputed")
    arrays = dict(zip(names, (PCTR, PCVR, CLICK, BUY, GIVEN, IMPUTED)))
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            values = [paddle.static.data(name, [N], "float32") for name in names]
            terms = loss_terms(values, mode, normalization, power)
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(startup)
        (cvr_loss,) = executor.run(main, feed={k: v.astype("float32") for k, v in arrays.items()},
                                   fetch_list=[terms["cvr_loss"]])
    finally:
        paddle.disable_static()
    assert float(cvr_loss) == pytest.approx(np_cvr_risk(mode, normalization, power), rel=3e-5)


def test_power_zero_weighs_every_click_alike_and_power_one_is_the_default():
    values = [paddle.to_tensor(a.astype("float32")) for a in (PCTR, PCVR, CLICK, BUY)]
    flat = losses.cvr_risk("IPW", *values, FLOOR, ipw_normalization="self", propensity_power=0.0)["cvr_loss"]
    naive = losses.cvr_risk("NAIVE", *values, FLOOR)["cvr_loss"]
    assert float(flat) == pytest.approx(float(naive), rel=1e-6)
    one = losses.cvr_risk("IPW", *values, FLOOR, propensity_power=1.0)["cvr_loss"]
    default = losses.cvr_risk("IPW", *values, FLOOR)["cvr_loss"]
    assert float(one) == float(default)


# ----------------------------------------------------------------------------- the balance check

def np_balance(pctr, pcvr, click, floor, tolerance):
    """The check as its docstring defines it, computed directly (whole arrays, np.quantile edges)."""
    o_hat = np.maximum(pctr, floor)
    out, worst, failed = {}, 0.0, 0
    for name, score in (("pcvr", pcvr), ("pctr", pctr)):
        edges = np.quantile(score.astype(np.float64), np.linspace(0, 1, 11)[1:-1])
        decile = np.searchsorted(edges, score, side="right")
        ratios = []
        for b in range(10):
            inside = decile == b
            clicked = inside & (click == 1)
            ratio = np.sum(1 / o_hat[clicked]) / inside.sum()
            error = np.sqrt(np.sum((1 - o_hat[inside]) / o_hat[inside])) / inside.sum()
            if abs(ratio - 1) > tolerance and abs(ratio - 1) > 4 * error:
                failed, worst = failed + 1, max(worst, abs(ratio - 1))
            ratios.append(ratio)
        out[name] = ratios
    w = np.where(click == 1, 1 / o_hat, 0.0)
    return out, worst, failed, w.sum() ** 2 / np.sum(w ** 2) / click.sum(), w.max() / w.sum()


def impressions(n, seed):
    """n impressions whose clicks are drawn from a known CTR that rises with a conversion score."""
    r = np.random.default_rng(seed)
    score = r.normal(size=n)
    true_ctr = 1 / (1 + np.exp(-(-3.0 + 0.8 * score + 0.5 * r.normal(size=n))))
    pcvr = 1 / (1 + np.exp(-(-2.5 + score)))
    click = (r.uniform(size=n) < true_ctr).astype(np.int8)
    return true_ctr.astype(np.float32), pcvr.astype(np.float32), click


def test_the_check_matches_numpy():
    true_ctr, pcvr, click = impressions(50_000, 1)
    pctr = np.clip(true_ctr * np.exp(0.3 * np.sin(7 * pcvr)), 0, 1).astype(np.float32)
    report = balance.balance_report({"pctr": pctr, "pcvr": pcvr, "click": click}, 0.01, 0.05)
    ratios, worst, failed, ess, largest = np_balance(pctr, pcvr, click, 0.01, 0.05)
    for name in ("pcvr", "pctr"):
        np.testing.assert_allclose(report[f"balance_{name}"], ratios[name], atol=6e-5)
    assert report["balance_failed"] == failed and report["balance_worst"] == pytest.approx(worst, abs=1e-6)
    assert report["ipw_ess_share"] == pytest.approx(ess) and report["ipw_max_weight_share"] == pytest.approx(largest)
    # with shrunk weights (propensity_power) the companions describe the weights applied, the check stays
    shrunk = balance.balance_report({"pctr": pctr, "pcvr": pcvr, "click": click}, 0.01, 0.05, propensity_power=0.5)
    w = np.where(click == 1, np.maximum(pctr, 0.01) ** -0.5, 0.0)
    assert shrunk["ipw_ess_share"] == pytest.approx(w.sum() ** 2 / np.sum(w ** 2) / click.sum(), rel=1e-6)
    assert shrunk["ipw_max_weight_share"] == pytest.approx(w.max() / w.sum(), rel=1e-6)
    assert shrunk["balance_pcvr"] == report["balance_pcvr"] and shrunk["balance_failed"] == report["balance_failed"]


def test_a_correct_propensity_passes_and_one_blind_to_the_selection_warns():
    true_ctr, pcvr, click = impressions(200_000, 2)
    good = balance.balance_report({"pctr": true_ctr, "pcvr": pcvr, "click": click}, 0.002, 0.2)
    assert good["balance_failed"] == 0 and balance.balance_warning(good, 0.2) is None
    assert all(0.8 < r < 1.2 for r in good["balance_pcvr"] + good["balance_pctr"])
    # a propensity that sees only the mean CTR: clicks of likely converters are under-predicted
    blind = np.full_like(true_ctr, true_ctr.mean())
    bad = balance.balance_report({"pctr": blind, "pcvr": pcvr, "click": click}, 0.002, 0.2)
    assert bad["balance_failed"] > 0 and bad["balance_pcvr"][-1] > 1.5 and bad["balance_pcvr"][0] < 0.6
    line = balance.balance_warning(bad, 0.2)
    assert line.startswith("balance check failed: in ") and "the propensity misses part of the selection" in line


def test_a_small_sample_does_not_fail_a_correct_propensity_by_chance():
    for seed in range(20):
        true_ctr, pcvr, click = impressions(3_000, 100 + seed)
        report = balance.balance_report({"pctr": true_ctr, "pcvr": pcvr, "click": click}, 0.002, 0.2)
        assert report["balance_failed"] == 0, seed


def test_infer_warns_in_one_line_when_the_propensity_fails_the_check(tmp_path):
    # a floor far above the sample's CTR (~8%) caps every weight at 2: the weighted clicks per
    # impression are ~0.16 in every decile, whatever the model learnt
    overrides = ["-o", f"runner.model_save_path={tmp_path}", "runner.epochs=1", "hyper_parameters.propensity_floor=0.5"]
    config = f"{MODEL_DIR}/config.yaml"
    assert run_tool("trainer.py", "-m", config, *overrides, cwd=str(tmp_path)).returncode == 0
    result = run_tool("infer.py", "-m", config, *overrides, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "balance check failed" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "infer epoch 0" in warnings[0], result.stderr[-2000:]
    with open(tmp_path / "infer_metrics.jsonl") as f:
        record = json.loads(f.readline())
    assert record["balance_failed"] == 20 and record["balance_worst"] > 0.7
    # with the model's own floor the sample passes: no warning
    result = run_tool("infer.py", "-m", config, *overrides[:-1], cwd=str(tmp_path))
    assert result.returncode == 0 and "balance check failed" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- pCTR's recalibration

dygraph_model = model_loader.model_module(package, "dygraph_model", "test")


def test_the_logit_shift_is_found_however_far_off_pctr_is_and_never_beyond_its_bracket():
    r = np.random.default_rng(6)
    for scale in (0.02, 0.1, 10.0):
        pctr = np.clip(r.beta(0.5, 10, 5000) * scale, 0, 1)
        click = (r.uniform(size=pctr.size) < 0.05).astype(np.int8)
        delta = dygraph_model.ctr_logit_shift(pctr, click)
        q = 1 / (1 + np.exp(-(np.log(np.clip(pctr, 1e-7, 1 - 1e-7) / (1 - np.clip(pctr, 1e-7, 1 - 1e-7))) + delta)))
        assert -30 < delta < 30 and q.sum() == pytest.approx(click.sum(), rel=1e-6)
    assert dygraph_model.ctr_logit_shift(np.full(100, 0.2), np.zeros(100)) is None  # no click: no shift reaches 0
    assert dygraph_model.ctr_logit_shift(np.full(100, 1e-7), np.ones(100)) is None


def test_the_logit_shift_makes_mean_pctr_the_click_rate():
    r = np.random.default_rng(5)
    pctr = r.uniform(0.001, 0.4, 20_000).astype(np.float32)
    click = (r.uniform(size=pctr.size) < 0.8 * pctr).astype(np.int8)  # pCTR 25% too high
    delta = dygraph_model.ctr_logit_shift(pctr, click)
    logit = np.log(pctr / (1 - pctr)).astype(np.float64)
    assert np.mean(1 / (1 + np.exp(-(logit + delta)))) == pytest.approx(click.mean(), rel=1e-8)
    assert -0.4 < delta < -0.2


@pytest.mark.parametrize("tool", ["trainer.py", "static_trainer.py"])
def test_a_trained_checkpoint_s_mean_pctr_is_its_training_click_rate(tmp_path, tool):
    config = f"{MODEL_DIR}/config.yaml"
    overrides = ["-o", f"runner.model_save_path={tmp_path}", "runner.epochs=1", f"runner.test_data_dir={MODEL_DIR}/data/train"]
    trained = run_tool(tool, "-m", config, *overrides, cwd=str(tmp_path))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "pCTR recalibrated on 50000 training impressions" in trained.stdout + trained.stderr
    assert run_tool("infer.py", "-m", config, *overrides, cwd=str(tmp_path)).returncode == 0
    with open(tmp_path / "infer_metrics.jsonl") as f:
        assert json.loads(f.readline())["calibration_ctr"] == pytest.approx(1.0, abs=2e-4)
    # switched off: no line, and the same training leaves pCTR off the click rate
    plain = tmp_path / "plain"
    overrides[1] = f"runner.model_save_path={plain}"
    trained = run_tool(tool, "-m", config, *overrides, "runner.calibrate_ctr=False", cwd=str(tmp_path))
    assert trained.returncode == 0 and "recalibrated" not in trained.stdout + trained.stderr
    assert run_tool("infer.py", "-m", config, *overrides, cwd=str(tmp_path)).returncode == 0
    with open(plain / "infer_metrics.jsonl") as f:
        assert abs(json.loads(f.readline())["calibration_ctr"] - 1.0) > 1e-3
