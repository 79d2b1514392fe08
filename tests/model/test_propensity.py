"""The propensity seam: a propensity given in place of pCTR, shrunk weights, and the balance check,
each against numpy; the check's warning through tools/infer.py."""
import gzip
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
    # a given propensity (runner.propensity_file) is what the check reads, weights and deciles alike
    given = balance.balance_report({"pctr": true_ctr, "pcvr": pcvr, "click": click, "propensity": pctr}, 0.01, 0.05)
    assert given == report


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


# ----------------------------------------------------------------------------- the towers' prior

def np_logit(rate):
    return np.log(rate / (1 - rate))


def test_the_ctr_tower_starts_at_the_click_rate_and_the_others_keep_their_start():
    click = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0], dtype=np.int8)  # 4 of 12
    # eleven hidden layers: the output layer is towers.t.22, which sorts before towers.t.4 as text
    parameters = {f"towers.{t}.{k}.bias": np.zeros(1 if k == 22 else 8, np.float32) for t in range(2) for k in (0, 4, 22)}
    parameters["towers.0.22.weight"] = np.ones((8, 1), np.float32)
    changed = dygraph_model.ctr_prior_bias({"click": click, "buy": click, "sample_id": np.arange(12)}, parameters)
    assert list(changed) == ["towers.0.22.bias"]
    assert changed["towers.0.22.bias"].dtype == np.float32 and changed["towers.0.22.bias"].shape == (1,)
    assert changed["towers.0.22.bias"][0] == pytest.approx(np_logit(4 / 12), rel=1e-6)


def test_a_click_rate_of_0_or_1_leaves_the_ctr_tower_at_one_half(caplog):
    parameters = {"towers.0.2.bias": np.zeros(1, np.float32)}
    with caplog.at_level("WARNING", logger="rectools"):
        assert dygraph_model.ctr_prior_bias({"click": np.zeros(4)}, parameters) == {}
        assert dygraph_model.ctr_prior_bias({"click": np.ones(3)}, parameters) == {}
    assert "0 of the 4 training impressions read are clicks: the CTR tower starts at about 0.5" in caplog.text
    assert "3 of the 3 training impressions read are clicks" in caplog.text
    with pytest.raises(ValueError, match=r"no output bias of tower 0 \(towers\.0\.\*\.bias\)"):
        dygraph_model.ctr_prior_bias({"click": np.array([1, 0])}, {"towers.1.2.bias": np.zeros(1, np.float32)})


def train_click_rate():
    """The click rate of the bundled training sample."""
    with gzip.open(f"{MODEL_DIR}/data/train/part-00000.txt.gz", "rt") as f:
        return np.mean([int(line.split(",", 2)[1]) for line in f])


@pytest.mark.parametrize("tool", ["trainer.py", "static_trainer.py"])
def test_a_run_from_scratch_starts_the_ctr_tower_at_the_click_rate_and_a_resumed_one_does_not(tmp_path, tool):
    # learning rate 0 and no recalibration: the checkpoint holds the initialisation itself, and the
    # epoch's predictions are the initial net's
    config = f"{MODEL_DIR}/config.yaml"
    fixed = ["runner.epochs=1", "runner.calibrate_ctr=False", "hyper_parameters.optimizer.learning_rate=0"]
    trained = run_tool(tool, "-m", config, "-o", f"runner.model_save_path={tmp_path}", *fixed, cwd=str(tmp_path))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "the CTR tower starts at the click rate of 50000 training impressions" in trained.stdout + trained.stderr
    params = paddle.load(str(tmp_path / "0" / "rec.pdparams"))
    assert params["towers.0.4.bias"].numpy()[0] == pytest.approx(np_logit(train_click_rate()), abs=1e-5)
    assert params["towers.1.4.bias"].numpy()[0] == 0  # the CVR tower keeps its start
    with open(tmp_path / "train_metrics.jsonl") as f:  # set before the first step: the net starts calibrated
        assert json.loads(f.readline())["calibration_ctr"] == pytest.approx(1.0, abs=0.05)
    # switched off: the CTR tower starts at about 0.5
    plain = tmp_path / "plain"
    trained = run_tool(tool, "-m", config, "-o", f"runner.model_save_path={plain}", *fixed,
                       "runner.ctr_prior_init=False", cwd=str(tmp_path))
    assert trained.returncode == 0 and "CTR tower starts" not in trained.stdout + trained.stderr
    assert paddle.load(str(plain / "0" / "rec.pdparams"))["towers.0.4.bias"].numpy()[0] == 0
    with open(plain / "train_metrics.jsonl") as f:
        assert json.loads(f.readline())["calibration_ctr"] > 5
    # resumed from the checkpoint that started at 0.5: its bias is kept
    resumed = run_tool(tool, "-m", config, "-o", f"runner.model_save_path={tmp_path / 'resumed'}", *fixed,
                       "runner.epochs=2", f"runner.model_init_path={plain}/0", cwd=str(tmp_path))
    assert resumed.returncode == 0 and "CTR tower starts" not in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
    assert paddle.load(str(tmp_path / "resumed" / "1" / "rec.pdparams"))["towers.0.4.bias"].numpy()[0] == 0


def test_the_ctr_tower_s_start_is_spread_over_the_whole_data_cached_or_not(tmp_path):
    # about 10,000 impressions of 50,000 (98 batches of 512), at most 20 batches: the stride doubles
    # to 8, every 8th batch, 13 of them, on a first pass over text as over the cache
    with gzip.open(f"{MODEL_DIR}/data/train/part-00000.txt.gz", "rt") as f:
        click = np.array([int(line.split(",", 2)[1]) for line in f])
    batches = np.array_split(click, np.arange(512, click.size, 512))
    spread = np.concatenate(batches[::8])
    assert spread.size == 6656 and f"{spread.mean():.4g}" != f"{np.concatenate(batches[:13]).mean():.4g}"
    config = f"{MODEL_DIR}/config.yaml"
    for run in ("first", "cached"):
        trained = run_tool("trainer.py", "-m", config, "-o", f"runner.model_save_path={tmp_path / run}",
                           f"runner.cache_dir={tmp_path / 'cache'}", "runner.epochs=1",
                           "runner.recalibration_samples=10000", cwd=str(tmp_path))
        assert trained.returncode == 0, trained.stderr[-2000:]
        assert f"starts at the click rate of 6656 training impressions, {spread.mean():.4g} " in trained.stdout
