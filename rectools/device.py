"""Where this process computes and with whom: the device of runner.use_gpu, the graph mode, the
processes of a job started by paddle.distributed.launch and the guard around their collectives.

Imports nothing above it in the project (engines, distributed, serving and the command-line frame
all use it), and Paddle only inside its functions: the command-line frame reads the process count
before Paddle loads.
"""
import contextlib
import os
import re

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
        detail = next(line.strip() for line in str(e).splitlines() if line.strip())
        raise UserError(f"another process of this job stopped or failed, so a collective with it gave up "
                        f"({detail[:200]})") from None
