"""Per-epoch checkpoints under <root>/<epoch>/, written atomically: files go to a hidden temporary
folder, a manifest is written last, and the folder is renamed into place. A folder without the
manifest (a killed run) is never loaded."""
import json
import os
import shutil
import tempfile
import time

from .errors import ConfigError

MANIFEST = "checkpoint.json"


def save(root, epoch, write_files, **info):
    """`write_files(folder)` writes the checkpoint's files into `folder`."""
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{epoch}.", suffix=".tmp", dir=root)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide checkpoints from other users
        write_files(tmp)
        manifest = {"epoch": epoch, "files": sorted(os.listdir(tmp)), "saved_at": time.time(), **info}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(root, str(epoch))
        replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def replace(ready, final):
    """Move the finished folder `ready` to `final`, replacing what was there."""
    if os.path.exists(final):
        stale = tempfile.mkdtemp(prefix=".replaced.", dir=os.path.dirname(os.path.abspath(final)))
        os.rename(final, os.path.join(stale, "old"))
        os.rename(ready, final)
        shutil.rmtree(stale)
    else:
        os.rename(ready, final)


def manifest(folder, key):
    """The manifest of a complete checkpoint folder, or a ConfigError naming `key`."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}: checkpoint folder not found: {folder}")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {folder} is not a complete checkpoint (no {MANIFEST})")
    with open(path) as f:
        return json.load(f)
