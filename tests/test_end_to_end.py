"""The command lines as a user runs them: real subprocesses, real files, real training."""
import os
import shutil

import pytest
import yaml

from conftest import (CONFIG, MODEL_DIR, PADDLEREC_CONFIG, SHARED_ALI_CCP, data_overrides, ok, read_jsonl,
                      run_tool, write_lines)


def test_train_then_infer_from_another_directory(synthetic, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    common = ["-o", *data_overrides(synthetic), "runner.model_save_path=out", "runner.epochs=2",
              "runner.counterfact_mode=DR",
              "runner.train_batch_size=256", "runner.print_interval=5"]
    train = ok(run_tool("trainer.py", "-m", CONFIG, *common, cwd=str(cwd)))
    progress = [line for line in train.stdout.splitlines() if "epoch: 0, batch_id: 5, loss:" in line]
    assert len(progress) == 1 and "auc_ctr: " in progress[0] and progress[0].endswith(" ins/s")
    records = read_jsonl(cwd / "out" / "train_metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert {"epoch", "auc_ctr", "auc_cvr", "auc_ctcvr", "loss", "ips", "r_err", "r_imp"} <= set(r)
        assert r["samples"] == 6000 and 0 < r["auc_ctr"] < 1 and r["loss"] > 0
    assert records[1]["loss"] < records[0]["loss"]
    for epoch in ("0", "1"):
        assert sorted(os.listdir(cwd / "out" / epoch)) == ["checkpoint.json", "rec.pdopt", "rec.pdparams"]

    infer = ok(run_tool("infer.py", "-m", CONFIG, *common, cwd=str(cwd)))
    assert "infer epoch: 1" in infer.stdout
    evaluated = read_jsonl(cwd / "out" / "infer_metrics.jsonl")
    assert [r["epoch"] for r in evaluated] == [0, 1]
    for r in evaluated:
        assert {"epoch", "auc_ctr", "auc_cvr", "auc_ctcvr", "loss", "ips"} <= set(r) and r["samples"] == 3000
    assert evaluated[1]["auc_ctr"] > 0.55  # the generator's signal is learnt, not noise

    resumed = ok(run_tool("trainer.py", "-m", CONFIG, *common, "runner.epochs=3", "runner.model_init_path=out/1",
                          cwd=str(cwd)))
    assert "epoch: 0," not in resumed.stdout and "epoch: 2 done" in resumed.stdout
    assert [r["epoch"] for r in read_jsonl(cwd / "out" / "train_metrics.jsonl")] == [0, 1, 2]

    again = ok(run_tool("trainer.py", "-m", CONFIG, *common, "runner.epochs=1", cwd=str(cwd)))
    assert "epoch: 0 done" in again.stdout  # a new run from epoch 0 replaces the records it retrains
    assert [r["epoch"] for r in read_jsonl(cwd / "out" / "train_metrics.jsonl")] == [0]


@pytest.mark.parametrize("overrides", [["runner.counterfact_mode=ESMM"], ["runner.counterfact_mode=NAIVE"],
                                       ["runner.counterfact_mode=IPW", "hyper_parameters.backbone=mmoe"],
                                       ["runner.counterfact_mode=DR", "hyper_parameters.backbone=mmoe"]])
def test_every_mode_and_backbone_trains_and_evaluates(synthetic, tmp_path, overrides):
    args = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={tmp_path}",
            "runner.epochs=1", "runner.infer_end_epoch=1", *overrides]
    ok(run_tool("trainer.py", *args, cwd=str(tmp_path)))
    ok(run_tool("infer.py", *args, cwd=str(tmp_path)))
    (record,) = read_jsonl(tmp_path / "infer_metrics.jsonl")
    assert 0 < record["auc_ctr"] < 1 and record["loss"] > 0
    assert ("cvr_loss" in record) == ("ESMM" not in overrides[0])


def test_a_checkpoint_of_another_mode_is_refused_clearly(synthetic, tmp_path):
    args = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={tmp_path}", "runner.epochs=1"]
    ok(run_tool("trainer.py", *args, "runner.counterfact_mode=IPW", cwd=str(tmp_path)))
    result = run_tool("infer.py", *args, "runner.infer_end_epoch=1", "runner.counterfact_mode=DR", cwd=str(tmp_path))
    assert result.returncode == 2
    assert "does not fit this model" in result.stderr and "counterfact_mode" in result.stderr


def test_bad_data_exits_2_naming_file_and_line_and_saves_nothing(tmp_path):
    good = [f"{i},{i % 2},0,101:{i % 50 + 1}" for i in range(1, 9000)]  # past the reader's first chunk:
    data = write_lines(str(tmp_path / "data" / "part-0.txt"), good + ["9000,0,1,101:3"])  # batches train first
    result = run_tool("trainer.py", "-m", CONFIG, "-o", f"runner.train_data_dir={tmp_path / 'data'}",
                      f"runner.model_save_path={tmp_path / 'out'}", "runner.train_batch_size=256",
                      "runner.print_interval=2", cwd=str(tmp_path))
    assert result.returncode == 2
    assert "epoch: 0, batch_id: 10," in result.stdout
    assert result.stderr.strip() == f"error: {data}:9000: buy=1 on an impression with click=0"
    assert os.listdir(tmp_path / "out") == []


def test_a_data_folder_without_samples_is_an_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.txt").write_text("")
    result = run_tool("trainer.py", "-m", CONFIG, "-o", f"runner.train_data_dir={tmp_path / 'data'}",
                      f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2 and "no samples in" in result.stderr and "empty.txt" in result.stderr


def test_missing_data_and_checkpoints_are_named(tmp_path):
    result = run_tool("trainer.py", "-m", CONFIG, "-o", f"runner.train_data_dir={tmp_path / 'none'}",
                      f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2 and "runner.train_data_dir: folder not found" in result.stderr
    result = run_tool("infer.py", "-m", CONFIG, "-o", f"runner.infer_load_path={tmp_path / 'none'}",
                      f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2 and "runner.infer_load_path: checkpoint folder not found" in result.stderr


def test_paddlerec_config_dropped_into_the_model_folder_trains_unchanged(tmp_path):
    lines = os.path.join(SHARED_ALI_CCP, "train.txt")
    if not os.path.isfile(lines):
        pytest.skip(f"real Ali-CCP sample lines not found at {lines} (../shared is absent)")
    folder = tmp_path / "escm2"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("data", "output*", "__pycache__", "*.yaml"))
    (folder / "data" / "train").mkdir(parents=True)
    shutil.copy(lines, folder / "data" / "train" / "small.txt")
    (folder / "config.yaml").write_text(yaml.safe_dump(PADDLEREC_CONFIG))
    result = ok(run_tool("trainer.py", "-m", str(folder / "config.yaml"), cwd=str(tmp_path)))
    records = read_jsonl(folder / "output_model_esmm" / "train_metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2] and all(r["samples"] == 10 for r in records)
    assert "id(s) beyond max_len=3 dropped" in result.stdout
