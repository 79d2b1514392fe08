"""What every command line shares: PaddleRec's flags (-m CONFIG, -o key=value ...), logging, and
user errors printed as one line with exit status 2."""
import argparse
import logging
import sys

from .errors import UserError


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-m", "--config_yaml", required=True, help="the model's config.yaml")
    parser.add_argument("-o", "--opt", nargs="*", default=[], action="extend",
                        help="overrides: key=value, e.g. -o runner.epochs=2 hyper_parameters.max_len=5")
    return parser.parse_args(argv)


def run(main, description, argv=None):
    """Parse the flags, call main(config_path, overrides) and turn user errors into exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s", stream=sys.stdout,
                        force=True)  # paddle installs a root handler of its own on import
    args = parse_args(description, argv)
    try:
        main(args.config_yaml, args.opt)
    except UserError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
