"""Outputs that appear whole or not at all, and what a killed run left half-written.

Outputs are written into a hidden temporary beside the target and renamed into place at the end.
Temporaries are named `.<target>.<host>-<pid>-<run>.<kind>` (host: a hash of the host name, run:
random hex): kind `new` is content being written, kind `old` the previous content of a folder moved
aside while it is replaced. The names let `recover` tell, after a run was killed, what each one was.

This module imports nothing of the project: any writer (checkpoints, caches, records, exports,
generated data) uses it without pulling in the rest.
"""
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket

log = logging.getLogger("rectools")

HOST = socket.gethostname()
_HOST_TAG = hashlib.sha1(HOST.encode()).hexdigest()[:8]  # pids are only comparable on one host
_TEMP = re.compile(r"\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<run>[0-9a-f]{8})\.(?P<kind>new|old)")


def _temp_names(final):
    """(new, old): this process's temporaries for `final`, beside it."""
    parent, base = os.path.split(os.path.abspath(final))
    stem = os.path.join(parent, f".{base}.{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}")
    return stem + ".new", stem + ".old"


class PendingFolder:
    """A folder being written in a hidden temporary beside `final` (created here, `.path`):
    commit() puts it in place of `final`, discard() removes it. For a writer whose life is not one
    `with` block (a cache entry written as chunks go by); others use atomic_folder.

    Replacing takes two renames (final -> .old, .new -> final); `recover` finishes the replace of
    a run killed between them, since a .old exists only once the .new is complete. Raises OSError
    when the temporary cannot be created."""

    def __init__(self, final):
        self.final = final
        self.path, self._old = _temp_names(final)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:  # from the mkdir on: a stop landing just after it must not leave the folder behind
            os.mkdir(self.path)  # mode 0777 & ~umask, as readable as any folder its user makes
        except BaseException:
            self.discard()
            raise

    def commit(self):
        """Rename the folder into place; on failure `final` is as it was (the temporary stays for
        discard())."""
        if os.path.exists(self.final):
            os.rename(self.final, self._old)
            try:
                os.rename(self.path, self.final)
            except BaseException:
                os.rename(self._old, self.final)
                raise
            shutil.rmtree(self._old)
        else:
            os.rename(self.path, self.final)

    def discard(self):
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final):
    """Yields a temporary folder (its path); on success it replaces `final`, on failure it
    disappears (PendingFolder)."""
    pending = None
    try:
        pending = PendingFolder(final)
        yield pending.path
        pending.commit()
    except BaseException:
        if pending is not None:
            pending.discard()
        raise


@contextlib.contextmanager
def atomic_file(final, mode="w"):
    """Yields a file open for writing (`mode` "w": text, "wb": bytes; its `.name` is the
    temporary's path); on success it becomes `final`, on failure it disappears."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', not {mode!r}")
    new, _ = _temp_names(final)
    os.makedirs(os.path.dirname(new), exist_ok=True)
    try:  # from the open on, as in PendingFolder
        with open(new, mode.replace("w", "x"), opener=_create) as f:  # exclusive: never another's file
            yield f
        os.replace(new, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        raise


def _create(path, flags):
    return os.open(path, flags, 0o666)  # 0666 & ~umask, as open() makes a file


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _size(path):
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, files in os.walk(path) for name in files)


def recover(root):
    """Finish or clear what runs killed on this host left in `root`; returns what was done.

    For the temporaries of a process that is no longer running (see the module's naming): a `.old`
    whose target is missing means the run died between the two renames of a replace, so its
    `.new` (complete by then) becomes the target, or the `.old` goes back when there is no `.new`;
    every other such temporary is removed. Temporaries of live processes and of other hosts are
    left alone. Logs one line when it did anything."""
    runs = {}
    for name in os.listdir(root):
        match = _TEMP.fullmatch(name)
        if match and match["host"] == _HOST_TAG and not _alive(int(match["pid"])):
            key = (match["target"], match["pid"], match["run"])
            runs.setdefault(key, {})[match["kind"]] = os.path.join(root, name)
    done = {"finished": [], "restored": [], "removed": 0, "bytes_removed": 0}
    for (target, _, _), parts in sorted(runs.items()):
        final = os.path.join(root, target)
        if "old" in parts and not os.path.lexists(final):
            if "new" in parts:
                os.rename(parts.pop("new"), final)
                done["finished"].append(target)
            else:
                os.rename(parts.pop("old"), final)
                done["restored"].append(target)
        for path in parts.values():
            done["bytes_removed"] += _size(path)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            done["removed"] += 1
    if done["finished"] or done["restored"] or done["removed"]:
        what = ([f"finished replacing {', '.join(done['finished'])}"] if done["finished"] else []) + \
               ([f"restored {', '.join(done['restored'])}"] if done["restored"] else []) + \
               ([f"removed {done['removed']} temporaries ({done['bytes_removed'] / 1e6:.1f} MB)"]
                if done["removed"] else [])
        log.info("recovered %s after a killed run: %s", root, "; ".join(what))
    return done
