"""The command lines as a user runs them: real subprocesses, real files, real training."""
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rectools import checkpoint

from conftest import (CONFIG, MODEL_DIR, PADDLEREC_CONFIG, REPO, SHARED_ALI_CCP, data_overrides, ok, read_jsonl,
                      run_tool, write_lines)


def test_train_then_infer_from_another_directory(synthetic, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    common = ["-o", *data_overrides(synthetic), "runner.model_save_path=out", "runner.epochs=2",
              "runner.counterfact_mode=DR",
              "runner.train_batch_size=256", "runner.print_interval=5"]
    train = ok(run_tool("trainer.py", "-m", CONFIG, *common, cwd=str(cwd)))
    progress = [line for line in train.stdout.splitlines() if "epoch: 0, batch_id: 5, loss:" in line]
    # the CTR tower's start read the 6,000 lines first and cached them: epoch 0 knows its size
    assert len(progress) == 1 and "auc_ctr: " in progress[0] and re.search(r" ins/s, eta: 0:00:\d\d$", progress[0])
    records = read_jsonl(cwd / "out" / "train_metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["run"] == records[1]["run"]
    for r in records:
        assert {"epoch", "auc_ctr", "auc_cvr", "auc_ctcvr", "loss", "ips", "r_err", "r_imp"} <= set(r)
        assert r["samples"] == 6000 and 0 < r["auc_ctr"] < 1 and r["loss"] > 0
    assert records[1]["loss"] < records[0]["loss"]
    for epoch in ("0", "1"):
        assert sorted(os.listdir(cwd / "out" / epoch)) == ["checkpoint.json", "rec.pdopt", "rec.pdparams"]

    for _ in range(2):  # an epoch evaluated again replaces its line, as training does
        infer = ok(run_tool("infer.py", "-m", CONFIG, *common, cwd=str(cwd)))
    assert "infer epoch: 1" in infer.stdout
    evaluated = read_jsonl(cwd / "out" / "infer_metrics.jsonl")
    assert [r["epoch"] for r in evaluated] == [0, 1]
    for r in evaluated:
        assert {"epoch", "auc_ctr", "auc_cvr", "auc_ctcvr", "loss", "ips"} <= set(r) and r["samples"] == 3000
        assert r["run"] == records[0]["run"]  # the training run whose checkpoint it evaluated
    assert evaluated[1]["auc_ctr"] > 0.55  # the generator's signal is learnt, not noise

    resumed = ok(run_tool("trainer.py", "-m", CONFIG, *common, "runner.epochs=3", "runner.model_init_path=out/1",
                          cwd=str(cwd)))
    assert "epoch: 0," not in resumed.stdout and "epoch: 2 done" in resumed.stdout
    trained = read_jsonl(cwd / "out" / "train_metrics.jsonl")
    assert [r["epoch"] for r in trained] == [0, 1, 2] and trained[:2] == records

    # a new run from epoch 0 replaces epoch 0, checkpoint and line together; epochs 1 and 2 of the
    # earlier run stay, with their lines, and are named
    again = ok(run_tool("trainer.py", "-m", CONFIG, *common, "runner.epochs=1", cwd=str(cwd)))
    assert "epoch: 0 done" in again.stdout
    assert f"{cwd / 'out'} holds checkpoints of epochs 0, 1, 2 from an earlier run" in again.stdout
    assert "checkpoints of epochs 1, 2 (past runner.epochs=1) remain in" in again.stdout
    now = read_jsonl(cwd / "out" / "train_metrics.jsonl")
    assert [r["epoch"] for r in now] == [0, 1, 2] and now[1:] == trained[1:] and now[0]["run"] != trained[0]["run"]
    for r in now:
        assert checkpoint.manifest(str(cwd / "out" / str(r["epoch"])), "key")["run"] == r["run"]


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
                      "runner.print_interval=2", "runner.ctr_prior_init=False",  # whose pass would meet it first
                      cwd=str(tmp_path))
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


# -- nothing lost, nothing mixed: records against reruns, torn lines, stops ---------------------

def train_args(synthetic, *overrides):
    return ["-m", CONFIG, "-o", *data_overrides(synthetic), "runner.model_save_path=out",
            "runner.train_batch_size=512", *overrides]


def test_a_rerun_that_fails_keeps_the_records_of_the_checkpoints_it_did_not_replace(synthetic, tmp_path):
    ok(run_tool("trainer.py", *train_args(synthetic, "runner.epochs=2"), cwd=str(tmp_path)))
    before = (tmp_path / "out" / "train_metrics.jsonl").read_text()
    bad = write_lines(str(tmp_path / "bad" / "part-0.txt"),
                      [f"{i},{i % 2},0,101:{i % 50 + 1}" for i in range(1, 3000)] + ["3000,0,1,101:3"])
    rerun = train_args(synthetic, "runner.epochs=2", f"runner.train_data_dir={os.path.dirname(bad)}")
    result = run_tool("trainer.py", *rerun, cwd=str(tmp_path))
    assert result.returncode == 2 and result.stderr == f"error: {bad}:3000: buy=1 on an impression with click=0\n"
    assert (tmp_path / "out" / "train_metrics.jsonl").read_text() == before
    assert sorted(os.listdir(tmp_path / "out")) == ["0", "1", "train_metrics.jsonl"]


def test_a_torn_metrics_line_is_skipped_with_a_warning_and_the_files_stay_whole(synthetic, tmp_path):
    args = train_args(synthetic, "runner.epochs=2", "runner.infer_end_epoch=1")
    ok(run_tool("trainer.py", *args, "runner.epochs=1", cwd=str(tmp_path)))
    ok(run_tool("infer.py", *args, cwd=str(tmp_path)))
    for name in ("train_metrics.jsonl", "infer_metrics.jsonl"):  # what a full disk or a kill mid-write leaves
        with open(tmp_path / "out" / name, "a") as f:
            f.write('{"epoch": 1, "loss": 0.3')
    resumed = ok(run_tool("trainer.py", *args, "runner.model_init_path=out/0", cwd=str(tmp_path)))
    assert f"WARNING - {tmp_path / 'out' / 'train_metrics.jsonl'}:2: not a whole record" in resumed.stdout
    assert [r["epoch"] for r in read_jsonl(tmp_path / "out" / "train_metrics.jsonl")] == [0, 1]
    infer = ok(run_tool("infer.py", *args, "runner.infer_start_epoch=1", "runner.infer_end_epoch=2", cwd=str(tmp_path)))
    assert f"WARNING - {tmp_path / 'out' / 'infer_metrics.jsonl'}:2: not a whole record" in infer.stdout
    assert [r["epoch"] for r in read_jsonl(tmp_path / "out" / "infer_metrics.jsonl")] == [0, 1]


def started(tool, *args, cwd, after=None, env=None):
    """tools/<tool> as started from a terminal (Ctrl-C delivered), once it printed a line containing
    `after`, or (after=None) once it is loading Paddle's library; returns (process, output so far)."""
    process = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "tools", tool), *args], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if after is None:
        while "libpaddle" not in open(f"/proc/{process.pid}/maps").read():
            assert process.poll() is None, process.communicate()
            time.sleep(0.002)
        return process, ""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if after in line:
            return process, "".join(lines)
    raise AssertionError(f"{tool} ended before printing {after!r}:\n{''.join(lines)}{process.communicate()[1]}")


def stopped(process, signum):
    try:
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, out, err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds Paddle's import through /proc/<pid>/maps")
@pytest.mark.parametrize("tool, signum, status, line", [("trainer.py", signal.SIGINT, 130, "interrupted"),
                                                        ("predict.py", signal.SIGTERM, 143, "terminated")])
def test_a_stop_while_paddle_loads_is_one_line(tmp_path, tool, signum, status, line):
    process, _ = started(tool, "-m", CONFIG, "-o", "runner.model_save_path=out", cwd=str(tmp_path))
    assert stopped(process, signum)[::2] == (status, line + "\n")


def test_sigterm_is_one_line_exit_143_and_leaves_whole_epochs_and_no_lock(synthetic, tmp_path):
    process, _ = started("trainer.py", *train_args(synthetic, "runner.epochs=1000", "runner.print_interval=1"),
                         cwd=str(tmp_path), after="saved checkpoint")
    process.stdout.readline()  # into the next epoch
    status, _, err = stopped(process, signal.SIGTERM)
    assert (status, err) == (143, "terminated\n")
    out = tmp_path / "out"
    assert [name for name in os.listdir(out) if name.startswith(".")] == []  # lock released, no temporary
    epochs = sorted(int(name) for name in os.listdir(out) if name.isdigit())
    assert [r["epoch"] for r in read_jsonl(out / "train_metrics.jsonl")] in (epochs, epochs[:-1])


def test_predict_refuses_use_gpu_on_a_cpu_build_in_one_line(synthetic, tmp_path):
    import paddle
    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle build has CUDA: runner.use_gpu is honoured")
    args = train_args(synthetic, "runner.epochs=1", "runner.use_inference=True")
    ok(run_tool("trainer.py", *args, cwd=str(tmp_path)))  # an exported model it could run on the CPU
    result = run_tool("predict.py", *args, "runner.use_gpu=True", cwd=str(tmp_path))
    said = [line for line in result.stdout.splitlines() if "MKL_DEBUG_CPU_TYPE=5" not in line]  # see test_cli
    assert result.returncode == 2 and said == []
    assert result.stderr == f"error: {CONFIG}: runner.use_gpu is True but this Paddle build has no CUDA " \
                            f"(use -o runner.use_gpu=False)\n"
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_predict_on_a_folder_without_samples_is_an_error_and_writes_nothing(synthetic, tmp_path):
    args = train_args(synthetic, "runner.epochs=1", "runner.use_inference=True")
    ok(run_tool("trainer.py", *args, cwd=str(tmp_path)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "part.txt").write_text("")
    result = run_tool("predict.py", *args, f"runner.predict_data_dir={tmp_path / 'empty'}", cwd=str(tmp_path))
    assert result.returncode == 2 and result.stderr == f"error: no samples in {tmp_path / 'empty' / 'part.txt'}\n"
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_the_epoch_line_names_aucs_left_undefined_by_one_class_labels(caplog):
    from rectools import loops
    with caplog.at_level(logging.INFO, logger="rectools"):
        loops.log_record("epoch", {"epoch": 0, "loss": 0.5, "auc_ctr": 0.61, "auc_cvr": float("nan"),
                                   "auc_ctcvr": float("nan"), "ips": 10.0})
        loops.log_record("infer epoch", {"epoch": 1, "loss": 0.5, "auc_ctr": 0.61, "auc_cvr": 0.7})
    first, second = (r.getMessage() for r in caplog.records)
    assert first.endswith("auc_cvr: nan, auc_ctcvr: nan, ips: 10.0 ins/s; auc_cvr, auc_ctcvr undefined: "
                          "their labels hold one class only")
    assert "undefined" not in second


# -- what a user sees: quiet output, early progress, VisualDL curves --------------------------

def test_a_static_run_is_quiet_and_shows_progress_early_with_an_eta(synthetic, tmp_path):
    args = train_args(synthetic, "runner.epochs=2", "runner.train_batch_size=256", "runner.print_interval=1000",
                      "runner.use_inference=True", "runner.infer_batch_size=100")
    train = ok(run_tool("static_trainer.py", *args, cwd=str(tmp_path)))
    assert train.stderr == "" and "not support input out tensor" not in train.stdout
    first, second = [line for line in train.stdout.splitlines() if ", batch_id: " in line]  # 24 batches an epoch
    # the data is cached by the CTR tower's start (or, without it, by epoch 0): the ETA from then on
    assert " - INFO - epoch: 0, batch_id: 10, loss: " in first and re.search(r"ins/s, eta: 0:00:\d\d$", first)
    assert " - INFO - epoch: 1, batch_id: 10, loss: " in second and re.search(r"ins/s, eta: 0:00:\d\d$", second)
    (summary,) = [line.split(" - INFO - ")[1] for line in train.stdout.splitlines() if "epoch: 1 done" in line]
    assert re.fullmatch(r"epoch: 1 done, loss: [\d.]+, auc_ctr: [\d.]+, auc_cvr: [\d.]+, auc_ctcvr: [\d.]+, "
                        r"ips: [\d.]+ ins/s", summary), summary
    predict = ok(run_tool("predict.py", *args, cwd=str(tmp_path)))  # 3000 samples, batches of 100
    assert predict.stderr == ""
    assert [line.split(" - INFO - ")[1].split(", ips:")[0] for line in predict.stdout.splitlines()
            if "batch_id" in line] == ["predict, batch_id: 10, samples: 1000"]


def test_use_visual_writes_loss_and_auc_curves_for_visualdl(synthetic, tmp_path):
    visualdl = pytest.importorskip("visualdl", reason="VisualDL is not installed (pip install -e \".[visual]\")")
    args = train_args(synthetic, "runner.epochs=2", "runner.print_interval=11", "runner.use_visual=True")
    ok(run_tool("trainer.py", *args, cwd=str(tmp_path)))
    ok(run_tool("infer.py", *args, cwd=str(tmp_path)))
    trained = read_jsonl(tmp_path / "out" / "train_metrics.jsonl")
    runs = sorted(os.listdir(tmp_path / "out" / "visualDL_log"))
    assert runs[1] == f"train-{trained[0]['run']}" and runs[0].startswith("infer-")
    curves = {}
    for run in runs:
        (log_file,) = os.listdir(tmp_path / "out" / "visualDL_log" / run)
        reader = visualdl.LogReader(file_path=str(tmp_path / "out" / "visualDL_log" / run / log_file))
        curves[run.split("-")[0]] = {tag: [(p.id, p.value) for p in reader.get_data("scalar", tag)]
                                     for tag in reader.get_tags()["scalar"]}
    train = curves["train"]
    assert {"batch/loss", "batch/ctr_loss", "batch/auc_ctr", "batch/auc_ctcvr", "epoch/loss", "epoch/auc_cvr"} \
        <= set(train)
    # 12 batches an epoch: lines at batches 10 (FIRST_LINE) and 11; steps count the run's batches
    assert [step for step, _ in train["batch/loss"]] == [10, 11, 22, 23]
    for name in ("loss", "auc_ctr"):  # float32 in the log
        assert train[f"epoch/{name}"] == [(r["epoch"], pytest.approx(r[name], rel=1e-6)) for r in trained]
    assert [step for step, _ in curves["infer"]["epoch/auc_ctr"]] == [0, 1]


def test_use_visual_without_visualdl_is_one_line_and_exit_2(synthetic, tmp_path):
    shadow = tmp_path / "shadow" / "visualdl"  # VisualDL as absent as on a machine without it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'visualdl'\")\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "trainer.py"),
                             *train_args(synthetic, "runner.use_visual=True")], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "epoch: 0," not in result.stdout
    assert result.stderr == ('error: runner.use_visual is True but VisualDL is not installed: pip install visualdl '
                             '(or pip install -e ".[visual]"), or set runner.use_visual=False\n')


def test_a_reader_of_stdout_that_goes_away_costs_no_traceback(synthetic, tmp_path):
    child = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG, "-o",
                              *data_overrides(synthetic), f"runner.model_save_path={tmp_path / 'out'}",
                              "runner.epochs=1", "runner.print_interval=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    child.stdout.readline()
    child.stdout.close()  # as `| head -1` does once it has its line
    assert child.wait(timeout=300) == 0
    assert child.stderr.read() == b""
    assert (tmp_path / "out" / "0" / "checkpoint.json").is_file()  # the run went on to the end
