"""The model the bias study measures: ESCM2's model folder, imported by its path as the tools
import a model folder (rectools.model_loader)."""
import os

from rectools.model_loader import import_model_package, model_module

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(REPO, "models", "multitask", "escm2")

_package = import_model_package(MODEL_DIR)
_schema = model_module(_package, "config_schema", "runner.model_dir")
BACKBONES, PROPENSITY_MODES = _schema.BACKBONES, _schema.PROPENSITY_MODES
ctr_cvr_report = model_module(_package, "metrics", "runner.model_dir").ctr_cvr_report  # the protocol the tools report
