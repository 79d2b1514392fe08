"""Which temporary folders a stopped process left behind: each one holds a lock file that its
process keeps locked (flock) as long as it lives. The kernel drops a process's locks when it ends,
however it ends (kill -9 too), whatever the host or container: a folder whose lock is free and
not new was left by a stopped process. Imports nothing above the standard library."""
import fcntl
import os
import time

LOCK = ".lock"
SETTLE_SECONDS = 60  # a lock file younger than this may be a folder being made: never taken as left


def hold(folder):
    """Lock `folder` for as long as this process lives or until the returned file (open, text) is
    closed. Raises OSError when the lock file cannot be made."""
    lock = open(os.path.join(folder, LOCK), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def abandoned(folder, settle=SETTLE_SECONDS):
    """Whether `folder` was left by a stopped process: its lock file exists, is older than `settle`
    seconds and is free. A folder without a lock file is never taken as abandoned."""
    path = os.path.join(folder, LOCK)
    try:
        if time.time() - os.stat(path).st_mtime < settle:
            return False
        with open(path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when f closes
    except OSError:  # held (its process runs), or no lock file: not ours to remove
        return False
    return True
