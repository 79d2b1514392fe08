"""The bias study, end to end on a tiny suite: behaviour, not figures."""
import csv
import itertools
import json
import os

import numpy as np
import paddle
import pytest

from conftest import MODEL_DIR, REPO, documented_reference, run_tool, tool_module

SMOKE = os.path.join(REPO, "studies", "bias", "smoke.yaml")


def test_the_smoke_suite_writes_results_table_and_figure(tmp_path):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", f"suite.output_dir={tmp_path}", cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "results.jsonl") as f:
        runs = [json.loads(line) for line in f]
    assert len(runs) == 2 * 2 * 2 * 2  # data sets x backbones x variants x seeds
    for run in runs:
        assert 0 < run["auc_ctr"] < 1 and 0 < run["auc_cvr_all"] < 1 and -1 <= run["pctr_corr"] <= 1
        assert len(run["pcvr_by_ctr_decile"]) == 10
        assert run["mode"] == {"ESMM": "ESMM", "DR-label": "DR"}[run["variant"]]
        # the truth side is the generator's: its test split, read independently here
        folder = tmp_path / "data" / run["data_set"] / "synthetic"
        with open(folder / "truth" / "test.csv") as f:
            rows = list(csv.DictReader(f))
        true_cvr = np.array([float(row["true_cvr"]) for row in rows])
        clicked = np.array([row["click"] == "1" for row in rows])
        assert run["mean_true_cvr"] == pytest.approx(true_cvr.mean(), rel=1e-9)
        assert run["selection_strength"] == pytest.approx(true_cvr[clicked].mean() / true_cvr.mean(), rel=1e-9)
        with open(folder / "meta.json") as f:
            assert json.load(f)["splits"]["test"]["selection_strength"] == pytest.approx(run["selection_strength"],
                                                                                         rel=1e-4)
        assert run["ieb"] == pytest.approx(run["mean_pcvr"] - run["mean_true_cvr"])
        if run["backbone"] == "mmoe":  # one gate per tower: CTR, CVR and DR's imputation tower
            assert len(run["gate_entropy"]) == (3 if run["mode"] == "DR" else 2)
            assert all(0 <= h <= np.log(8) + 1e-6 for h in run["gate_entropy"])
        else:
            assert "gate_entropy" not in run
    strength = {r["data_set"]: r["selection_strength"] for r in runs}
    assert strength["hidden"] > 1.5 > strength["rho0"]
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| data set | selection strength | backbone | variant | CTR AUC | pCTR corr. true CTR")
    rows = list(itertools.takewhile(lambda line: line.startswith("| "), table[2:]))  # the first table
    assert len(rows) == 8
    assert all(len(row.split("|")) == len(table[0].split("|")) and " ± " in row for row in rows)
    assert rows[0].startswith("| rho0 | 1.") and rows[-1].startswith("| hidden | ")
    assert "| mmoe | DR-label |" in rows[-1]
    assert (tmp_path / "cvr_by_ctr_decile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("| hidden | ") == 4  # the table is printed too
    assert "| warned | " in result.stdout and "| not warned | " in result.stdout  # DR-label's warnings


@pytest.mark.parametrize("override, message", [
    ("suite.seed=[1]", "unknown key suite.seed; did you mean suite.seeds?"),
    ("suite.variants=[ESMM, DRR]", "suite.variants must be one of ESMM, NAIVE, IPW, SNIPS, SNIPS-no-CTCVR, SNIPS-shrunk"),
    ("suite.data_sets=['--selection-bias 0.3']", "must be 'NAME: generate.py arguments'"),
    ("suite.data_sets=['a: --selection-bias 0', 'a: --selection-bias 0.3']", "names 'a' twice"),
])
def test_a_bad_suite_is_refused_before_any_work(tmp_path, override, message):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", override, f"suite.output_dir={tmp_path / 'out'}",
                      cwd=str(tmp_path))
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_data_set_the_generator_refuses_is_one_line_naming_it(tmp_path):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", "suite.data_sets=['wild: --selection-bias 2']",
                      f"suite.output_dir={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2 and "suite.data_sets 'wild'" in result.stderr and "selection_bias" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_suite_readme_documents_every_key():
    bias_study_reference = tool_module("config_doc").bias_study_reference
    documented = documented_reference(os.path.join(REPO, "studies", "bias", "README.md"))
    assert documented == bias_study_reference(), \
        "regenerate with: python tools/config_doc.py --bias-study"


def small_suite(tmp_path, *overrides):
    """The smoke suite cut to one data set (rho0), MLP and seed 1, with `overrides`: its runs by variant."""
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", f"suite.output_dir={tmp_path}", "suite.backbones=[mlp]",
                      "suite.seeds=[1]", "suite.data_sets=['rho0: --selection-bias 0']", *overrides, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "results.jsonl") as f:
        return {r["variant"]: r for r in map(json.loads, f)}


def test_the_oracle_arm_trains_on_the_true_ctr_and_both_splits_are_measured(tmp_path):
    runs = small_suite(tmp_path, "suite.oracle=true", "suite.variants=[ESMM, SNIPS]", "suite.default_variant=SNIPS")
    assert runs["SNIPS+oracle"]["ieb"] != runs["SNIPS"]["ieb"]  # same seed: only the propensity differs
    assert sorted(runs) == ["ESMM", "SNIPS", "SNIPS+oracle"] and runs["SNIPS+oracle"]["mode"] == "IPW"
    folder = tmp_path / "data" / "rho0" / "synthetic"
    with open(folder / "truth" / "train.csv") as f:
        true_cvr = np.array([float(row["true_cvr"]) for row in csv.DictReader(f)])
    for run in runs.values():
        assert run["train_ieb"] == pytest.approx(run["train_ieb_rel"] * true_cvr.mean())
        assert run["balance_failed"] >= 0 and len(run["balance_pcvr"]) == 10
        assert run["train_clicked_pctr_calibration"] > 0 and run["clicked_pctr_calibration"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| rho0 | " in table and "| SNIPS+oracle |" in table and "IEB rel. (train)" in table
    assert "| warned | " in table and "| not warned | " in table
    # the oracle run was given each impression's true CTR through runner.propensity_file
    from rectools.propensity import Propensities
    from studies.bias import bias_study as study
    truth = study.read_truth(str(folder / "truth" / "train.csv"))
    given = Propensities(str(tmp_path / "oracle" / "rho0" / "mlp-seed1" / "propensity.csv"))
    np.testing.assert_allclose(given.lookup(truth["sample_id"].astype(np.int64), ["train"]), truth["true_ctr"],
                               rtol=1e-6)


def test_the_separate_arm_gives_the_pctr_of_an_early_stopped_ctr_model_in_a_static_suite(tmp_path):
    # two variants divide by the one propensity model of the seed, on two workers: it is trained once
    runs = small_suite(tmp_path, "suite.separate=true", "suite.variants=[ESMM, SNIPS, IPW]",
                       "suite.default_variant=SNIPS",
                       "suite.graph_mode=static",
                       "suite.separate_overrides=[runner.epochs=3, runner.dev_fraction=0.2, "
                       "runner.early_stop_patience=1, runner.early_stop_metric=auc_ctr]")
    assert sorted(runs) == ["ESMM", "IPW", "IPW+separate", "SNIPS", "SNIPS+separate"]
    assert runs["SNIPS+separate"]["mode"] == "IPW"
    assert runs["SNIPS+separate"]["ieb"] != runs["SNIPS"]["ieb"]  # same seed: only the propensity differs
    assert "| SNIPS+separate |" in (tmp_path / "results.md").read_text()
    from rectools import early_stopping, model_loader
    from rectools.propensity import Propensities
    from studies.bias import bias_study as study
    folder = tmp_path / "data" / "rho0" / "synthetic"
    truth = study.read_truth(str(folder / "truth" / "train.csv"))
    with open(folder / "meta.json") as f:
        meta = json.load(f)
    model_dir = tmp_path / "separate" / "rho0" / "mlp-seed1" / "model"
    with open(model_dir / "train_metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert "cvr_loss" not in records[0] and "dev_auc_ctr" in records[0]  # ESMM, judged on its held-out fifth
    best = early_stopping.read_best(str(model_dir))["epoch"]
    config, package = model_loader.load(os.path.join(MODEL_DIR, "config.yaml"), [
        "hyper_parameters.ctr_fc_sizes=[32]", "hyper_parameters.cvr_fc_sizes=[32]", "hyper_parameters.max_len=6",
        f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}", "runner.use_inference=False",
        f"runner.model_save_path={model_dir}", f"runner.infer_start_epoch={best}",
        f"runner.infer_end_epoch={best + 1}"])
    try:
        _, predicted = study.predictions_of(config, package, "static", f"{folder}/train", truth, quiet=True)
    finally:
        paddle.disable_static()
    given = Propensities(str(tmp_path / "separate" / "rho0" / "mlp-seed1" / "propensity.csv"))
    np.testing.assert_allclose(given.lookup(truth["sample_id"].astype(np.int64), ["train"]), predicted["pctr"],
                               rtol=1e-6)


def test_a_run_with_a_validation_split_is_judged_by_its_best_epoch(tmp_path):
    (run,) = small_suite(tmp_path, "suite.variants=[ESMM]", "suite.default_variant=ESMM",
                         "suite.overrides=[runner.epochs=3, runner.dev_fraction=0.3, runner.ctr_prior_init=false, "
                         "hyper_parameters.optimizer.learning_rate=0.05, 'hyper_parameters.ctr_fc_sizes=[32]', "
                         "'hyper_parameters.cvr_fc_sizes=[32]']").values()
    run_dir = tmp_path / "runs" / "rho0" / "mlp-ESMM-seed1"
    with open(run_dir / "best.json") as f:
        best = json.load(f)["epoch"]
    assert best < 2  # a step this large, from every tower at 0.5, overfits after the first epoch: the best is not the last
    assert run["epoch"] == best
    with open(run_dir / "infer_metrics.jsonl") as f:  # the test split's figures are the best epoch's
        assert [json.loads(line)["epoch"] for line in f][-1] == best


def test_the_decile_curve_fills_every_tenth_when_the_ctr_has_few_levels():
    from studies.bias.bias_study import decile_curve
    true_ctr = np.repeat([0.01, 0.05, 0.2], [500, 300, 200])  # three levels: quantile edges would leave empty tenths
    values = np.arange(1000, dtype=np.float64)
    curve = decile_curve(true_ctr, values)
    assert curve == [float(values[b * 100:(b + 1) * 100].mean()) for b in range(10)]
    shuffled = np.random.default_rng(0).permutation(true_ctr)  # by rank of the CTR, not by position
    assert decile_curve(shuffled, shuffled) == pytest.approx([0.01] * 5 + [0.05] * 3 + [0.2] * 2)


def test_the_crossfit_arm_weights_each_impression_by_a_model_that_has_not_seen_it(tmp_path):
    runs = small_suite(tmp_path, "suite.crossfit=true", "suite.variants=[ESMM, SNIPS]", "suite.default_variant=SNIPS")
    assert sorted(runs) == ["ESMM", "SNIPS", "SNIPS+crossfit"] and runs["SNIPS+crossfit"]["mode"] == "IPW"
    assert runs["SNIPS+crossfit"]["ieb"] != runs["SNIPS"]["ieb"]  # same seed: only the propensity differs
    assert "| SNIPS+crossfit |" in (tmp_path / "results.md").read_text()
    from rectools import model_loader
    from rectools.early_stopping import held_out
    from studies.bias import bias_study as study
    folder = tmp_path / "data" / "rho0" / "synthetic"
    truth = study.read_truth(str(folder / "truth" / "train.csv"))
    half = held_out(truth["sample_id"].astype(np.int64), 0.5)
    with open(folder / "meta.json") as f:
        meta = json.load(f)
    crossfit_dir = tmp_path / "crossfit" / "rho0" / "mlp-seed1"
    from rectools.propensity import Propensities  # what the SNIPS+crossfit run divided by
    propensity = Propensities(str(crossfit_dir / "propensity.csv")).lookup(truth["sample_id"].astype(np.int64),
                                                                          ["train"])
    assert propensity.shape == half.shape and not np.isnan(propensity).any()
    for k in (0, 1):  # each an ESMM model trained on its half alone, predicting the other half
        with open(crossfit_dir / f"half-{k}" / "train_metrics.jsonl") as f:
            record = json.loads(f.readline())
        assert record["samples"] == int((half == bool(k)).sum()) and "cvr_loss" not in record
        config, package = model_loader.load(os.path.join(MODEL_DIR, "config.yaml"), [
            "runner.epochs=1", "hyper_parameters.ctr_fc_sizes=[32]", "hyper_parameters.cvr_fc_sizes=[32]",
            f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}", "runner.use_inference=False",
            f"runner.model_save_path={crossfit_dir}/half-{k}", "runner.infer_start_epoch=0"])
        _, predicted = study.predictions_of(config, package, "dygraph", f"{folder}/train", truth, quiet=True)
        np.testing.assert_array_equal(propensity[half != bool(k)], predicted["pctr"][half != bool(k)])


def test_the_crossfit_arm_refuses_a_validation_split_cut_by_the_same_hash(tmp_path):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", f"suite.output_dir={tmp_path}", "suite.crossfit=true",
                      "suite.variants=[SNIPS]", "suite.default_variant=SNIPS", "suite.backbones=[mlp]",
                      "suite.seeds=[1]", "suite.data_sets=['rho0: --selection-bias 0']",
                      "suite.overrides=[runner.dev_fraction=0.2]", cwd=str(tmp_path))
    assert result.returncode == 2 and "suite.crossfit cuts the training impressions in halves" in result.stderr
    assert "runner.dev_data_dir" in result.stderr and not (tmp_path / "runs").exists()
    assert not (tmp_path / "data").exists()  # refused with the suite, before any data is made


def test_the_warning_is_scored_against_esmm_and_against_the_oracle_arm():
    from studies.bias.bias_study import warning_table

    def run(variant, seed, ieb, warned=False):
        return {"data_set": "d", "backbone": "mlp", "variant": variant, "seed": seed, "ieb": ieb,
                **({"balance_failed": int(warned)} if variant == "SNIPS" else {})}
    results = [run("ESMM", 1, 0.10), run("ESMM", 2, 0.10), run("ESMM", 3, 0.10),
               run("SNIPS+oracle", 1, 0.02), run("SNIPS+oracle", 2, 0.03), run("SNIPS+oracle", 3, 0.04),  # 2 std 0.02
               run("SNIPS", 1, 0.15, warned=True),   # worse than ESMM, 0.13 off its oracle run
               run("SNIPS", 2, 0.04, warned=True),   # better than ESMM, 0.01 off
               run("SNIPS", 3, 0.05)]                # better than ESMM, 0.01 off
    table = warning_table(results, "SNIPS")
    assert "| | more biased than ESMM | not | IEB off SNIPS+oracle's by > 2 std | not |" in table
    assert "| warned | 1 | 1 | 1 | 1 |" in table and "| not warned | 0 | 1 | 0 | 1 |" in table
    assert "Warned, per data set: d 2 of 3." in table
    one_seed = warning_table([r for r in results if r["seed"] == 1], "SNIPS")  # no seed noise: no oracle column
    assert "more biased than ESMM" in one_seed and "SNIPS+oracle" not in one_seed
    assert warning_table([r for r in results if r["variant"] != "ESMM" and "oracle" not in r["variant"]],
                         "SNIPS") == ""
