"""Where this process computes and with whom: the device of runner.use_gpu, the graph mode, the
processes of a job started by paddle.distributed.launch and the guard around their collectives.

Imports nothing above it in the project (engines, distributed, serving and the command-line frame
all use it), and Paddle only inside its functions: the command-line frame reads the process count
before Paddle loads.
"""
import contextlib
import os
import re
import time

from .errors import ConfigError, UserError

LAUNCHED = "PADDLE_TRAINERS_NUM"  # set by paddle.distributed.launch: the number of processes of the job


def launched_processes():
    """The number of processes paddle.distributed.launch started for this job (1 outside one)."""
    return int(os.environ.get(LAUNCHED, "1") or 1)


def place(config):
    """Select the device of runner.use_gpu for this process; a CUDA request on a CPU build is a ConfigError."""
    import paddle
    if config["runner.use_gpu"]:
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"{config.path}: runner.use_gpu is True but this Paddle build has no CUDA "
                              f"(use -o runner.use_gpu=False)")
        return paddle.set_device("gpu")  # under paddle.distributed.launch: the GPU it gave this process
    paddle.set_device("cpu")
    return paddle.CPUPlace()


@contextlib.contextmanager
def dygraph_mode():
    """Dygraph for the duration, whatever mode the process is in."""
    import paddle
    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield
    finally:
        if static:
            paddle.enable_static()


def processes(config):
    """Processes training together: paddle.distributed's world size with runner.use_fleet, else 1."""
    if not config["runner.use_fleet"]:
        return 1
    import paddle.distributed as dist
    return dist.get_world_size() if dist.is_initialized() else 1


_GAVE_UP = re.compile(r"gloo|nccl|timeout|timed out|connection|socket|closed", re.IGNORECASE)


@contextlib.contextmanager
def collective():
    """Around a collective (the gradient exchange of a step included): the RuntimeError Paddle
    raises when the others never come (gloo's TIMEOUT, a closed connection: another process of the
    job stopped or failed first, the launcher stopping the processes one by one) becomes a
    UserError, one line, instead of a traceback."""
    try:
        yield
    except RuntimeError as e:
        if not _GAVE_UP.search(str(e)):
            raise
        first = peer_errors()
        if first:  # the cause, on the console: paddle.distributed.launch shows rank 0's output, not the others'
            raise UserError(f"rank {first[0][0]} of this job failed: {first[0][1]}") from None
        detail = next(line.strip() for line in str(e).splitlines() if line.strip())
        raise UserError(f"{GAVE_UP_LINE}, so a collective with it gave up ({detail[:200]})") from None


GAVE_UP_LINE = "another process of this job stopped or failed"
_STARTED = time.time()  # a worker log last written before this process started is an earlier job's
ERROR_PREFIX = "error: "  # how rectools.cli prints a user error


def peer_errors(log_dir=None, rank=None, ranks=None):
    """[(rank, error line without its "error: ")] of the other processes of this job on this machine
    that stopped on an error of their own (not a collective giving up): the last such line of each
    one's workerlog.<rank> in `log_dir` (paddle.distributed.launch's PADDLE_LOG_DIR), when written
    during this job. `rank`, `ranks`: this process's and the job's (default: the launcher's)."""
    log_dir = log_dir or os.environ.get("PADDLE_LOG_DIR")
    if not log_dir:
        return []
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0) if rank is None else rank
    found = []
    for other in range(launched_processes() if ranks is None else ranks):
        path = os.path.join(log_dir, f"workerlog.{other}")
        try:
            if other == rank or os.stat(path).st_mtime < _STARTED:
                continue
            with open(path, "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - (1 << 16), 0))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        own = [line for line in lines if line.startswith(ERROR_PREFIX) and GAVE_UP_LINE not in line]
        if own:
            found.append((other, own[-1][len(ERROR_PREFIX):]))
    return found
