"""Per-epoch checkpoints under <root>/<epoch>/, and outputs that appear whole or not at all:
files are written into a hidden temporary folder (or file) beside the target and renamed into
place at the end. A checkpoint's manifest is written last; a folder without it, or missing a
file it lists, is never loaded."""
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from .errors import ConfigError

log = logging.getLogger("rectools")

MANIFEST = "checkpoint.json"
PARAMS, OPT_STATE = "rec.pdparams", "rec.pdopt"  # parameters (dygraph names, both modes); optimizer state
INFERENCE_DIR = "inference"  # the exported model inside a checkpoint, with runner.use_inference


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_folder(final):
    """Yields a temporary folder; on success it replaces `final`, on failure it disappears."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the result from other users
        yield tmp
        if os.path.exists(final):
            stale = tempfile.mkdtemp(prefix=".replaced.", dir=parent)
            os.rename(final, os.path.join(stale, "old"))
            os.rename(tmp, final)
            shutil.rmtree(stale)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final):
    """Yields an open text file; on success it becomes `final`, on failure it disappears."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        os.unlink(tmp)
        raise


def save(root, epoch, write_files, **info):
    """`write_files(folder)` writes the checkpoint's files into `folder`."""
    final = os.path.join(root, str(epoch))
    with atomic_folder(final) as tmp:
        write_files(tmp)
        manifest = {"epoch": epoch, "files": sorted(os.listdir(tmp)), "saved_at": time.time(), **info}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
    return final


def manifest(folder, key):
    """The manifest of a complete checkpoint folder, or a ConfigError naming `key`."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}: checkpoint folder not found: {folder}")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {folder} is not a complete checkpoint (no {MANIFEST})")
    try:
        with open(path) as f:
            content = json.load(f)
        missing = [name for name in content["files"] if not os.path.exists(os.path.join(folder, name))]
        content["epoch"] = int(content["epoch"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{key}: {path} is not a readable manifest ({e})") from None
    if missing:
        raise ConfigError(f"{key}: checkpoint {folder} lacks {', '.join(missing)}, which its manifest lists")
    return content


def load_arrays(path, key):
    """A dict saved with paddle.save as {name: ndarray}, whichever graph mode wrote it or reads it;
    a damaged or unreadable file is a ConfigError naming `key`."""
    import paddle
    try:
        return {k: np.array(v) for k, v in paddle.load(path).items()}
    except Exception as e:  # noqa: BLE001  paddle raises several kinds for a damaged file
        raise ConfigError(f"{key}: cannot read {path}: {e}") from None


def check_fits(model_shapes, state, folder, key, hint=()):
    """Refuse parameters `state` ({name: array}) that are not the model's ({name: shape}); `hint`
    names the config keys that decide the model's parameters, for the message."""
    missing = sorted(set(model_shapes) - set(state))
    if missing:
        also = f"; was it trained with other values of {', '.join(hint)}?" if hint else ""
        raise ConfigError(f"{key}: checkpoint {folder} does not fit this model (no {', '.join(missing[:3])}){also}")
    for name, shape in model_shapes.items():
        if list(shape) != list(np.shape(state[name])):
            raise ConfigError(f"{key}: checkpoint {folder} does not fit this model: {name} has shape "
                              f"{list(np.shape(state[name]))}, the model {list(shape)}")


def load_checkpoint(engine, folder, key, with_optimizer):
    """Parameters (and the optimizer state of a checkpoint of the same graph mode) into `engine`
    (rectools.engines); returns the checkpoint's epoch."""
    content = manifest(folder, key)
    engine.set_parameters(load_arrays(os.path.join(folder, PARAMS), key), folder, key)
    if with_optimizer and os.path.isfile(os.path.join(folder, OPT_STATE)):
        if content.get("mode") == engine.mode:
            engine.set_optimizer_state(load_arrays(os.path.join(folder, OPT_STATE), key))
        else:
            log.info("%s was saved in %s mode: its optimizer state does not apply in %s mode and starts afresh",
                     folder, content.get("mode"), engine.mode)
    return content["epoch"]


def write_checkpoint(engine, folder, export=None):
    """The engine's parameters and optimizer state into `folder`; export(params, folder) adds more."""
    import paddle
    params = engine.parameters()
    paddle.save(params, os.path.join(folder, PARAMS))
    paddle.save(engine.optimizer_state(), os.path.join(folder, OPT_STATE))
    if export is not None:
        export(params, folder)


def epoch_folder(root, epoch, key):
    """<root>/<epoch>, a complete checkpoint, or a ConfigError naming `key`."""
    folder = os.path.join(root, str(epoch))
    manifest(folder, key)
    return folder
