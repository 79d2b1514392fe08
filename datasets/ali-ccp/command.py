"""What the commands of this folder share with tools/: INFO logging on stdout, and user errors
(rectools.errors.UserError: bad data with file and line, missing files, no network) printed as
one line on stderr with exit status 2; anything else is a bug and keeps its traceback."""
import logging
import sys

from rectools.errors import UserError


def run(work):
    """Call work() and return the process's exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s", stream=sys.stdout,
                        force=True)
    try:
        work()
    except UserError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
