import os

import pytest
import yaml

from conftest import MODEL_DIR, PADDLEREC_CONFIG, documented_reference, model_config, run_tool
from rectools import model_loader
from rectools.config import Key, load_config
from rectools.errors import ConfigError


def write_config(tmp_path, tree, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_sections_flatten_to_dotted_keys():
    config = model_config()
    assert config["hyper_parameters.optimizer.learning_rate"] == 0.001
    assert config["runner.counterfact_mode"] == "DR"
    assert config["hyper_parameters.fields"][0] == "101" and len(config["hyper_parameters.fields"]) == 23


def test_paths_are_relative_to_the_config_file():
    config = model_config()
    assert config["runner.train_data_dir"] == os.path.join(MODEL_DIR, "data", "train")


def test_override_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = model_config(["runner.model_save_path=out"])
    assert config["runner.model_save_path"] == str(tmp_path / "out")


def test_overrides_are_typed_by_yaml_and_a_bare_key_works_when_unique():
    config = model_config(["train_batch_size=7", "hyper_parameters.ctr_fc_sizes=[8, 4]", "counterfact_mode=IPW"])
    assert config["runner.train_batch_size"] == 7
    assert config["hyper_parameters.ctr_fc_sizes"] == [8, 4]
    assert config["runner.counterfact_mode"] == "IPW"


def test_field_ids_read_as_written_not_as_yaml_1_1_numbers(tmp_path):
    # YAML 1.1 would read 109_14 as 10914 and 0123 as 83
    config = model_config(["hyper_parameters.fields=[101, 109_14, 0123]"])
    assert config["hyper_parameters.fields"] == ["101", "109_14", "123"]
    path = write_config(tmp_path, {})
    with open(path, "w") as f:
        f.write(f"runner:\n  model_dir: {MODEL_DIR}\nhyper_parameters:\n  sparse_feature_number: 10\n"
                f"  fields: [101, 109_14, 150_14]\n")
    assert model_loader.load(path)[0]["hyper_parameters.fields"] == ["101", "109_14", "150_14"]


def test_an_int_is_accepted_for_a_float_and_becomes_float():
    config = model_config(["hyper_parameters.global_w=1"])
    assert config["hyper_parameters.global_w"] == 1.0 and isinstance(config["hyper_parameters.global_w"], float)


@pytest.mark.parametrize("override, message", [
    ("runner.train_bach_size=3", "unknown key runner.train_bach_size; did you mean runner.train_batch_size?"),
    ("hyper_parameters.optimizer.learning_rat=0.1", "did you mean hyper_parameters.optimizer.learning_rate?"),
    ("runner.train_batch_size=abc", "runner.train_batch_size must be an integer, got 'abc'"),
    ("runner.train_batch_size=0", "runner.train_batch_size must be at least 1"),
    ("runner.use_gpu=maybe", "runner.use_gpu must be true or false"),
    ("hyper_parameters.ctr_fc_sizes=[8, x]", "hyper_parameters.ctr_fc_sizes must be a list of integers"),
    ("runner.counterfact_mode=DRR", "runner.counterfact_mode must be one of ESMM, NAIVE, IPW, DR"),
    ("runner.epochs", "expected key=value"),
    ("=3", "expected key=value"),
    ("hyper_parameters.num_field=22", "num_field is 22 but hyper_parameters.fields lists 23"),
    ("hyper_parameters.feature_size=100", "feature_size is 100 but 23 fields x sparse_feature_dim 12 = 276"),
    ("hyper_parameters.fields=[101, 101]", "distinct field ids"),
    ("hyper_parameters.counterfactual_w=.nan", "hyper_parameters.counterfactual_w must be finite"),
    ("hyper_parameters.propensity_floor=2", "hyper_parameters.propensity_floor must be at most 1.0"),
    ("runner.seed=-5", "runner.seed must be at least 0"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        model_config([override])
    assert message in str(error.value)


def test_an_ambiguous_bare_key_is_refused(tmp_path):
    keys = [Key("a.size", "int", 1, ""), Key("b.size", "int", 1, "")]
    path = write_config(tmp_path, {"a": {"size": 3}})
    assert load_config(path, ["b.size=2"], keys) == {"a.size": 3, "b.size": 2}
    with pytest.raises(ConfigError, match="ambiguous, say one of a.size, b.size"):
        load_config(path, ["size=2"], keys)


def test_unknown_key_in_the_file_names_file_and_key(tmp_path):
    path = write_config(tmp_path, {"runner": {"model_dir": MODEL_DIR, "epoch": 2},
                                   "hyper_parameters": {"sparse_feature_number": 10}})
    with pytest.raises(ConfigError) as error:
        model_loader.load(path)
    assert str(error.value) == f"{path}: unknown key runner.epoch; did you mean runner.epochs?"


def test_missing_required_key(tmp_path):
    path = write_config(tmp_path, {"runner": {"model_dir": MODEL_DIR}})
    with pytest.raises(ConfigError, match="hyper_parameters.sparse_feature_number is required"):
        model_loader.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        model_loader.load(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        model_loader.load(str(tmp_path / "none.yaml"))


def test_command_lines_exit_2_with_one_line_before_any_work(tmp_path):
    result = run_tool("trainer.py", "-m", os.path.join(MODEL_DIR, "config.yaml"), "-o", "runner.epoch=2",
                      f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: -o: unknown key runner.epoch; did you mean runner.epochs?"]
    assert not (tmp_path / "out").exists()


def test_use_gpu_without_cuda_is_a_clear_error(tmp_path):
    import paddle
    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle build has CUDA")
    result = run_tool("trainer.py", "-m", os.path.join(MODEL_DIR, "config.yaml"), "-o", "runner.use_gpu=True",
                      f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode == 2
    assert "runner.use_gpu is True but this Paddle build has no CUDA" in result.stderr


# PaddleRec's own models/multitask/escm2/config.yaml, key for key and value for value.
def test_paddlerec_config_keys_are_all_accepted(tmp_path):
    path = write_config(tmp_path, {**PADDLEREC_CONFIG, "runner": {**PADDLEREC_CONFIG["runner"],
                                                                  "model_dir": MODEL_DIR}})
    config, _ = model_loader.load(path)
    assert config["runner.counterfact_mode"] == "DR"
    assert config["hyper_parameters.counterfactual_w"] == 0.01
    ignored = {k for k, key in config.schema.items() if key.ignored}
    assert {"runner.use_auc", "runner.auc_num", "hyper_parameters.gate_num",
            "hyper_parameters.optimizer.strategy"} <= ignored


def test_the_model_readme_documents_every_key_as_the_schema_says():
    from tools.config_doc import reference
    documented = documented_reference(os.path.join(MODEL_DIR, "readme.md"))
    assert documented == reference(MODEL_DIR), "regenerate with: python tools/config_doc.py models/multitask/escm2"
