"""Per-epoch checkpoints under <root>/<epoch>/, and outputs that appear whole or not at all:
files are written into a hidden temporary folder (or file) beside the target and renamed into
place at the end. A checkpoint's manifest is written last; a folder without it, or missing a
file it lists, is never loaded."""
import contextlib
import json
import os
import shutil
import tempfile
import time

from .errors import ConfigError

MANIFEST = "checkpoint.json"


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
