import os

import pytest
import yaml

from conftest import MODEL_DIR, PADDLEREC_CONFIG, documented_reference, model_config, run_tool, tool_module
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
    assert config["runner.counterfact_mode"] == "IPW"
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
    # scientific notation is a number (test_scientific_notation_...), but an integer only when whole
    ("runner.epochs=1e-3", "runner.epochs must be an integer, got '1e-3'"),
    ("runner.epochs=2.5e0", "runner.epochs must be an integer, got '2.5e0'"),
    ("runner.epochs=2.5", "runner.epochs must be an integer, got 2.5"),
    ("hyper_parameters.ctr_fc_sizes=[64, 1.5e0]", "hyper_parameters.ctr_fc_sizes must be a list of integers"),
    ("hyper_parameters.global_w=1e999", "hyper_parameters.global_w must be finite"),
    ("hyper_parameters.global_w=1e", "hyper_parameters.global_w must be a number, got '1e'"),
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
    assert str(error.value) == f"{path}:4: unknown key runner.epoch; did you mean runner.epochs?"


def test_missing_required_key(tmp_path):
    path = write_config(tmp_path, {"runner": {"model_dir": MODEL_DIR}})
    with pytest.raises(ConfigError, match="hyper_parameters.sparse_feature_number is required"):
        model_loader.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runner:\n  epochs: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        model_loader.load(str(bad))
    assert str(error.value).startswith(f"{bad}:3: not valid YAML: ") and "\n" not in str(error.value)
    bad.write_bytes(b"runner:\n  epochs: \xff\n")
    with pytest.raises(ConfigError, match=f"^{bad}:2: not UTF-8 text"):
        model_loader.load(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        model_loader.load(str(tmp_path / "none.yaml"))


def test_scientific_notation_is_a_number_where_a_number_is_expected(tmp_path):
    # YAML 1.1 reads 1e-3 and 1e3 as strings (its floats need a dot and a signed exponent)
    path = tmp_path / "config.yaml"
    path.write_text(f"runner:\n  model_dir: {MODEL_DIR}\n  train_batch_size: 1e3\nhyper_parameters:\n"
                    f"  sparse_feature_number: 5e4\n  optimizer:\n    learning_rate: 1e-3\n")
    config = model_loader.load(str(path))[0]
    assert config["hyper_parameters.optimizer.learning_rate"] == 0.001
    assert config["runner.train_batch_size"] == 1000 and type(config["runner.train_batch_size"]) is int
    assert config["hyper_parameters.sparse_feature_number"] == 50000
    config = model_config(["hyper_parameters.optimizer.learning_rate=1e-3", "propensity_floor=2.5E-2",
                           "runner.epochs=2E0", "hyper_parameters.ctr_fc_sizes=[1e2, 64]", "runner.seed=2.0"])
    assert config["hyper_parameters.optimizer.learning_rate"] == 0.001
    assert config["hyper_parameters.propensity_floor"] == 0.025
    assert config["runner.epochs"] == 2 and config["hyper_parameters.ctr_fc_sizes"] == [100, 64]
    assert config["runner.seed"] == 2 and type(config["runner.seed"]) is int
    # a string key keeps what looks like a number as written; field ids stay as written
    assert model_config(["hyper_parameters.fields=[101, 1e3, 109_14]", "num_field=3"])[
        "hyper_parameters.fields"] == ["101", "1e3", "109_14"]
    with pytest.raises(ConfigError, match="runner.counterfact_mode must be one of .*, got '1e3'"):
        model_config(["runner.counterfact_mode=1e3"])


@pytest.mark.parametrize("text, line, key, first", [
    ("runner:\n  epochs: 2\n  epochs: 3\n", 3, "runner.epochs", 2),
    ("runner:\n  epochs: 2\nhyper_parameters:\n  max_len: 3\nrunner:\n  seed: 1\n", 5, "runner", 1),
    ("runner:\n  epochs: 2\nrunner.epochs: 3\n", 3, "runner.epochs", 2),
    ("hyper_parameters:\n  optimizer:\n    learning_rate: 0.1\n    learning_rate: 0.2\n", 4,
     "hyper_parameters.optimizer.learning_rate", 3),
])
def test_a_key_written_twice_is_refused_naming_key_file_and_line(tmp_path, text, line, key, first):
    path = tmp_path / "config.yaml"
    path.write_text(f"hyper_parameters.sparse_feature_number: 10\n{text}")
    with pytest.raises(ConfigError) as error:
        model_loader.load(str(path), [f"runner.model_dir={MODEL_DIR}"])
    assert str(error.value) == f"{path}:{line + 1}: duplicate key {key} (first set at line {first + 1})"


def test_an_empty_config_file_says_so(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# every key commented out\n")
    result = run_tool("trainer.py", "-m", str(path), cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: the config file is empty; expected sections such as runner: and hyper_parameters:"]


def test_a_section_given_a_value_is_named_as_a_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("hyper_parameters:\n  sparse_feature_number: 10\nrunner: [1, 2]\n")
    with pytest.raises(ConfigError) as error:
        model_loader.load(str(path), [f"runner.model_dir={MODEL_DIR}"])
    assert str(error.value) == (f"{path}:3: runner must be a section (a mapping of keys such as model_dir), "
                                f"got [1, 2]")
    path.write_text("hyper_parameters:\n  sparse_feature_number: 10\n  optimizer: adam\nrunner:\n")
    with pytest.raises(ConfigError, match=r":3: hyper_parameters.optimizer must be a section .* got 'adam'"):
        model_loader.load(str(path), [f"runner.model_dir={MODEL_DIR}"])
    with pytest.raises(ConfigError, match="^-o: runner must be a section"):
        model_config(["runner=[1, 2]"])
    path.write_text("hyper_parameters:\n  sparse_feature_number: 10\nrunner:  # all commented out\n")
    assert model_loader.load(str(path), [f"runner.model_dir={MODEL_DIR}"])[0]["runner.epochs"] == 1


def test_config_doc_gives_usage_and_one_line_errors(tmp_path):
    result = run_tool("config_doc.py", "--help", cwd=str(tmp_path))
    assert result.returncode == 0 and result.stdout.startswith("usage: config_doc.py") and "--bias-study" in result.stdout
    result = run_tool("config_doc.py", cwd=str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: config_doc.py") and "Traceback" not in result.stderr
    result = run_tool("config_doc.py", "nowhere", cwd=str(tmp_path))
    assert (result.returncode, result.stderr) == (2, "error: model folder not found: nowhere\n")
    result = run_tool("config_doc.py", str(tmp_path), cwd=str(tmp_path))
    assert (result.returncode, result.stderr) == (2, f"error: {tmp_path} is not a model folder: it has no "
                                                     f"config_schema.py\n")
    result = run_tool("config_doc.py", MODEL_DIR, cwd=str(tmp_path))
    assert result.returncode == 0 and "| `runner.epochs` | int | 1 |" in result.stdout


def test_config_doc_into_a_closed_pipe_is_no_traceback(tmp_path):
    import subprocess
    import sys
    from conftest import REPO
    child = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "config_doc.py"), MODEL_DIR],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # as `| head -1` does once it has its line
    assert child.wait(timeout=60) == 1
    assert child.stderr.read() == b""


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
    reference = tool_module("config_doc").reference
    documented = documented_reference(os.path.join(MODEL_DIR, "readme.md"))
    assert documented == reference(MODEL_DIR), "regenerate with: python tools/config_doc.py models/multitask/escm2"


def test_a_paddlerec_reader_name_the_folder_lacks_names_the_readers_it_has():
    from rectools import model_loader
    package = model_loader.import_model_package(MODEL_DIR)
    with pytest.raises(ConfigError, match=r"runner.infer_reader_path: no module esmm_reader.py in the model folder .*; "
                                          r"its readers: csv_reader, escm_reader \(choose one with -o "
                                          r"runner.infer_reader_path=<reader>\)"):
        model_loader.model_module(package, "esmm_reader", "runner.infer_reader_path")


def test_config_csv_carries_the_current_defaults_of_the_correction():
    from rectools import model_loader
    csv, _ = model_loader.load(os.path.join(MODEL_DIR, "config_csv.yaml"))
    schema = csv.schema
    for key in ("runner.counterfact_mode", "hyper_parameters.ipw_normalization", "hyper_parameters.propensity_floor",
                "hyper_parameters.interaction"):
        assert csv[key] == schema[key].default, key
