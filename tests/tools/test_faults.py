"""Faults from outside: a trainer killed with SIGKILL during its first text pass, and what it
leaves behind (parse workers, its folder's lock, cache temporaries)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CONFIG, GENERATOR, REPO, run_tool

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds processes through /proc")

REAL = ["hyper_parameters.sparse_feature_number=737946", "hyper_parameters.max_len=3"]


@pytest.fixture(scope="module")
def real_lines(tmp_path_factory):
    """A folder with one file of 5,000 lines of the real data's shape (~60 MB): its first text pass
    takes a trainer with small batches several seconds."""
    out = tmp_path_factory.mktemp("real") / "data"
    subprocess.run([sys.executable, GENERATOR, "--shape", "real", "--out", str(out), "--train", "5000", "--test", "10",
                    "--seed", "4"], check=True, capture_output=True)
    return out / "train"


def children(pid):
    """Pids of the live (not zombie) processes whose parent is `pid`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(name))
    return found


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pids, seconds):
    """Whether every pid ended within `seconds` (a bound for a hang, not a timing)."""
    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def trainer_during_first_pass(data, cwd, cache):
    """A trainer in its first text pass of `data`, with its parse workers running: (process, worker pids)."""
    process = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG, "-o",
                                f"runner.train_data_dir={data}", f"runner.cache_dir={cache}",
                                "runner.model_save_path=out", "runner.train_batch_size=8", "runner.print_interval=1",
                                "runner.ctr_prior_init=False",  # whose pass would parse the text first
                                *REAL], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "batch_id: 3," in line:
            break
    else:
        raise AssertionError(f"the trainer ended early: {process.communicate()[0]}")
    workers = children(process.pid)
    assert workers, "no parse worker found"
    return process, workers


def test_a_trainer_killed_during_its_first_text_pass_leaves_no_worker_and_the_next_trainer_runs(real_lines, tmp_path):
    process, workers = trainer_during_first_pass(real_lines, tmp_path, tmp_path / "cache")
    process.kill()
    process.wait()
    process.stdout.close()
    try:
        assert gone_within(workers, 30), f"parse workers {workers} outlived their trainer"
    finally:  # a failure leaves nothing running
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert os.path.isfile(tmp_path / "out" / ".lock")  # what the killed trainer left
    left = [name for name in os.listdir(tmp_path / "cache") if name.endswith(".new")]
    assert len(left) == 1  # the entry it was writing
    again = run_tool("trainer.py", "-m", CONFIG, "-o", f"runner.train_data_dir={real_lines}",
                     f"runner.cache_dir={tmp_path / 'cache'}", "runner.model_save_path=out", "runner.epochs=1", *REAL,
                     cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "in use by another trainer" not in again.stdout + again.stderr
    assert os.path.isfile(tmp_path / "out" / "0" / "checkpoint.json")
    assert f"cache {tmp_path / 'cache'}: removed 1 temporary entry of stopped runs" in again.stdout + again.stderr
    assert [name for name in os.listdir(tmp_path / "cache") if name.startswith(".")] == []


HOLD_AND_HAND_DOWN = """
import os, subprocess, sys
from rectools import checkpoint
checkpoint.claim(sys.argv[1])
fd = checkpoint._claimed[os.path.realpath(sys.argv[1])][0]
# a program this process starts keeps the lock's descriptor: the lock is then held by it too
child = subprocess.Popen(["sleep", "300"], pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_lock_held_only_by_processes_a_dead_trainer_left_is_taken_over_with_a_log_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.run([sys.executable, "-c", HOLD_AND_HAND_DOWN, str(out)], capture_output=True, text=True,
                            cwd=REPO)
    orphan = int(holder.stdout.split()[0])
    try:
        assert holder.returncode == -9 and running(orphan)
        with open(out / ".lock") as f:
            dead = json.load(f)["pid"]
        code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
                "from rectools import checkpoint; checkpoint.claim(sys.argv[1]); print('claimed')")
        taker = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO)
        assert taker.returncode == 0, taker.stderr
        assert taker.stdout == "claimed\n"
        assert (f"{out}: the lock of pid {dead} on {os.uname().nodename}" in taker.stderr
                and "was still held by processes it left behind; taking it over" in taker.stderr), taker.stderr
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_live_trainer_s_lock_is_still_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = "import sys, time; from rectools import checkpoint; checkpoint.claim(sys.argv[1]); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        taker = subprocess.run([sys.executable, "-c", "import sys; from rectools import checkpoint; "
                                "checkpoint.claim(sys.argv[1])", str(out)], capture_output=True, text=True, cwd=REPO)
        assert taker.returncode != 0 and f"is in use by another trainer (pid {holder.pid}" in taker.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_worker_whose_parent_ended_before_it_asked_to_die_with_it_ends_at_once():
    code = "import os, sys; from rectools.data import die_with; die_with(os.getppid() + 1); print('alive')"
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (ended.returncode, ended.stdout) == (1, "")
