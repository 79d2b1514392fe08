"""Several processes: each rank's files compared by content, not only by name and size, and the
first failing rank's own error line brought to the console (rank 0's output)."""
import os
import time

import pytest

from conftest import CONFIG, REPO, data_overrides, write_lines
from rectools import device, distributed
from rectools.errors import ConfigError
from test_distributed import launch


class TwoRanks(distributed.Group):
    """Rank 0 of two, the other rank's view of its files given: no process group needed."""

    def __init__(self, theirs):
        super().__init__(0, 2)
        self.theirs = theirs

    def all_gather(self, value):
        return [value, self.theirs]


def views(tmp_path, second):
    """(this rank's files, the other rank's gathered view of its own copies with `second` lines)."""
    lines = [f"{i},{i % 2},0,101:{i % 50 + 1}" for i in range(1, 3000)]
    mine = [write_lines(str(tmp_path / "a" / "part-0.txt"), lines)]
    theirs = [write_lines(str(tmp_path / "b" / "part-0.txt"), second(lines))]
    gathered = [(os.path.basename(f), os.path.getsize(f), distributed.fingerprint(f)) for f in theirs]
    return mine, gathered


def test_ranks_whose_files_differ_in_content_alone_are_refused_before_training(tmp_path):
    swapped = lambda lines: [lines[-1], *lines[1:-1], lines[0]]  # noqa: E731  same bytes, another order
    assert sorted(swapped(["1", "2", "3"])) == ["1", "2", "3"]
    mine, theirs = views(tmp_path, lambda lines: [line.replace(",1,0,", ",0,0,", 1) if i == 0 else line
                                                   for i, line in enumerate(lines)])  # a click 1 -> 0
    with pytest.raises(ConfigError) as error:
        TwoRanks(theirs).check_data(mine)
    assert str(error.value) == ("rank 1 reads other data than rank 0: part-0.txt has the same name and size but other "
                                "content on the two: every process must read the same files")
    mine, same = views(tmp_path, lambda lines: lines)
    TwoRanks(same).check_data(mine)


def test_the_peers_own_error_lines_are_found_in_this_job_s_worker_logs(tmp_path):
    (tmp_path / "workerlog.0").write_text("error: another process of this job stopped or failed, so ...\n")
    (tmp_path / "workerlog.1").write_text("INFO ...\nerror: /data/part-0.txt:9000: buy=1 on an impression with "
                                          "click=0\n")
    (tmp_path / "workerlog.2").write_text("error: another process of this job stopped or failed, so ...\n")
    (tmp_path / "workerlog.3").write_text("error: an earlier job's line\n")
    os.utime(tmp_path / "workerlog.3", (time.time() - 3600,) * 2)  # written before this process started
    assert device.peer_errors(str(tmp_path), rank=0, ranks=4) == [
        (1, "/data/part-0.txt:9000: buy=1 on an impression with click=0")]
    assert device.peer_errors(str(tmp_path), rank=1, ranks=4) == []


RANK_1_FAILS = """
import os, runpy, sys
from rectools import data
from rectools.errors import DataError
if os.environ.get("PADDLE_TRAINER_ID") == "1":  # rank 1 alone meets bad data, after some steps
    real = data.batches

    def failing(chunks, batch_size, prefetch=data.PREFETCH):
        for number, batch in enumerate(real(chunks, batch_size, prefetch)):
            if number == 6:
                raise DataError("/data/part-1.txt", 1234, "a line only this process reads")
            yield batch
    data.batches = failing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_failure_of_rank_1_alone_shows_its_own_line_on_the_launcher_s_console(synthetic, tmp_path):
    script = tmp_path / "rank_1_fails.py"
    script.write_text(RANK_1_FAILS)
    result = launch(str(script), os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG, "-o", "runner.use_fleet=True",
                    *data_overrides(synthetic), f"runner.model_save_path={tmp_path / 'out'}",
                    f"runner.cache_dir={tmp_path / 'cache'}", "runner.train_batch_size=256", cwd=str(tmp_path))
    assert result.returncode != 0
    # the launcher shows rank 0's output: rank 0 names the cause, not only that a collective gave up
    assert "\nerror: rank 1 of this job failed: /data/part-1.txt:1234: a line only this process reads\n" in result.stdout
