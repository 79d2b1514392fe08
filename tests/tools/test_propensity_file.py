"""runner.propensity_file through the command lines: the README's recipe (a separately trained CTR
model's predictions as the propensities), the risk it makes in both graph modes, and its errors."""
import os

import numpy as np
import pytest

from conftest import CONFIG, data_overrides, ok, read_jsonl, run_tool


def train_ids(synthetic):
    """The sample_ids of the synthetic training folder (the first column of its lines)."""
    folder = synthetic[0] / "train"
    ids = [int(line.split(",", 1)[0]) for name in sorted(os.listdir(folder)) for line in open(folder / name)]
    return np.array(ids, dtype=np.int64)


def write_propensities(path, ids, values):
    with open(path, "w") as f:
        f.write("sample_id,propensity\n" + "".join(f"{i},{float(v)!r}\n" for i, v in zip(ids, values)))
    return str(path)


def run(tool, synthetic, tmp_path, name, *overrides):
    return run_tool(tool, "-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={name}",
                    "runner.epochs=1", "runner.train_batch_size=256", "runner.cache_dir=none", *overrides,
                    cwd=str(tmp_path))


@pytest.mark.parametrize("tool", ["trainer.py", "static_trainer.py"])
def test_a_propensity_of_one_everywhere_makes_snips_the_naive_risk(synthetic, tmp_path, tool):
    # SNIPS divides each click's error by its propensity and normalises by the sum of 1/propensity over
    # the clicks: with 1 everywhere that is NAIVE's mean error over the clicks, step for step
    ones = write_propensities(tmp_path / "ones.csv", train_ids(synthetic), np.ones(len(train_ids(synthetic))))
    given = ok(run(tool, synthetic, tmp_path, "given", "runner.counterfact_mode=IPW",
                   "hyper_parameters.ipw_normalization=self", f"runner.propensity_file={ones}"))
    assert "runner.propensity_file: 6000 propensities (column propensity)" in given.stderr + given.stdout
    ok(run(tool, synthetic, tmp_path, "naive", "runner.counterfact_mode=NAIVE"))
    own = ok(run(tool, synthetic, tmp_path, "own", "runner.counterfact_mode=IPW",
                 "hyper_parameters.ipw_normalization=self"))
    assert "runner.propensity_file" not in own.stderr + own.stdout
    records = {name: read_jsonl(tmp_path / name / "train_metrics.jsonl")[0] for name in ("given", "naive", "own")}
    for key in ("loss", "ctr_loss", "cvr_loss", "ctcvr_loss", "auc_ctr", "auc_cvr"):
        assert records["given"][key] == pytest.approx(records["naive"][key], rel=1e-5), key
    # the model's own pCTR weighs the clicks otherwise
    assert abs(records["own"]["cvr_loss"] - records["given"]["cvr_loss"]) > 1e-3
    # the record's weight figures are of the weights applied: all alike
    assert records["given"]["ipw_ess_share"] == pytest.approx(1.0) and records["own"]["ipw_ess_share"] < 0.999
    assert "not found in program" not in given.stderr  # the evaluation program is fed what it reads


def test_the_recipe_a_separately_trained_ctr_model_gives_the_propensities(synthetic, tmp_path):
    first = ["runner.counterfact_mode=ESMM", "runner.epochs=3", "runner.dev_fraction=0.2",
             "runner.early_stop_patience=1", "runner.early_stop_metric=auc_ctr"]
    ok(run("trainer.py", synthetic, tmp_path, "propensity_model", *first))
    ok(run("export.py", synthetic, tmp_path, "propensity_model", *first))
    predicted = tmp_path / "propensity.csv"
    ok(run("predict.py", synthetic, tmp_path, "propensity_model", *first,
           f"runner.predict_data_dir={synthetic[0] / 'train'}", f"runner.predict_output={predicted}"))
    result = ok(run("trainer.py", synthetic, tmp_path, "escm2", f"runner.propensity_file={predicted}"))
    assert "runner.propensity_file: 6000 propensities (column pctr)" in result.stderr + result.stdout
    assert (tmp_path / "escm2" / "0").is_dir()


@pytest.mark.parametrize("tool, start", [("trainer.py", "true"), ("static_trainer.py", "true"),
                                         ("trainer.py", "false"), ("static_trainer.py", "false")])
def test_a_file_that_misses_a_training_impression_stops_the_run_in_one_line(synthetic, tmp_path, tool, start):
    # found in the pass that sets the CTR tower's start, or without it mid-epoch, from the reading thread
    ids = train_ids(synthetic)
    partial = write_propensities(tmp_path / "partial.csv", ids[ids != ids[4000]], np.full(len(ids) - 1, 0.2))
    result = run(tool, synthetic, tmp_path, "out", f"runner.propensity_file={partial}",
                 f"runner.ctr_prior_init={start}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"partial.csv has no propensity for sample_id {ids[4000]} of " in last and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "0").exists()  # no checkpoint of the failed epoch


def test_a_propensity_file_without_a_risk_that_divides_by_it_is_refused(synthetic, tmp_path):
    ones = write_propensities(tmp_path / "ones.csv", [1], [0.5])
    result = run("trainer.py", synthetic, tmp_path, "out", "runner.counterfact_mode=ESMM",
                 f"runner.propensity_file={ones}")
    assert result.returncode == 2
    assert "runner.propensity_file is set, but counterfact_mode ESMM divides by no propensity" in result.stderr
