"""What every command line shares: PaddleRec's flags (-m CONFIG, -o key=value ...), logging, user
errors printed as one line with exit status 2, and Ctrl-C as one line with exit status 130."""
import argparse
import logging
import os
import sys

from .errors import UserError

INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-m", "--config_yaml", required=True, help="the model's config.yaml")
    parser.add_argument("-o", "--opt", nargs="*", default=[], action="extend",
                        help="overrides: key=value, e.g. -o runner.epochs=2 hyper_parameters.max_len=5")
    return parser.parse_args(argv)


def one_line_errors(call, *args):
    """call(*args); a UserError becomes one line on stderr and its exit status (2), Ctrl-C the line
    "interrupted" and status 130, a closed stdout status 1. Outputs are atomic (rectools.checkpoint),
    so an interrupted run leaves the checkpoints and records of the epochs it finished, and nothing
    half-written."""
    try:
        return call(*args)
    except UserError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except BrokenPipeError:  # the reader of stdout went away (| head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def run_command(call, *args):
    """A command's frame: INFO logging on stdout, then call(*args) with one_line_errors."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s", stream=sys.stdout,
                        force=True)  # paddle installs a root handler of its own on import
    return one_line_errors(call, *args)


def run(main, description, argv=None):
    """Parse PaddleRec's flags, then main(config_path, overrides) in run_command's frame."""
    args = parse_args(description, argv)
    run_command(main, args.config_yaml, args.opt)
