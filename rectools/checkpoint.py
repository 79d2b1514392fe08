"""Per-epoch checkpoints under <root>/<epoch>/ and one trainer per output folder.

A checkpoint folder is written whole or not at all (rectools.atomic). A checkpoint's manifest (checkpoint.json) is written last and records the size and sha256 of every
file; a folder without it, missing a file it lists, or holding a file that differs from it is never
loaded. `claim` makes a process the only trainer of a folder (a `.lock` file it holds with flock).
"""
import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import time

import numpy as np

from . import disk
from .atomic import HOST, _alive, atomic_folder, recover
from .errors import ConfigError

log = logging.getLogger("rectools")

MANIFEST = "checkpoint.json"
PARAMS, OPT_STATE = "rec.pdparams", "rec.pdopt"  # parameters (dygraph names, both modes); optimizer state
INFERENCE_DIR = "inference"  # the exported model inside a checkpoint, with runner.use_inference
LOCK = ".lock"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder):
    """{path relative to folder, '/'-separated: {"bytes": size, "sha256": hex digest}} of every file under it."""
    sums = {}
    for parent, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            path = os.path.join(parent, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            sums[relative] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    return sums


def save(root, epoch, write_files, **info):
    """`write_files(folder)` writes the checkpoint's files into `folder`; returns <root>/<epoch>.

    The manifest lists the top-level entries (`files`) and the size and sha256 of every file under
    the folder (`checksums`), plus `epoch`, `saved_at` (Unix seconds) and `info`."""
    final = os.path.join(root, str(epoch))
    with disk.room(root, f"the checkpoint of epoch {epoch}"), atomic_folder(final) as tmp:
        write_files(tmp)
        manifest = {"epoch": epoch, "files": sorted(os.listdir(tmp)), "checksums": _checksums(tmp),
                    "saved_at": time.time(), **info}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
    return final


def manifest(folder, key):
    """The manifest of a complete, intact checkpoint folder, or a ConfigError naming `key`.

    Every file the manifest lists must exist, and every file it has a checksum of must have the
    recorded size and sha256 (manifests written before checksums were recorded have none)."""
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
        sums = [(name, int(s["bytes"]), str(s["sha256"])) for name, s in content.get("checksums", {}).items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{key}: {path} is not a readable manifest ({e})") from None
    if missing:
        raise ConfigError(f"{key}: checkpoint {folder} lacks {', '.join(missing)}, which its manifest lists")
    verify(folder, sums, key, "checkpoint")
    return content


def verify(folder, sums, key, what):
    """Check the files of `folder` against `sums` [(path relative to folder, bytes, sha256 hex)];
    a ConfigError naming `key` for the first missing file or the first whose size or sha256
    differs. `what` names the folder's kind in the message (checkpoint, exported model)."""
    missing = [name for name, _, _ in sums if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ConfigError(f"{key}: {what} {folder} lacks {', '.join(missing)}, which its manifest lists")
    for name, size, sha256 in sums:
        file = os.path.join(folder, name)
        if os.path.getsize(file) != size:
            raise ConfigError(f"{key}: {file} is damaged: {os.path.getsize(file)} bytes where the manifest "
                              f"records {size}")
        if _sha256(file) != sha256:
            raise ConfigError(f"{key}: {file} is damaged: its sha256 differs from the one the manifest records")


def load_arrays(path, key):
    """A dict of arrays written by save_arrays (or paddle.save) as {name: ndarray}, whichever graph
    mode wrote it or reads it; a damaged or unreadable file is a ConfigError naming `key`."""
    import paddle
    try:
        return {k: np.asarray(v) for k, v in paddle.load(path, return_numpy=True).items()}
    except Exception as e:  # noqa: BLE001  paddle raises several kinds for a damaged file
        raise ConfigError(f"{key}: cannot read {path}: {e}") from None


class _ArrayPickler(pickle.Pickler):
    """Turns a Paddle tensor into an ndarray only when its turn to be written comes; with pickle
    protocol 5 an array's bytes go to the file without another copy in memory."""

    def reducer_override(self, obj):
        if hasattr(obj, "__array__") and not isinstance(obj, np.ndarray):  # paddle.Tensor, DenseTensor
            return np.array(obj).__reduce_ex__(5)
        return NotImplemented


def save_arrays(arrays, path):
    """Write {name: ndarray or Paddle tensor} to `path` as a pickle that paddle.load reads (the
    layout paddle.save gives a state dict). Memory: one tensor's copy at a time, where paddle.save
    copies every tensor to numpy first and then each array's bytes once more."""
    with open(path, "wb") as f:
        _ArrayPickler(f, protocol=5).dump(dict(arrays))


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


def load_checkpoint(engine, folder, key, with_optimizer, layout=None):
    """Parameters (and the optimizer state of a checkpoint of the same graph mode) into `engine`
    (rectools.engines); returns the checkpoint's epoch. `layout`: the reader's id layout of the
    data (rectools.contract.Reader.layout); a ConfigError when the checkpoint recorded another."""
    content = manifest(folder, key)
    check_layout(content.get("layout"), layout, folder, key)
    engine.set_parameters(load_arrays(os.path.join(folder, PARAMS), key), folder, key)
    if with_optimizer and os.path.isfile(os.path.join(folder, OPT_STATE)):
        if content.get("mode") == engine.mode:
            engine.set_optimizer_state(load_arrays(os.path.join(folder, OPT_STATE), key))
        else:
            log.info("%s was saved in %s mode: its optimizer state does not apply in %s mode and starts afresh",
                     folder, content.get("mode"), engine.mode)
    return content["epoch"]


def check_layout(saved, layout, folder, key):
    """A ConfigError naming `key` when the reader's id layout a model was trained with (`saved`,
    recorded with its checkpoint or export) differs from the data's (`layout`,
    rectools.contract.Reader.layout); nothing when either is None."""
    if layout is None or saved is None or saved == layout:
        return
    differ = sorted(k for k in set(saved) | set(layout) if saved.get(k) != layout.get(k))

    def brief(values):
        return ", ".join(f"{k}={json.dumps(values.get(k))[:300]}" for k in differ)
    raise ConfigError(f"{key}: {folder} was trained with the reader's id layout {brief(saved)}, but the data now "
                      f"gives {brief(layout)} (did the training files change?): its ids would reach other embedding "
                      f"rows; train again, or use the training files it was trained on")


def write_checkpoint(engine, folder, export=None):
    """The engine's parameters and optimizer state into `folder`; export(params, folder) adds more.
    The parameters' copy is let go before the optimizer state (twice their size) is written."""
    params = engine.parameters()
    save_arrays(params, os.path.join(folder, PARAMS))
    if export is not None:
        export(params, folder)
    del params
    save_arrays(engine.optimizer_state(), os.path.join(folder, OPT_STATE))


def epoch_folder(root, epoch, key):
    """<root>/<epoch>, a complete checkpoint, or a ConfigError naming `key`."""
    folder = os.path.join(root, str(epoch))
    manifest(folder, key)
    return folder


# -- one trainer per folder, and what a killed one left ----------------------------------------

_claimed = {}  # real path of a folder -> (lock fd, lock path, pid that claimed it)


def claim(root):
    """Make this process the only trainer writing into `root` until it exits (or `release(root)`),
    then `recover(root)`. Claiming a folder this process holds already does nothing.

    The lock is `<root>/.lock`, held with flock, so a killed process's lock is free at once: its
    file (pid, host, start) is taken over with a log line. Raises ConfigError
    (runner.model_save_path) naming the pid and host of a live holder."""
    real = os.path.realpath(root)
    if real in _claimed and _claimed[real][2] == os.getpid():
        return
    path = os.path.join(real, LOCK)
    fd, previous = _lock(path, root)
    _claimed[real] = (fd, path, os.getpid())
    if previous is not None:
        log.info("took over the lock of %s left by %s, which is no longer running", root, _holder_text(previous))
    recover(real)


def release(root):
    """Give up a folder this process claimed (at exit this happens by itself)."""
    fd, path, pid = _claimed.pop(os.path.realpath(root), (None, None, None))
    if fd is None or pid != os.getpid():  # a forked child does not own its parent's lock
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still holding it: a process waiting on this file then retries
    os.close(fd)


@atexit.register
def _release_all():
    for real in list(_claimed):
        release(real)


def _forget_in_child():
    """In a forked child (a parse worker...): close the lock files' descriptors. The lock stays
    with the parent's descriptor; a child that outlived a killed parent would otherwise keep the
    folder locked for as long as it ran."""
    for fd, _, _ in _claimed.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _claimed.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _lock(path, root):
    """(fd holding the flock of `path`, the previous holder's record or None)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"runner.model_save_path: cannot create the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, wait=1.0)
            if _orphaned(holder):
                if _unlink_orphaned(path, fd):
                    log.info("%s: the lock of %s, which is no longer running, was still held by processes it "
                             "left behind; taking it over", root, _holder_text(holder))
                os.close(fd)
                continue
            os.close(fd)
            raise ConfigError(f"runner.model_save_path: {root} is in use by another trainer "
                              f"({_holder_text(holder)}); wait for it to end or choose another "
                              f"model_save_path") from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder removed the file between our open and flock: lock the new one
    previous = _read_holder(fd)
    record = {"pid": os.getpid(), "host": HOST, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return fd, previous


def _orphaned(holder):
    """Whether a lock file's record names a process of this host that no longer runs: its lock
    is then held only by processes it left behind (children that inherited the descriptor)."""
    try:
        return bool(holder) and holder.get("host") == HOST and not _alive(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):
        return False


def _unlink_orphaned(path, fd):
    """Remove the lock file `path` when it is still the file open as `fd` (whose holder is gone),
    so that the next open makes a fresh one; returns whether it did (False: another process
    replaced it meanwhile). Two processes taking over at once are serialised by a flock of the
    folder itself: the second finds the file replaced and competes for the new one as usual."""
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                return False
        except FileNotFoundError:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(folder)  # releases the folder's flock


def _read_holder(fd, wait=0.0):
    """The record in a lock file, {} if unreadable, None if empty: a holder writes it just after
    taking the lock, so an empty file is read again for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    text = os.pread(fd, 4096, 0)
    while not text and time.monotonic() < deadline:
        time.sleep(0.05)
        text = os.pread(fd, 4096, 0)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _holder_text(holder):
    if holder is None:
        return "a process that has not written its pid yet"
    if not holder:
        return "pid unknown: the lock file is not readable"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('since')}"
