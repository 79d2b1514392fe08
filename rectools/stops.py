"""Ctrl-C and SIGTERM as exceptions raised where the program is, and remembered, so that a stop
that lands where Python drops exceptions (a finalizer) is raised again between batches.

The command-line frame (rectools.cli) installs the handlers; the data layer (rectools.data) calls
raise_pending_stop. Imports nothing of the project.
"""
import os
import signal
import sys


class Terminated(BaseException):
    """SIGTERM in the main thread, raised where the program is, as KeyboardInterrupt is for SIGINT,
    so that what is being written is removed and the output folder's lock is released."""


_main_pid = None  # the process that installed the stop handlers
_stop_signal = None  # the exception class of the stop signal that arrived (KeyboardInterrupt or Terminated)


def _stopping(kind):
    global _stop_signal
    _stop_signal = kind
    raise kind()


def _on_sigint(signum, frame):
    _stopping(KeyboardInterrupt)


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != _main_pid:  # a forked worker (rectools.data.process_map) ends as it would have
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _stopping(Terminated)


_inherited_ignored = None  # the stop signals this process was started with ignored (a background job's)


def handle_stop_signals():
    """Make Ctrl-C raise KeyboardInterrupt and SIGTERM raise Terminated in this process, and
    remember that they came (main thread only; idempotent). See raise_pending_stop. A signal the
    process was started with ignored (a job started in the background by a shell script) stays
    ignored, as Python itself leaves it."""
    global _main_pid, _inherited_ignored
    _main_pid = os.getpid()
    if _inherited_ignored is None:
        _inherited_ignored = {sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) == signal.SIG_IGN}
    for sig, handler in ((signal.SIGINT, _on_sigint), (signal.SIGTERM, _on_sigterm)):
        signal.signal(sig, signal.SIG_IGN if sig in _inherited_ignored else handler)


def raise_pending_stop():
    """Raise again a Ctrl-C or SIGTERM that has arrived, if the program is still running. CPython
    drops an exception raised while a finalizer runs (a generator closed by the garbage collector,
    say), so a stop that lands there would be lost; the loops call this between batches."""
    if _stop_signal is not None and os.getpid() == _main_pid:
        raise _stop_signal()


def quiet_dropped_stop(unraisable, default=sys.unraisablehook):
    """sys.unraisablehook: a stop that a finalizer dropped is not printed (raise_pending_stop raises
    it again); anything else is reported as usual."""
    if not (_stop_signal is not None and isinstance(unraisable.exc_value, _stop_signal)):
        default(unraisable)


def arrived():
    """The exception class of the stop signal that has arrived (KeyboardInterrupt or Terminated), or None."""
    return _stop_signal


def handled_here():
    """Whether this process installed the stop handlers (a forked worker did not)."""
    return _main_pid == os.getpid()
