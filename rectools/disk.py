"""A full disk as one line: what could not be written, the folder, and the room left there.
Imports nothing above the standard library and rectools.errors."""
import contextlib
import errno
import shutil

from .errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room: the disk, the user's quota, the file size limit


def free_text(folder):
    """'<n> MB free there' for the file system of `folder`, or '' when it cannot be asked."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
    except OSError:
        return ""


@contextlib.contextmanager
def room(folder, what):
    """Turns an OSError of a full disk (FULL) raised inside into one UserError naming `what` (e.g.
    'the checkpoint of epoch 3') and `folder` with its free space; other errors pass unchanged.
    The writers inside (rectools.checkpoint's atomic writes) have removed what they began."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL:
            raise
        free = free_text(folder)
        raise UserError(f"cannot write {what} to {folder}: {e.strerror}{f' ({free})' if free else ''}; nothing of "
                        f"it was kept: make room there and run again") from None
