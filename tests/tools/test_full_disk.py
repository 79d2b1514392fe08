"""A full disk where the tools write is one line naming the folder and its free space, and leaves
nothing half-written: on a real small tmpfs where this process may mount one, and by a simulated
ENOSPC in the trainer's own writes everywhere."""
import errno
import os
import subprocess
import sys

import pytest

from conftest import CONFIG, REPO, data_overrides, write_lines
from rectools import records
from rectools.errors import UserError


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1 MB at tmp_path/small (root with mount(8) only)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_nothing(synthetic, small_disk, tmp_path):
    out = small_disk / "out"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG, "-o",
                             *data_overrides(synthetic), f"runner.model_save_path={out}", "runner.epochs=1",
                             f"runner.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: cannot write the checkpoint of epoch 0 to {out}: No space left on device (")
    assert result.stderr.endswith(" MB free there); nothing of it was kept: make room there and run again\n")
    assert len(result.stderr.splitlines()) == 1
    assert os.listdir(out) == []  # no temporary, no lock, no record


def test_records_on_a_full_disk_are_one_line_and_the_old_file_stays(small_disk):
    path = str(small_disk / "train_metrics.jsonl")
    records.write(path, [{"epoch": 0, "loss": 0.5}])
    with open(small_disk / "filler", "wb", buffering=0) as f:  # the rest of the disk
        with pytest.raises(OSError) as full:
            while True:
                f.write(b"\0" * 4096)
        assert full.value.errno == errno.ENOSPC
    with pytest.raises(UserError) as error:
        records.write(path, [{"epoch": e, "loss": 0.5, "note": "x" * 1000} for e in range(100)])
    assert str(error.value).startswith(f"cannot write train_metrics.jsonl to {small_disk}: No space left on device (0 MB")
    assert [r["epoch"] for r in records.read(path)] == [0]
    assert sorted(os.listdir(small_disk)) == ["filler", "train_metrics.jsonl"]


FULL_AFTER_SOME_BYTES = """
import errno, runpy, sys
from rectools import checkpoint
def full(arrays, path):  # writes part of the file, then meets a full disk
    with open(path, "wb") as f:
        f.write(b"\\0" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device", path)
checkpoint.save_arrays = full
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_simulated_full_disk_in_the_checkpoint_s_files_is_one_line_and_leaves_nothing(synthetic, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", FULL_AFTER_SOME_BYTES, os.path.join(REPO, "tools", "trainer.py"),
                             "-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={out}",
                             "runner.epochs=1", f"runner.cache_dir={tmp_path / 'cache'}"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: cannot write the checkpoint of epoch 0 to {out}: No space left on device (")
    assert len(result.stderr.splitlines()) == 1
    assert os.listdir(out) == []
