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

from . import stops
from .device import LAUNCHED, launched_processes  # noqa: F401  (cli.LAUNCHED: the launcher's variable)
from .errors import UserError
from .stops import Terminated

INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C
TERMINATED = 143  # 128 + SIGTERM

# Paddle's C++ log lines (glog) carry nothing for a user of these commands: INFO lines about its
# executor, and WARNINGs such as "Paddle static graph(PIR) not support input out tensor for now"
# printed by every static program build. glog reads this when Paddle's library loads, so it is set
# before Paddle is imported; a user who wants the lines back sets GLOG_minloglevel=0.
GLOG_LEVEL = "2"  # ERROR and above

# The MKL bundled with Paddle runs its slow generic code on AMD CPUs (it checks the vendor, not the
# instruction set); MKL_DEBUG_CPU_TYPE=5 makes it take its AVX2 code, which multiplies ~2x faster on
# these CPUs with the same results. MKL reads it when Paddle's library loads.
MKL_CPU_TYPE = "MKL_DEBUG_CPU_TYPE"
def mkl_avx2_on_amd(cpuinfo="/proc/cpuinfo", environ=os.environ):
    """Set MKL_DEBUG_CPU_TYPE=5 in `environ` on an AMD CPU with AVX2 when it is not set already (set
    to anything, even empty, it is the user's); returns whether it was set here. Reads `cpuinfo`
    (Linux); elsewhere nothing changes."""
    if MKL_CPU_TYPE in environ:
        return False
    try:
        with open(cpuinfo) as f:
            head = f.read(1 << 16)  # the first processor's lines
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in head.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if fields.get("vendor_id") != "AuthenticAMD" or "avx2" not in fields.get("flags", "").split():
        return False
    environ[MKL_CPU_TYPE] = "5"
    return True


_STOP_LINES = {KeyboardInterrupt: ("interrupted", INTERRUPTED), Terminated: ("terminated", TERMINATED)}


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
    "interrupted" and status 130, SIGTERM (with handle_stop_signals) the line "terminated" and
    status 143 (also when the stop surfaces as another error), a closed stdout status 1. Outputs
    are atomic (rectools.checkpoint, rectools.records), so a stopped run leaves the checkpoints and
    records of the epochs it finished, and nothing half-written; sys.exit runs the exit handlers,
    which release the output folder's lock."""
    try:
        return call(*args)
    except (KeyboardInterrupt, Terminated) as e:
        _stop(*_STOP_LINES[type(e)])
    except Exception as e:
        if stops.arrived() is not None:  # what a stop led to: another process's collective timing out, say
            _stop(*_STOP_LINES[stops.arrived()])
        if isinstance(e, UserError):
            _stop(f"error: {e}", e.exit_code)
        if isinstance(e, BrokenPipeError):  # the reader of stdout went away (| head): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        raise


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
    every log line and Python warning on stdout in one format, Ctrl-C and SIGTERM handled, then
    call(*args) with one_line_errors; once it returns, the stop signals are held (see below).
    Stderr is left to the one line of an error."""
    os.environ.setdefault("GLOG_minloglevel", GLOG_LEVEL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s",
                        handlers=[_StdoutHandler(sys.stdout)], force=True)  # whatever configured logging before, these lines win
    logging.captureWarnings(True)
    stops.handle_stop_signals()
    sys.unraisablehook = stops.quiet_dropped_stop
    result = one_line_errors(call, *args)
    # the work is done and its outputs whole: held from here, a stop arriving while Python and Paddle
    # shut down changes nothing, where the default action would end the process silently
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return result


def load_paddle():
    """Import Paddle with SIGINT and SIGTERM held. Paddle turns a KeyboardInterrupt raised while its
    C++ library initialises into an ImportError, after a line of its own on stderr; held, the signal
    arrives as soon as the import is done (a second or two), as a Ctrl-C or SIGTERM anywhere else.
    Paddle's import also installs a C++ SIGTERM handler (a crash report, then death): the one of
    handle_stop_signals, when installed, is put back before the signals are let through. Before the
    import, MKL is pointed at its AVX2 code on AMD CPUs (mkl_avx2_on_amd), with a log line."""
    # said by rank 0 of a job; a PADDLE_TRAINER_ID left in a shell, without a job, is one process
    rank = os.environ.get("PADDLE_TRAINER_ID", "0") if launched_processes() > 1 else "0"
    if mkl_avx2_on_amd() and rank in ("", "0"):
        logging.getLogger("rectools").info("AMD CPU: %s=5 for MKL's AVX2 code (set %s= to keep MKL's default)",
                                           MKL_CPU_TYPE, MKL_CPU_TYPE)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import paddle  # noqa: F401
        if stops.handled_here():
            stops.handle_stop_signals()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _config_then_paddle(main, load, config_path, overrides):
    loaded = load(config_path, overrides)  # a config error is reported before Paddle's import
    load_paddle()
    return main(*loaded)


def _model_config(config_path, overrides):
    from .limits import check_model
    from .model_loader import load
    loaded = load(config_path, overrides)
    check_model(*loaded)  # sizes beyond this machine's memory: refused now, not mid-run
    return loaded


def run(main, description, argv=None, load=_model_config):
    """Parse PaddleRec's flags; read the config with load(config_path, overrides) (by default the
    model folder's: (config, package), rectools.model_loader.load), so that a config error is one
    line before Paddle loads; then load Paddle and run main(*what load returned), all in
    run_command's frame. `main` imports what needs Paddle itself (not the command's module), so
    that nothing heavy loads outside the frame."""
    args = parse_args(description, argv)
    run_command(_config_then_paddle, main, load, args.config_yaml, args.opt)
