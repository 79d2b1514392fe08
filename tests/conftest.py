import importlib.util
import itertools
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "multitask", "escm2")
CONFIG = os.path.join(MODEL_DIR, "config.yaml")
GENERATOR = os.path.join(REPO, "datasets", "synthetic", "generate.py")
SHARED_ALI_CCP = os.path.join(os.path.dirname(REPO), "shared", "data", "ali-ccp", "paddlerec-small")


@pytest.fixture
def shared_lines():
    """Real Ali-CCP lines in PaddleRec's format, from ../shared (not part of the repo)."""
    path = os.path.join(SHARED_ALI_CCP, "train.txt")
    if not os.path.isfile(path):
        pytest.skip(f"real Ali-CCP sample lines not found at {path} (../shared is absent)")
    return path


def run_tool(tool, *args, cwd):
    """Run tools/<tool> as a user would, from `cwd`; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-u", os.path.join(REPO, "tools", tool), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def model_config(overrides=(), keys=None):
    """The model's config.yaml, checked, with -o style overrides."""
    from rectools import model_loader
    return model_loader.load(os.path.join(MODEL_DIR, "config.yaml"), list(overrides))[0]


def pairwise_auc(labels, scores):
    """ROC AUC by its definition over every (positive, negative) pair; ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def tool_module(name):
    """tools/<name>.py imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_reference(path):
    """The generated config reference between the markers of a Markdown file."""
    with open(path) as f:
        text = f.read()
    return text.split("<!-- config reference -->\n")[1].split("\n<!-- end config reference -->")[0]


# PaddleRec's own escm2 config.yaml, as its users hold it
PADDLEREC_CONFIG = {
    "runner": {
        "train_data_dir": "data/train", "train_reader_path": "escm_reader", "use_gpu": False, "use_auc": True,
        "auc_num": 2, "train_batch_size": 2, "epochs": 3, "print_interval": 2,
        "model_save_path": "output_model_esmm", "test_data_dir": "data/train", "infer_batch_size": 2,
        "infer_reader_path": "esmm_reader", "infer_load_path": "output_model_esmm", "infer_start_epoch": 0,
        "infer_end_epoch": 3, "counterfact_mode": "DR", "use_inference": False,
        "save_inference_feed_varnames": [f"field_{i}" for i in range(23)],
        "save_inference_fetch_varnames": ["softmax_0.tmp_0", "concat_1.tmp_0"],
    },
    "hyper_parameters": {
        "sparse_feature_number": 737946, "sparse_feature_dim": 12, "num_field": 23,
        "ctr_fc_sizes": [256, 64], "cvr_fc_sizes": [256, 64], "global_w": 1.0, "counterfactual_w": 0.01,
        "feature_size": 276, "expert_num": 8, "gate_num": 3, "expert_size": 16, "tower_size": 8,
        "optimizer": {"class": "adam", "learning_rate": 0.001, "strategy": "async"},
    },
}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small generated data set (datasets/synthetic/generate.py): (folder, its meta.json)."""
    out = tmp_path_factory.mktemp("synthetic") / "data"
    subprocess.run([sys.executable, GENERATOR, "--out", str(out), "--train", "6000", "--test", "3000",
                    "--seed", "3", "--ctr", "0.15", "--cvr", "0.15"], check=True, capture_output=True)
    with open(out / "meta.json") as f:
        meta = json.load(f)
    return out, meta


def data_overrides(synthetic):
    out, meta = synthetic
    return [f"runner.train_data_dir={out / 'train'}", f"runner.test_data_dir={out / 'test'}",
            f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
