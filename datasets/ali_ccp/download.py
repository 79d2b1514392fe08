#!/usr/bin/env python3
"""Fetch the Ali-CCP files PaddleRec's escm2 trains on, as PaddleRec's datasets/ali-ccp/run.sh
does, and check them before they land:

    python datasets/ali_ccp/download.py [--out datasets/ali-ccp] [--train-url URL] [--test-url URL] [--force]
    cd datasets/ali-ccp && sh run.sh [flags]        (PaddleRec's way: the same command)

    train_data/traindata_10w.csv   <- TRAIN_URL (PaddleRec's preprocessed lines, 100,000 impressions)
    test_data/testdata_10w.csv     <- TEST_URL

which is where config_bigdata.yaml looks. Each file is streamed into a hidden temporary file
beside its target and checked: a response that is not data (an HTML page, an empty or binary
body) is refused by name; then every line is parsed by the model's reader (escm_reader.py, over lines.py)
under config_bigdata.yaml's fields and sparse_feature_number, so what lands is what training
reads. Only then is it renamed into place; on any failure nothing is left. A file already in
place is kept unless --force. URLs may be http(s):// or file://. Without network access the run
stops with one line saying where to put the files instead (exit status 2).
"""
import argparse
import contextlib
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from rectools import cli, model_loader
from rectools.atomic import atomic_file
from rectools.errors import DataError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(REPO, "datasets", "ali-ccp")  # where config_bigdata.yaml looks, and run.sh lives
CONFIG = os.path.join(REPO, "models", "multitask", "escm2", "config_bigdata.yaml")
TRAIN_URL = "https://paddlerec.bj.bcebos.com/esmm/traindata_10w.csv"
TEST_URL = "https://paddlerec.bj.bcebos.com/esmm/testdata_10w.csv"
CHUNK = 1 << 20
log = logging.getLogger("download")


def sniff(head, url):
    """Refuse a body that is not text lines: the first bytes of an HTML page, empty or binary data."""
    if not head:
        raise UserError(f"{url}: the response is empty")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]:
        raise UserError(f"{url}: the server sent an HTML page, not Ali-CCP lines (first bytes: "
                        f"{head[:60].decode('utf-8', 'replace')!r}); nothing was written")
    if head.startswith(b"\x1f\x8b"):
        raise UserError(f"{url}: the body is gzip-compressed, not the plain lines expected; nothing was written")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not merely a character cut by the end of the sample
            raise UserError(f"{url}: the body is binary, not Ali-CCP lines ({e}); nothing was written") from None
    if b"\x00" in head:
        raise UserError(f"{url}: the body is binary (NUL bytes), not Ali-CCP lines; nothing was written")


def fetch(url, out_file, timeout, target):
    """Stream `url` into the open binary file `out_file`; returns the byte count. Network failures
    become one-line UserErrors that say where to put the file (`target`) by hand."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310  the user chooses the URL
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code} {e.reason}; nothing was written") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if urllib.parse.urlparse(url).scheme == "file":
            raise UserError(f"cannot read {url}: {reason}") from None
        raise UserError(f"cannot download {url} ({reason}); without network access, fetch it on a machine that has "
                        f"it and put it at {target} (or pass its file:// URL with --train-url / --test-url)") from None
    with response:
        total = response.headers.get("Content-Length")
        head = response.read(CHUNK)
        sniff(head, url)
        if (response.headers.get("Content-Type") or "").startswith("text/html"):
            raise UserError(f"{url}: the server sent an HTML page (Content-Type text/html), not Ali-CCP lines; "
                            f"nothing was written")
        out_file.write(head)
        size, last = len(head), time.perf_counter()
        try:
            for data in iter(lambda: response.read(CHUNK), b""):
                out_file.write(data)
                size += len(data)
                if time.perf_counter() - last > 10:
                    last = time.perf_counter()
                    log.info("%s: %.0f MiB%s", url, size / 2 ** 20, f" of {int(total) / 2 ** 20:.0f}" if total else "")
        except OSError as e:
            raise UserError(f"{url}: the download broke off after {size} bytes ({e}); nothing was written") from None
    if total is not None and total.isdigit() and size != int(total):
        raise UserError(f"{url}: {size} bytes arrived of the {total} announced; nothing was written")
    return size


@contextlib.contextmanager
def quiet(logger_name):
    """The reader's per-file notes (e.g. ids beyond max_len) would name the temporary file."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check(path, url, target):
    """Parse every line of `path` with the model's reader under config_bigdata.yaml; returns
    (rows, clicks, buys). A bad line is a DataError naming the target file and the URL."""
    config, package = model_loader.load(CONFIG)
    reader = model_loader.model_module(package, config["runner.train_reader_path"], "runner.train_reader_path")
    rows = clicks = buys = 0
    try:
        with quiet("datasets.ali_ccp"):
            for chunk in reader.RecDataset([path], config).chunks():
                rows += len(chunk["click"])
                clicks += int(chunk["click"].sum())
                buys += int(chunk["buy"].sum())
    except DataError as e:
        raise DataError(target, e.line_no, f"{e.message} (downloaded from {url}; nothing was written)") from None
    if rows == 0:
        raise UserError(f"{url}: no data lines arrived; nothing was written")
    return rows, clicks, buys


def download(url, folder, force=False, timeout=60.0):
    """Fetch `url` into `folder`/<its file name>, checked (see the module's docstring); returns
    the path, or None when the file is already there and `force` is not set."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise UserError(f"{url}: the URL names no file")
    target = os.path.join(os.path.abspath(folder), name)
    if os.path.exists(target) and not force:
        log.info("%s is already there: kept (--force fetches it again)", target)
        return None
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with atomic_file(target, "wb") as f:  # renamed into place only once checked
            log.info("downloading %s", url)
            size = fetch(url, f, timeout, target)
            f.flush()
            log.info("checking %s (%.1f MiB) with the model's reader", name, size / 2 ** 20)
            rows, clicks, buys = check(f.name, url, target)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    log.info("%s: %d lines, %d clicks, %d purchases", target, rows, clicks, buys)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch and check PaddleRec's Ali-CCP files for escm2.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=DATA_DIR, help="folder that receives train_data/ and test_data/")
    parser.add_argument("--train-url", default=TRAIN_URL, help="training file (http(s):// or file://)")
    parser.add_argument("--test-url", default=TEST_URL, help="test file (http(s):// or file://)")
    parser.add_argument("--force", action="store_true", help="fetch again files that are already there")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without an answer before giving up")
    args = parser.parse_args(argv)
    cli.run_command(lambda: [download(url, os.path.join(args.out, split), args.force, args.timeout)
                                for url, split in ((args.train_url, "train_data"), (args.test_url, "test_data"))])


if __name__ == "__main__":
    main()
