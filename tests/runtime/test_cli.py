import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from rectools import cli

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("cpuinfo, environ, expected", [
    (AMD, {}, "5"),
    (AMD.replace(" avx2", ""), {}, None),  # no AVX2: MKL's AVX2 code would not run
    (AMD.replace("AuthenticAMD", "GenuineIntel"), {}, None),  # MKL picks its best code on Intel itself
    (AMD, {"MKL_DEBUG_CPU_TYPE": ""}, ""),  # set by the user, even empty: left alone
    (AMD, {"MKL_DEBUG_CPU_TYPE": "4"}, "4"),
])
def test_mkl_is_pointed_at_avx2_on_amd_only_when_unset(tmp_path, cpuinfo, environ, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    changed = cli.mkl_avx2_on_amd(str(path), environ)
    assert environ.get("MKL_DEBUG_CPU_TYPE") == expected
    assert changed == (expected == "5" and cpuinfo == AMD)


def test_mkl_rule_without_cpuinfo_changes_nothing(tmp_path):
    environ = {}
    assert not cli.mkl_avx2_on_amd(str(tmp_path / "absent"), environ) and environ == {}


def _this_cpu_is_amd_with_avx2():
    return cli.mkl_avx2_on_amd(environ={})


@pytest.mark.parametrize("preset, job, says", [
    (None, {}, True), ("", {}, False),
    (None, {"PADDLE_TRAINER_ID": "1"}, True),  # a rank's variable left in a shell: still one process
    (None, {"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "2"}, False),  # rank 1 of a job: rank 0 says it
])
def test_a_tool_says_when_it_sets_mkl_and_paddle_sees_it(preset, job, says):
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_DEBUG_CPU_TYPE", "PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM")}
    env.update(job)
    if preset is not None:
        env["MKL_DEBUG_CPU_TYPE"] = preset
    code = ("import os, sys; from rectools import cli; "
            "cli.run_command(lambda: (cli.load_paddle(), print('seen', repr(os.environ.get('MKL_DEBUG_CPU_TYPE')))))")
    out = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, check=True).stdout
    said = "MKL_DEBUG_CPU_TYPE=5 for MKL's AVX2 code" in out
    if preset is None and _this_cpu_is_amd_with_avx2():
        assert said == says and "seen '5'" in out
    else:
        assert not said and f"seen {preset!r}" in out


def test_a_ctrl_c_dropped_by_a_finalizer_still_stops_at_the_next_batch():
    # CPython drops an exception raised while a finalizer runs ("Exception ignored in ..."): a
    # Ctrl-C landing there would otherwise be lost and training would go on
    code = """
import os, signal, sys
from rectools import cli, data

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes: the handler runs here, inside the finalizer
            pass

def main():
    for item in data.background(range(100), 2):
        if item == 3:
            Finalized()
        if item == 99:
            print("went on to the end")
cli.run_command(main)
"""
    done = subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (cli.INTERRUPTED, "interrupted\n")
    assert "went on to the end" not in done.stdout


def _run_main(body, preexec_fn=None):
    """A command whose main is `body` (Python source of a function main()), run in its own process."""
    code = "import atexit, os, signal, sys, time\nfrom rectools import cli\n" \
           f"{body}\ncli.run_command(main)\n"
    return subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True, preexec_fn=preexec_fn)


def test_a_stop_signal_inherited_as_ignored_stays_ignored():
    body = "def main():\n    print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)"
    ignored = _run_main(body, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert ignored.stdout.split() == ["True", "False"]  # a background job of a shell script: Ctrl-C is not for it
    assert _run_main(body).stdout.split() == ["False", "False"]


def test_a_stop_that_surfaces_as_another_error_is_reported_as_the_stop():
    # e.g. one process of a distributed run stopped, and the other's collective then timed out
    body = """def main():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except cli.Terminated:
        raise RuntimeError("the collective timed out")"""
    done = _run_main(body)
    assert (done.returncode, done.stderr) == (cli.TERMINATED, "terminated\n")


def test_a_stop_once_the_work_is_done_changes_nothing():
    # from the end of the work on the stop signals are held: at shutdown Python restores their
    # default actions, which would end the process silently
    body = """def main():
    print("done")
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.1), print("still here")))"""
    done = _run_main(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\nstill here\n", "")


@pytest.mark.parametrize("tool", ["trainer.py", "infer.py", "static_trainer.py", "static_infer.py", "export.py",
                                  "predict.py"])
def test_a_config_error_comes_before_paddle_loads(tmp_path, tool):
    fake = tmp_path / "paddle"  # a Paddle that cannot be imported: the error must come before the import
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('Paddle was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    config = os.path.join(REPO, "models", "multitask", "escm2", "config.yaml")
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), "-m", config, "-o", "runner.epoch=3"],
                          env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == "error: -o: unknown key runner.epoch; did you mean runner.epochs?\n"


def test_a_collective_that_gives_up_is_one_line():
    from rectools.device import collective
    from rectools.errors import UserError
    with pytest.raises(UserError, match=r"^another process of this job stopped or failed, so a collective with it "
                                        r"gave up \(\[pair\.cc:584\] TIMEOUT self_rank = 1 pair_rank = 0\)$"):
        with collective():
            raise RuntimeError("\n[pair.cc:584] TIMEOUT self_rank = 1 pair_rank = 0\nmore detail")


def test_another_runtime_error_in_a_collective_stays_itself():
    from rectools.device import collective
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with collective():
            raise RuntimeError("shape mismatch in matmul")
