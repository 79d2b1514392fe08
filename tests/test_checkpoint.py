import os

import pytest

from rectools import checkpoint
from rectools.errors import ConfigError


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
        with checkpoint.atomic_file(str(target)) as f:
            f.write("partial")
            raise RuntimeError
    assert os.listdir(tmp_path) == []
    with checkpoint.atomic_file(str(target)) as f:
        f.write("whole")
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["out.csv"]
