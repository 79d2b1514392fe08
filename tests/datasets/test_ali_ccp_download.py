"""datasets/ali_ccp/download.py against a local HTTP server on 127.0.0.1 and file:// URLs only."""
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import REPO, write_lines

TOOL = os.path.join(REPO, "datasets", "ali_ccp", "download.py")
LINES = ["1,1,1,101:5,205:7,205:8,301:2", "2,0,0,205:9,301:1", "3,1,0,101:6,150_14:11,150_14:12,301:3"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """http://127.0.0.1:<port>/ serving a folder: good lines, an HTML error page, a bad line."""
    root = tmp_path_factory.mktemp("served")
    write_lines(str(root / "traindata_10w.csv"), LINES)
    write_lines(str(root / "testdata_10w.csv"), LINES[:2])
    write_lines(str(root / "error.csv"), ["<!DOCTYPE html>", "<html><body>Access denied</body></html>"])
    write_lines(str(root / "broken.csv"), LINES + ["4,1,0,205:x"])
    write_lines(str(root / "huge_id.csv"), LINES + ["4,1,0,205:900000"])
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120)


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def test_fetches_checks_and_places_both_files(server, tmp_path):
    url, root = server
    result = run("--out", str(tmp_path), "--train-url", f"{url}/traindata_10w.csv", "--test-url",
                 f"{url}/testdata_10w.csv")
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path) == ["test_data/testdata_10w.csv", "train_data/traindata_10w.csv"]
    assert (tmp_path / "train_data" / "traindata_10w.csv").read_bytes() == (root / "traindata_10w.csv").read_bytes()
    assert f"{tmp_path / 'train_data' / 'traindata_10w.csv'}: 3 lines, 2 clicks, 1 purchases" in result.stdout
    assert f"{tmp_path / 'test_data' / 'testdata_10w.csv'}: 2 lines, 1 clicks, 1 purchases" in result.stdout


def test_a_file_already_there_is_kept_unless_forced(server, tmp_path):
    url, root = server
    target = write_lines(str(tmp_path / "train_data" / "traindata_10w.csv"), ["mine"])
    args = ["--out", str(tmp_path), "--train-url", f"{url}/traindata_10w.csv", "--test-url", f"{url}/testdata_10w.csv"]
    result = run(*args)
    assert result.returncode == 0 and "already there: kept" in result.stdout
    assert open(target).read() == "mine\n"
    assert run(*args, "--force").returncode == 0
    assert open(target).read() == "\n".join(LINES) + "\n"


def test_file_urls(server, tmp_path):
    _, root = server
    result = run("--out", str(tmp_path), "--train-url", (root / "traindata_10w.csv").as_uri(),
                 "--test-url", (root / "testdata_10w.csv").as_uri())
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path) == ["test_data/testdata_10w.csv", "train_data/traindata_10w.csv"]
    missing = run("--out", str(tmp_path / "x"), "--train-url", (root / "nothing.csv").as_uri())
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: cannot read {(root / 'nothing.csv').as_uri()}")


@pytest.mark.parametrize("name, expected", [
    ("error.csv", "{url}/error.csv: the server sent an HTML page, not Ali-CCP lines (first bytes: '<!DOCTYPE html>"),
    ("absent.csv", "{url}/absent.csv: HTTP 404 File not found; nothing was written"),
    ("broken.csv", "{out}/train_data/broken.csv:4: feature id of field 205 is not a non-negative integer: 'x' "
                   "(downloaded from {url}/broken.csv; nothing was written)"),
    ("huge_id.csv", "{out}/train_data/huge_id.csv:4: feature id 900000 of field 205 is outside "
                    "[0, hyper_parameters.sparse_feature_number=737946)"),
])
def test_what_is_not_data_is_refused_by_name_and_nothing_lands(server, tmp_path, name, expected):
    url, _ = server
    result = run("--out", str(tmp_path), "--train-url", f"{url}/{name}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected.format(url=url, out=tmp_path) in result.stderr
    assert listing(tmp_path) == [] and os.listdir(tmp_path) == []  # no file, no temporary, no folder


def test_no_network_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/traindata_10w.csv"
    result = run("--out", str(tmp_path), "--train-url", url, "--timeout", "5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: cannot download {url} (")
    assert f"without network access, fetch it on a machine that has it and put it at " \
           f"{tmp_path / 'train_data' / 'traindata_10w.csv'}" in result.stderr
    assert os.listdir(tmp_path) == []


def test_an_html_content_type_is_refused_whatever_the_body(server, tmp_path):
    url, root = server
    write_lines(str(root / "page.html"), LINES)  # served as text/html
    result = run("--out", str(tmp_path), "--train-url", f"{url}/page.html")
    assert result.returncode == 2
    assert result.stderr == f"error: {url}/page.html: the server sent an HTML page (Content-Type text/html), " \
                            f"not Ali-CCP lines; nothing was written\n"
    assert os.listdir(tmp_path) == []
