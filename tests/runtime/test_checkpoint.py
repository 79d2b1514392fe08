import gzip
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import MODEL_DIR, REPO, run_tool, write_lines
from rectools import atomic, checkpoint
from rectools.errors import ConfigError

CONFIG = os.path.join(MODEL_DIR, "config.yaml")


def write_two(folder):
    for name in ("a.bin", "b.bin"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(name)


def test_save_writes_files_and_manifest_into_the_epoch_folder(tmp_path):
    final = checkpoint.save(str(tmp_path), 3, write_two, mode="dygraph")
    assert final == str(tmp_path / "3")
    manifest = checkpoint.manifest(final, "key")
    assert manifest["epoch"] == 3 and manifest["files"] == ["a.bin", "b.bin"] and manifest["mode"] == "dygraph"
    assert os.listdir(tmp_path) == ["3"]  # no temporary left behind


def test_a_failed_save_leaves_nothing_and_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save(str(tmp_path), 0, write_two)

    def dies_halfway(folder):
        with open(os.path.join(folder, "a.bin"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), 0, dies_halfway)
    assert os.listdir(tmp_path) == ["0"]
    assert (tmp_path / "0" / "a.bin").read_text() == "a.bin"
    assert checkpoint.manifest(str(tmp_path / "0"), "key")["epoch"] == 0


def test_saving_an_epoch_again_replaces_it_whole(tmp_path):
    checkpoint.save(str(tmp_path), 1, write_two)
    checkpoint.save(str(tmp_path), 1, lambda folder: open(os.path.join(folder, "c.bin"), "w").close())
    assert sorted(os.listdir(tmp_path / "1")) == ["c.bin", checkpoint.MANIFEST]
    assert os.listdir(tmp_path) == ["1"]


def test_a_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "rec.pdparams").write_text("partial")
    with pytest.raises(ConfigError, match=r"runner.model_init_path: .*2 is not a complete checkpoint"):
        checkpoint.manifest(str(tmp_path / "2"), "runner.model_init_path")
    with pytest.raises(ConfigError, match="checkpoint folder not found"):
        checkpoint.manifest(str(tmp_path / "9"), "runner.model_init_path")


def test_a_checkpoint_missing_a_listed_file_or_with_a_broken_manifest_is_refused(tmp_path):
    folder = checkpoint.save(str(tmp_path), 0, write_two)
    os.remove(os.path.join(folder, "b.bin"))
    with pytest.raises(ConfigError, match="lacks b.bin, which its manifest lists"):
        checkpoint.manifest(folder, "key")
    (tmp_path / "0" / checkpoint.MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a readable manifest"):
        checkpoint.manifest(folder, "key")


def test_atomic_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(target)) as f:
            f.write("partial")
            raise RuntimeError
    assert os.listdir(tmp_path) == []
    with atomic.atomic_file(str(target)) as f:
        f.write("whole")
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["out.csv"]


# -- damaged files -----------------------------------------------------------------------------

def flip_bytes(path, count, seed=0):
    """Invert `count` bytes of a file at random places (what a bad disk or a bad copy does)."""
    data = bytearray(open(path, "rb").read())
    for i in np.random.default_rng(seed).choice(len(data), size=min(count, len(data)), replace=False):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_checkpoint_with_a_damaged_file_is_refused_naming_it(tmp_path):
    def write(folder):
        np.save(os.path.join(folder, "a.npy"), np.arange(1000.0))
        os.mkdir(os.path.join(folder, "inference"))
        with open(os.path.join(folder, "inference", "model.json"), "w") as f:
            f.write("{}")

    folder = checkpoint.save(str(tmp_path), 0, write)
    sums = checkpoint.manifest(folder, "key")["checksums"]
    assert set(sums) == {"a.npy", "inference/model.json"} and sums["inference/model.json"]["bytes"] == 2
    flip_bytes(os.path.join(folder, "a.npy"), 1)
    with pytest.raises(ConfigError) as error:
        checkpoint.manifest(folder, "runner.model_init_path")
    assert str(error.value) == (f"runner.model_init_path: {folder}/a.npy is damaged: its sha256 differs from the "
                                f"one the manifest records")
    flip_bytes(os.path.join(folder, "a.npy"), 1)  # the same byte again: intact
    checkpoint.manifest(folder, "key")
    with open(os.path.join(folder, "inference", "model.json"), "a") as f:
        f.write(" ")
    with pytest.raises(ConfigError, match=r"key: .*/inference/model.json is damaged: 3 bytes where the manifest "
                                          r"records 2"):
        checkpoint.manifest(folder, "key")


def test_a_manifest_written_before_checksums_still_loads(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "rec.pdparams").write_bytes(b"params")
    (tmp_path / "0" / checkpoint.MANIFEST).write_text(
        json.dumps({"epoch": 0, "files": ["rec.pdparams"], "saved_at": 1.0, "mode": "dygraph"}))
    assert checkpoint.manifest(str(tmp_path / "0"), "key")["mode"] == "dygraph"


def small_data(tmp_path, lines=3000):
    """The first lines of the bundled training file, as a data folder."""
    with gzip.open(os.path.join(MODEL_DIR, "data", "train", "part-00000.txt.gz"), "rt") as f:
        head = [line.rstrip("\n") for _, line in zip(range(lines), f)]
    write_lines(str(tmp_path / "data" / "part-0.txt"), head)
    return f"runner.train_data_dir={tmp_path / 'data'}"


def test_infer_refuses_a_trained_checkpoint_with_flipped_bytes(tmp_path):
    args = ["-m", CONFIG, "-o", small_data(tmp_path), f"runner.test_data_dir={tmp_path / 'data'}",
            "runner.model_save_path=out", "runner.epochs=1"]
    trained = run_tool("trainer.py", *args, cwd=str(tmp_path))
    assert trained.returncode == 0, trained.stderr
    flip_bytes(str(tmp_path / "out" / "0" / "rec.pdparams"), 4000)
    result = run_tool("infer.py", *args, cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: runner.infer_load_path: {tmp_path / 'out' / '0' / 'rec.pdparams'} is damaged: its sha256 differs "
        f"from the one the manifest records"]
    assert not (tmp_path / "out" / "infer_metrics.jsonl").exists()


# -- killed runs: what they leave, and what the next start makes of it --------------------------

def killed(code, cwd):
    """Run `code` in a Python process that must end by os._exit(9): like a kill, nothing is cleaned
    up. Returns its (now dead) pid."""
    child = subprocess.Popen([sys.executable, "-c", f"import os, sys\n"
                              f"from rectools import atomic, checkpoint\n{code}\nsys.exit('was not killed')"],
                             cwd=cwd, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 9, err
    return child.pid


DIES_BETWEEN_THE_RENAMES = """
rename = os.rename
def dies_after_moving_the_old_aside(source, target):
    rename(source, target)
    if target.endswith(".old"):
        os._exit(9)
os.rename = dies_after_moving_the_old_aside
def write(folder):
    open(os.path.join(folder, "b.bin"), "w").write("new")
checkpoint.save(".", 0, write)
"""

DIES_WHILE_WRITING = """
def write(folder):
    open(os.path.join(folder, "a.bin"), "w").write("half")
    os._exit(9)
checkpoint.save(".", 7, write)
"""


def hidden(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def test_recover_finishes_a_replace_killed_between_its_renames(tmp_path, caplog):
    checkpoint.save(str(tmp_path), 0, write_two)
    killed(DIES_BETWEEN_THE_RENAMES, tmp_path)
    assert os.listdir(tmp_path) != ["0"] and len(hidden(tmp_path)) == 2  # epoch 0 only in .0.*.old / .new
    with caplog.at_level(logging.INFO, logger="rectools"):
        done = atomic.recover(str(tmp_path))
    assert done["finished"] == ["0"] and done["removed"] == 1
    assert os.listdir(tmp_path) == ["0"]
    assert sorted(os.listdir(tmp_path / "0")) == ["b.bin", checkpoint.MANIFEST]  # the new, complete content
    checkpoint.manifest(str(tmp_path / "0"), "key")
    (line,) = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert line.startswith(f"recovered {tmp_path} after a killed run: finished replacing 0; removed 1 temporaries")


def test_recover_restores_a_moved_aside_folder_whose_replacement_is_gone(tmp_path):
    checkpoint.save(str(tmp_path), 0, write_two)
    killed(DIES_BETWEEN_THE_RENAMES, tmp_path)
    (new,) = [name for name in hidden(tmp_path) if name.endswith(".new")]
    shutil.rmtree(tmp_path / new)
    assert atomic.recover(str(tmp_path))["restored"] == ["0"]
    assert os.listdir(tmp_path) == ["0"] and (tmp_path / "0" / "a.bin").read_text() == "a.bin"


def test_recover_removes_temporaries_of_dead_runs_only(tmp_path):
    killed(DIES_WHILE_WRITING, tmp_path)
    killed("with atomic.atomic_file('predictions.csv') as f:\n    f.write('x')\n    f.flush()\n    os._exit(9)",
           tmp_path)
    assert len(hidden(tmp_path)) == 2
    with atomic.atomic_folder(str(tmp_path / "3")) as live:  # this process's: alive, kept
        done = atomic.recover(str(tmp_path))
        assert hidden(tmp_path) == [os.path.basename(live)]
    assert done == {"finished": [], "restored": [], "removed": 2, "bytes_removed": 5}
    assert os.listdir(tmp_path) == ["3"]
    assert atomic.recover(str(tmp_path))["removed"] == 0


# -- one trainer per model_save_path ----------------------------------------------------------

def start_trainer(*overrides, cwd, after="batch_id: "):
    """tools/trainer.py started as from a terminal (Ctrl-C delivered); returns (process, stdout so
    far) once a line containing `after` was printed."""
    process = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG,
                                "-o", *overrides], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if after in line:
            return process, "".join(lines)
    process.wait()
    raise AssertionError(f"the trainer ended before printing {after!r}:\n{''.join(lines)}{process.stderr.read()}")


def interrupt(process):
    """Ctrl-C; returns (exit status, rest of stdout, stderr)."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_ctrl_c_is_one_line_and_leaves_whole_epochs_only(tmp_path):
    overrides = [small_data(tmp_path), "runner.model_save_path=out", "runner.epochs=100000",
                 "runner.train_batch_size=256", "runner.print_interval=1"]
    process, _ = start_trainer(*overrides, cwd=str(tmp_path), after="saved checkpoint")
    try:
        process.stdout.readline()  # into the next epoch
        status, _, err = interrupt(process)
    finally:
        process.kill()
    assert status == 130 and err == "interrupted\n"
    out = tmp_path / "out"
    assert hidden(out) == []  # no lock, no temporary
    epochs = sorted(int(name) for name in os.listdir(out) if name.isdigit())
    assert epochs and epochs == list(range(len(epochs)))
    for epoch in epochs:
        assert checkpoint.manifest(str(out / str(epoch)), "key")["epoch"] == epoch
    with open(out / "train_metrics.jsonl") as f:
        records = [json.loads(line)["epoch"] for line in f]
    # a record is appended just after its checkpoint is renamed into place: Ctrl-C can fall between
    assert records in (epochs, epochs[:-1])


def test_a_second_trainer_on_the_same_folder_exits_2_naming_the_first(tmp_path):
    overrides = [small_data(tmp_path), "runner.model_save_path=out", "runner.epochs=100000",
                 "runner.print_interval=1"]
    first, _ = start_trainer(*overrides, cwd=str(tmp_path))
    try:
        second = run_tool("trainer.py", "-m", CONFIG, "-o", *overrides, "runner.epochs=1", cwd=str(tmp_path))
        assert interrupt(first)[0] == 130
    finally:
        first.kill()
    assert second.returncode == 2 and "epoch: 0," not in second.stdout
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: runner.model_save_path: {tmp_path / 'out'} is in use by another trainer "
                           f"(pid {first.pid} on {socket.gethostname()}, started ")
    assert hidden(tmp_path / "out") == []


def test_a_trainer_takes_over_what_a_killed_trainer_left(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint.save(str(out), 0, write_two)
    dead = killed(f"checkpoint.claim('.')\n{DIES_BETWEEN_THE_RENAMES}", out)  # holds the lock when killed
    killed(DIES_WHILE_WRITING, out)
    assert len(hidden(out)) == 4 and "0" not in os.listdir(out)  # .lock, .0.*.new, .0.*.old, .7.*.new
    assert json.loads((out / checkpoint.LOCK).read_text())["pid"] == dead
    result = run_tool("trainer.py", "-m", CONFIG, "-o", small_data(tmp_path), "runner.model_save_path=out",
                      "runner.epochs=1", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"took over the lock of {out} left by pid {dead} on {socket.gethostname()}" in result.stdout
    assert f"recovered {out} after a killed run: finished replacing 0; removed 2 temporaries" in result.stdout
    assert hidden(out) == [] and sorted(os.listdir(out)) == ["0", "train_metrics.jsonl"]
    assert checkpoint.manifest(str(out / "0"), "key")["mode"] == "dygraph"  # retrained by this run


def test_save_arrays_writes_what_paddle_load_reads_from_tensors_and_arrays(tmp_path):
    import paddle
    from paddle.base import core
    dense = core.DenseTensor()
    dense.set(np.arange(6, dtype=np.float32).reshape(2, 3), paddle.CPUPlace())
    arrays = {"tensor": paddle.to_tensor(np.array([[1.5, -2.0]], dtype=np.float32)), "dense": dense,
              "array": np.arange(4, dtype=np.int64), "empty": np.zeros((0, 12), dtype=np.float32)}
    path = str(tmp_path / checkpoint.OPT_STATE)
    checkpoint.save_arrays(arrays, path)
    expected = {"tensor": np.array([[1.5, -2.0]], dtype=np.float32), "dense": np.arange(6, dtype=np.float32).reshape(2, 3),
                "array": np.arange(4, dtype=np.int64), "empty": np.zeros((0, 12), dtype=np.float32)}
    for loaded in (checkpoint.load_arrays(path, "key"), {k: v.numpy() for k, v in paddle.load(path).items()}):
        assert loaded.keys() == expected.keys()
        for name, value in expected.items():
            assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name


def test_an_optimizer_state_written_by_save_arrays_restores_adam(tmp_path):
    import paddle
    paddle.seed(0)
    net = paddle.nn.Linear(3, 1)
    adam = paddle.optimizer.Adam(parameters=net.parameters())
    net(paddle.ones([2, 3])).sum().backward()
    adam.step()
    path = str(tmp_path / checkpoint.OPT_STATE)
    checkpoint.save_arrays(adam.state_dict(), path)
    fresh = paddle.optimizer.Adam(parameters=net.parameters())
    fresh.set_state_dict(checkpoint.load_arrays(path, "key"))
    for name, value in adam.state_dict().items():
        assert np.array_equal(np.asarray(fresh.state_dict()[name]), np.asarray(value)), name


@pytest.mark.parametrize("made_by", ["mkdir", "open"])
def test_a_stop_just_after_a_temporary_is_made_leaves_nothing(tmp_path, monkeypatch, made_by):
    real = getattr(os, made_by)

    def make_then_stop(path, *args):
        result = real(path, *args)
        if os.path.basename(str(path)).startswith("."):  # the temporary, not what makedirs checks
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(os, made_by, make_then_stop)
    with pytest.raises(KeyboardInterrupt):
        if made_by == "mkdir":
            with atomic.atomic_folder(str(tmp_path / "out" / "0")):
                pass
        else:
            with atomic.atomic_file(str(tmp_path / "out" / "record.jsonl")) as f:
                f.write("x")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "out") == []
