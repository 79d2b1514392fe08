"""The bias study, end to end on a tiny suite: behaviour, not figures."""
import csv
import json
import os

import pytest

from conftest import MODEL_DIR, REPO, documented_reference, run_tool

SMOKE = os.path.join(REPO, "configs", "bias_study", "smoke.yaml")


def test_the_smoke_suite_writes_results_table_and_figure(tmp_path):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", f"suite.output_dir={tmp_path}", cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "results.jsonl") as f:
        runs = [json.loads(line) for line in f]
    assert len(runs) == 2 * 2 * 2 * 2  # bias levels x backbones x modes x seeds
    for run in runs:
        assert 0 < run["auc_ctr"] < 1 and 0 < run["auc_cvr_all"] < 1
        assert len(run["pcvr_by_ctr_decile"]) == 10
        # the truth side is the generator's: its test split's mean true CVR, read independently here
        truth_file = tmp_path / "data" / f"bias-{run['bias']:g}" / "synthetic" / "truth" / "test.csv"
        with open(truth_file) as f:
            true_cvr = [float(row["true_cvr"]) for row in csv.DictReader(f)]
        assert run["mean_true_cvr"] == pytest.approx(sum(true_cvr) / len(true_cvr), rel=1e-9)
        assert run["ieb"] == pytest.approx(run["mean_pcvr"] - run["mean_true_cvr"])
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| selection bias | backbone | mode | CTR AUC | CVR AUC (clicked) | CVR AUC (all, true)")
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert len(rows) == 8
    assert all(len(row.split("|")) == len(table[0].split("|")) and " ± " in row for row in rows)
    assert rows[0].startswith("| 0 | mlp | ESMM |") and rows[-1].startswith("| 0.9 | mmoe | DR |")
    assert (tmp_path / "cvr_by_ctr_decile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("| 0.9 | ") == 4  # the table is printed too


@pytest.mark.parametrize("override, message", [
    ("suite.seed=[1]", "unknown key suite.seed; did you mean suite.seeds?"),
    ("suite.modes=[ESMM, DRR]", "suite.modes must be one of ESMM, NAIVE, IPW, DR"),
])
def test_a_bad_suite_is_refused_before_any_work(tmp_path, override, message):
    result = run_tool("bias_study.py", "-m", SMOKE, "-o", override, f"suite.output_dir={tmp_path / 'out'}",
                      cwd=str(tmp_path))
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_suite_readme_documents_every_key():
    from tools.config_doc import bias_study_reference
    documented = documented_reference(os.path.join(REPO, "configs", "bias_study", "README.md"))
    assert documented == bias_study_reference(MODEL_DIR), \
        "regenerate with: python tools/config_doc.py --bias-study models/multitask/escm2"
