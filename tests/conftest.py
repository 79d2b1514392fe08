import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "multitask", "escm2")
SHARED_ALI_CCP = os.path.join(os.path.dirname(REPO), "shared", "data", "ali-ccp", "paddlerec-small")

sys.path.insert(0, REPO)


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


def documented_reference(path):
    """The generated config reference between the markers of a Markdown file."""
    with open(path) as f:
        text = f.read()
    return text.split("<!-- config reference -->\n")[1].split("\n<!-- end config reference -->")[0]
