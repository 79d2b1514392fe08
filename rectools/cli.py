"""What every command line shares: PaddleRec's flags (-m CONFIG, -o key=value ...), logging, user
errors printed as one line with exit status 2, Ctrl-C as one line with exit status 130 and SIGTERM as
one line with exit status 143.

This module imports nothing heavy: a command imports Paddle (through loops, serving, ...) inside
its frame, so a Ctrl-C or SIGTERM while Paddle loads is the same one line as later on.
"""
import argparse
import logging
import os
import signal
import sys

from .errors import UserError

INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C
TERMINATED = 143  # 128 + SIGTERM

# Paddle's C++ log lines (glog) carry nothing for a user of these commands: INFO lines about its
# executor, and WARNINGs such as "Paddle static graph(PIR) not support input out tensor for now"
# printed by every static program build. glog reads this when Paddle's library loads, so it is set
# before Paddle is imported; a user who wants the lines back sets GLOG_minloglevel=0.
GLOG_LEVEL = "2"  # ERROR and above


class Terminated(BaseException):
    """SIGTERM in the main thread, raised where the program is, as KeyboardInterrupt is for SIGINT,
    so that what is being written is removed and the output folder's lock is released."""


_main_pid = None  # the process that installed the SIGTERM handler


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != _main_pid:  # a forked worker (rectools.data.process_map) ends as it would have
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def handle_sigterm():
    """Make SIGTERM raise Terminated in this process (main thread only; idempotent)."""
    global _main_pid
    _main_pid = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-m", "--config_yaml", required=True, help="the model's config.yaml")
    parser.add_argument("-o", "--opt", nargs="*", default=[], action="extend",
                        help="overrides: key=value, e.g. -o runner.epochs=2 hyper_parameters.max_len=5")
    return parser.parse_args(argv)


def _stop(line, status):
    sys.stdout.flush()
    print(line, file=sys.stderr)
    sys.exit(status)


def one_line_errors(call, *args):
    """call(*args); a UserError becomes one line on stderr and its exit status (2), Ctrl-C the line
    "interrupted" and status 130, SIGTERM (with handle_sigterm) the line "terminated" and status
    143, a closed stdout status 1. Outputs are atomic (rectools.checkpoint, rectools.records), so a
    stopped run leaves the checkpoints and records of the epochs it finished, and nothing
    half-written; sys.exit runs the exit handlers, which release the output folder's lock."""
    try:
        return call(*args)
    except UserError as e:
        _stop(f"error: {e}", e.exit_code)
    except KeyboardInterrupt:
        _stop("interrupted", INTERRUPTED)
    except Terminated:
        _stop("terminated", TERMINATED)
    except BrokenPipeError:  # the reader of stdout went away (| head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


class _StdoutHandler(logging.StreamHandler):
    """Log lines on stdout; when its reader goes away (`| head`), the run goes on without them
    instead of printing a traceback on stderr for every line."""

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        super().handleError(record)


def run_command(call, *args):
    """A command's frame: Paddle's C++ log lines off (GLOG_LEVEL, unless GLOG_minloglevel is set),
    every log line and Python warning on stdout in one format, SIGTERM handled, then call(*args)
    with one_line_errors. Stderr is left to the one line of an error."""
    os.environ.setdefault("GLOG_minloglevel", GLOG_LEVEL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s",
                        handlers=[_StdoutHandler(sys.stdout)], force=True)  # whatever configured logging before, these lines win
    logging.captureWarnings(True)
    handle_sigterm()
    return one_line_errors(call, *args)


def load_paddle():
    """Import Paddle with SIGINT and SIGTERM held. Paddle turns a KeyboardInterrupt raised while its
    C++ library initialises into an ImportError, after a line of its own on stderr; held, the signal
    arrives as soon as the import is done (a second or two), as a Ctrl-C or SIGTERM anywhere else.
    Paddle's import also installs a C++ SIGTERM handler (a crash report, then death): the one of
    handle_sigterm, when installed, is put back before the signals are let through."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import paddle  # noqa: F401
        if _main_pid == os.getpid():
            handle_sigterm()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _after_paddle(main, *args):
    load_paddle()
    return main(*args)


def run(main, description, argv=None):
    """Parse PaddleRec's flags, then load Paddle and run main(config_path, overrides), both in
    run_command's frame. `main` imports what needs Paddle itself (not the command's module), so
    that nothing heavy loads outside the frame."""
    args = parse_args(description, argv)
    run_command(_after_paddle, main, args.config_yaml, args.opt)
