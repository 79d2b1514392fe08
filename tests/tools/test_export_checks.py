"""Exports that know their model: the vocabulary they were exported for, and their files checked
against their checksums whatever path names them; a damaged or foreign export is one line."""
import json
import os
import shutil

import pytest

from conftest import CONFIG, data_overrides, ok, run_tool
from rectools import serving as rec_serving


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """(folder with a one-epoch checkpoint 0 holding inference/, and an export of it in served/, the
    predict arguments)."""
    folder = tmp_path_factory.mktemp("trained")
    common = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.model_save_path={folder}", "runner.epochs=1"]
    ok(run_tool("trainer.py", *common, "runner.use_inference=True", cwd=str(folder)))
    ok(run_tool("export.py", *common, "runner.export_dir=served", cwd=str(folder)))
    return folder, common


def copy_export(trained, tmp_path, source="served"):
    folder = tmp_path / "export"
    shutil.copytree(trained[0] / source, folder)
    return folder


def predict(trained, tmp_path, model_dir, *overrides):
    """tools/predict.py on `model_dir`: (status, stderr, whether it wrote its output)."""
    output = tmp_path / "scores.csv"
    result = run_tool("predict.py", *trained[1], f"runner.inference_model_dir={model_dir}",
                      f"runner.predict_output={output}", *overrides, cwd=str(tmp_path))
    return result.returncode, result.stderr, output.exists()


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_a_config_with_another_vocabulary_than_the_export_s_is_refused_and_nothing_is_written(
        trained, synthetic, tmp_path):
    vocab = synthetic[1]["sparse_feature_number"]
    status, err, wrote = predict(trained, tmp_path, trained[0] / "served",
                                 f"hyper_parameters.sparse_feature_number={vocab + 1000}")
    assert (status, wrote) == (2, False)
    assert err == (f"error: runner.inference_model_dir: {trained[0] / 'served'} was exported for "
                   f"sparse_feature_number={vocab}, but the config gives sparse_feature_number={vocab + 1000}\n")
    assert predict(trained, tmp_path, trained[0] / "served")[::2] == (0, True)  # the export's own vocabulary


@pytest.mark.parametrize("source", ["served", "0/inference"])  # tools/export.py's, and the checkpoint's
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_parameter_file_is_refused_whatever_path_names_the_folder(trained, tmp_path, source, damage):
    folder = copy_export(trained, tmp_path, source)
    params = folder / "model.pdiparams"
    size = os.path.getsize(params)
    if damage == "flipped":
        flip(params, size // 2)
    else:
        os.truncate(params, size // 2)
    status, err, wrote = predict(trained, tmp_path, folder)
    assert (status, wrote) == (2, False)
    reason = ("its sha256 differs from the one the manifest records" if damage == "flipped"
              else f"{size // 2} bytes where the manifest records {size}")
    assert err == f"error: runner.inference_model_dir: {params} is damaged: {reason}\n"


def test_an_export_inside_a_checkpoint_named_directly_is_checked_by_the_checkpoint_s_manifest_when_it_has_no_own(
        trained, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(trained[0] / "0", checkpoint)
    os.unlink(checkpoint / "inference" / rec_serving.CHECKSUMS)  # as an older version wrote it
    manifest = json.loads((checkpoint / "checkpoint.json").read_text())
    del manifest["checksums"]["inference/" + rec_serving.CHECKSUMS]
    (checkpoint / "checkpoint.json").write_text(json.dumps(manifest))
    flip(checkpoint / "inference" / "model.pdiparams", 100)
    status, err, wrote = predict(trained, tmp_path, checkpoint / "inference")
    assert (status, wrote) == (2, False)
    assert err == (f"error: runner.inference_model_dir: {checkpoint / 'inference' / 'model.pdiparams'} is damaged: "
                   f"its sha256 differs from the one the manifest records\n")


@pytest.mark.parametrize("damage", ["garbage model.json", "truncated model.json", "truncated model.pdiparams"])
def test_a_foreign_export_paddle_cannot_load_is_one_line(trained, tmp_path, damage):
    folder = copy_export(trained, tmp_path)
    os.unlink(folder / rec_serving.CHECKSUMS)  # not one of ours: nothing to check it against
    name = damage.split()[-1]
    if damage.startswith("garbage"):
        (folder / name).write_text("garbage\n")
    else:
        os.truncate(folder / name, os.path.getsize(folder / name) // 3)
    status, err, wrote = predict(trained, tmp_path, folder)
    assert (status, wrote) == (2, False)
    assert err.startswith(f"error: runner.inference_model_dir: {folder} is not an exported model Paddle can load (")
    assert err.endswith("); export it again with tools/export.py\n") and len(err.splitlines()) == 1


def test_unreadable_checksums_or_signature_are_one_line(trained, tmp_path):
    folder = copy_export(trained, tmp_path)
    (folder / rec_serving.CHECKSUMS).write_text("{")
    status, err, _ = predict(trained, tmp_path, folder)
    assert status == 2 and err.startswith(f"error: runner.inference_model_dir: {folder / rec_serving.CHECKSUMS} "
                                          f"is not readable (") and len(err.splitlines()) == 1
