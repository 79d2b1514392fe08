"""Sizes no machine here can hold are refused when the config is read: one line naming the key and
the memory it would take, before Paddle loads and before anything is written."""
import os

import pytest

from conftest import CONFIG, MODEL_DIR, model_config, run_tool
from rectools import limits
from rectools.model_loader import import_model_package, model_module
from rectools.errors import ConfigError


@pytest.mark.parametrize("override, line", [
    ("hyper_parameters.sparse_feature_number=2147483648",
     "hyper_parameters.sparse_feature_number is 2147483648, beyond 2^31 - 1 = 2147483647, the largest vocabulary "
     "supported (int32 ids)"),
    ("hyper_parameters.sparse_feature_number=100000000000",
     "hyper_parameters.sparse_feature_number is 100000000000, beyond 2^31 - 1"),
    ("hyper_parameters.sparse_feature_dim=100000000",
     "hyper_parameters.sparse_feature_number x sparse_feature_dim: 6,443 GB of memory needed (the embedding table, "
     "5369 x sparse_feature_dim 100000000 x 4 bytes, x 3 with Adam's moments), more than the "),
    ("hyper_parameters.max_len=100000000",
     "hyper_parameters.max_len: 131,891 GB of memory needed (a batch's ids and their embeddings, 1024 x 23 fields x "
     "100000000 x (8 + 12 x 4) bytes), more than the "),
    ("hyper_parameters.ctr_fc_sizes=[1000000000]",
     "hyper_parameters.ctr_fc_sizes: 3,324 GB of memory needed (the tower's 277000000000 weights x 4 bytes x 3 with "
     "Adam's moments), more than the "),
])
def test_a_size_beyond_memory_is_one_line_naming_the_key_before_anything_is_written(tmp_path, override, line):
    result = run_tool("trainer.py", "-m", CONFIG, "-o", "runner.model_save_path=out", override, cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {CONFIG}: {line}") and len(result.stderr.splitlines()) == 1
    assert result.stdout == "" and not os.path.exists(tmp_path / "out")


def test_the_sample_s_config_fits_and_a_need_is_compared_with_what_is_available():
    config = model_config()
    needs = model_module(import_model_package(MODEL_DIR), "memory", "test").needs(config)
    assert [key for key, _, _ in needs] == ["hyper_parameters.sparse_feature_number x sparse_feature_dim",
                                            "hyper_parameters.max_len", "hyper_parameters.ctr_fc_sizes",
                                            "hyper_parameters.cvr_fc_sizes"]
    assert needs[0][1] == 5369 * 12 * 4 * 3
    largest = max(size for _, size, _ in needs)
    limits.check_memory(config, needs, available=largest)
    with pytest.raises(ConfigError, match=r"more than the 1e-09 GB available"):
        limits.check_memory(config, needs, available=1)


def test_available_memory_is_the_lower_of_the_kernel_s_and_the_container_s(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    cgroup = tmp_path / "memory.max"
    cgroup.write_text("8000000000\n")
    assert limits.available_memory(str(meminfo), str(cgroup)) == 8000000000
    cgroup.write_text("max\n")  # no container limit
    assert limits.available_memory(str(meminfo), str(cgroup)) == 20000000 * 1024
