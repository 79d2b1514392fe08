"""The synthetic generator: deterministic, consistent with its truth, and its selection-bias knob works."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

GENERATOR = f"{REPO}/datasets/synthetic/generate.py"


def generate(out, *args):
    subprocess.run([sys.executable, GENERATOR, "--out", str(out), "--train", "20000", "--test", "5000",
                    "--users", "300", "--items", "500", *args], check=True, capture_output=True)
    with open(out / "meta.json") as f:
        return json.load(f)


def test_same_arguments_give_the_same_bytes(tmp_path):
    generate(tmp_path / "a", "--seed", "4", "--gzip")
    generate(tmp_path / "b", "--seed", "4", "--gzip")
    for part in ("train/part-00000.txt.gz", "test/part-00000.txt.gz", "truth/test.csv.gz", "meta.json"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part


def test_lines_agree_with_their_truth(tmp_path):
    meta = generate(tmp_path / "d", "--seed", "5")
    with open(tmp_path / "d" / "test" / "part-00000.txt") as f:
        lines = [line.rstrip("\n").split(",") for line in f]
    with open(tmp_path / "d" / "truth" / "test.csv") as f:
        truth = list(csv.DictReader(f))
    assert len(lines) == len(truth) == 5000
    for cols, row in zip(lines, truth):
        assert cols[0] == row["sample_id"] and cols[1] == row["click"]
        assert int(cols[2]) == int(row["click"]) * int(row["potential_conversion"])  # buy = click * r
        assert 0 < float(row["true_ctr"]) < 1 and 0 < float(row["true_cvr"]) < 1
        ids = [int(token.split(":")[1]) for token in cols[3:]]
        assert all(0 < i < meta["sparse_feature_number"] for i in ids)
        assert not any(token.startswith("126:") for token in cols[3:])


@pytest.mark.parametrize("bias", [0.0, 0.9])
def test_selection_bias_is_the_correlation_of_the_true_logits(tmp_path, bias):
    train = generate(tmp_path / "d", "--selection-bias", str(bias), "--ctr", "0.1", "--cvr", "0.1")["splits"]["train"]
    assert train["logit_correlation"] == pytest.approx(bias, abs=0.02)
    assert train["ctr"] == pytest.approx(0.1, abs=0.01)
    lift = train["mean_true_cvr_clicked"] / train["mean_true_cvr_all"]
    # clicks over-represent converters; at zero correlation the logits are uncorrelated but not
    # independent (both are functions of the same users and items), which leaves a lift of ~5%
    assert (lift > 1.3) if bias else (lift == pytest.approx(1.0, abs=0.08))


def test_a_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("data")
    result = subprocess.run([sys.executable, GENERATOR, "--out", str(tmp_path), "--train", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "data"


def test_real_shape_lines_have_the_real_data_s_size_and_id_layout(tmp_path):
    def run(out, *args):
        return subprocess.run([sys.executable, GENERATOR, "--shape", "real", "--out", str(out), "--train", "300",
                               "--test", "20", "--users", "40", "--items", "60", *args], capture_output=True, text=True)

    assert run(tmp_path / "a", "--md5", "--seed", "3").returncode == 0
    assert run(tmp_path / "b", "--md5", "--seed", "3").returncode == 0
    assert (tmp_path / "a" / "train" / "part-00000.txt").read_bytes() == (tmp_path / "b" / "train" / "part-00000.txt").read_bytes()
    with open(tmp_path / "a" / "meta.json") as f:
        meta = json.load(f)
    assert meta["sparse_feature_number"] == 737946 and not (tmp_path / "a" / "truth").exists()
    ranges = meta["id_ranges"]
    assert max(hi for _, hi in ranges.values()) == 737945
    with open(tmp_path / "a" / "train" / "part-00000.txt") as f:
        lines = [line.rstrip("\n").split(",") for line in f]
    assert len(lines) == 300 and [int(cols[0]) for cols in lines] == list(range(1, 301))
    for cols in lines:
        assert len(cols[3]) == 32 and int(cols[3], 16) >= 0  # the md5 column
        counts = {}
        for token in cols[4:]:
            field, feat = token.split(":")
            assert ranges[field][0] <= int(feat) <= ranges[field][1]
            counts[field] = counts.get(field, 0) + 1
        assert all(100 <= counts[f] <= 330 for f in ("109_14", "110_14", "127_14", "150_14"))
    assert 700 < sum(len(cols) for cols in lines) / len(lines) < 1100  # ~880 tokens a line
    # the reader's two parsers agree on them (md5 column, 6-digit ids, long behaviour fields)
    from conftest import model_config
    from datasets.ali_ccp import block_parser, line_parser, lines
    config = model_config(["hyper_parameters.sparse_feature_number=737946", "runner.cache_dir=none"])
    args = config["hyper_parameters.fields"], 3, 737946
    path = str(tmp_path / "a" / "train" / "part-00000.txt")
    for first, block in lines.read_blocks(path, 1 << 20, 8192):
        fast, fast_counts = block_parser.BlockParser(*args).parse(block)
        reference, counts = line_parser.LineParser(*args).parse(block, path, first)
        assert fast_counts == counts and all(np.array_equal(fast[k], reference[k]) for k in reference)
    refused = run(tmp_path / "c", "--selection-bias", "0.3")
    assert refused.returncode == 2 and "selection_bias does not apply to shape 'real'" in refused.stderr


def test_a_hidden_confounder_changes_the_truth_but_no_feature(tmp_path):
    plain = generate(tmp_path / "a", "--selection-bias", "0", "--ctr", "0.1", "--cvr", "0.1")["splits"]["train"]
    hidden = generate(tmp_path / "b", "--selection-bias", "0", "--ctr", "0.1", "--cvr", "0.1",
                      "--hidden-confounding", "0.6")["splits"]["train"]
    assert hidden["logit_correlation"] == pytest.approx(0.36, abs=0.03)  # (1 - h^2) rho + h^2
    assert hidden["selection_strength"] > 1.15 > plain["selection_strength"]
    assert hidden["selection_strength"] == pytest.approx(
        hidden["mean_true_cvr_clicked"] / hidden["mean_true_cvr_all"])

    def features(folder):
        with open(tmp_path / folder / "train" / "part-00000.txt") as f:
            return [line.split(",", 3)[3] for line in f]
    assert features("a") == features("b")  # written to no feature: the lines differ in labels only
    assert (tmp_path / "a" / "truth" / "train.csv").read_bytes() != (tmp_path / "b" / "truth" / "train.csv").read_bytes()


@pytest.mark.parametrize("share, additive", [("0", True), ("0.35", False)])
def test_without_the_affinity_the_click_logit_is_additive_in_user_item_and_context(tmp_path, share, additive):
    """--click-affinity-share 0: the true CTR logit is a sum of user, item, context effects and the
    category-match indicator, which least squares on those columns recovers exactly."""
    meta = generate(tmp_path / "d", "--selection-bias", "0.9", "--click-affinity-share", share)
    ranges = meta["id_ranges"]
    with open(tmp_path / "d" / "train" / "part-00000.txt") as f:
        lines = [line.rstrip("\n").split(",")[3:] for line in f]
    with open(tmp_path / "d" / "truth" / "train.csv") as f:
        true_ctr = np.array([float(row["true_ctr"]) for row in csv.DictReader(f)])
    columns = np.zeros((len(lines), 300 + 500 + 3 + 1))
    for row, tokens in enumerate(lines):
        ids = {}
        for token in tokens:
            field, feat = token.split(":")
            ids.setdefault(field, []).append(int(feat) - ranges[field][0])
        columns[row, ids["101"][0]] = 1
        columns[row, 300 + ids["205"][0]] = 1
        columns[row, 800 + ids["301"][0]] = 1
        columns[row, 803] = ids["206"][0] in ids.get("109_14", [])  # the item's category among the user's
    logit = np.log(true_ctr / (1 - true_ctr))
    fit, *_ = np.linalg.lstsq(columns, logit, rcond=None)
    r2 = 1 - np.var(logit - columns @ fit) / np.var(logit)
    assert (r2 > 0.999) if additive else (r2 < 0.95)


def test_the_low_rank_shape_selects_through_the_user_x_item_product_only(tmp_path):
    """--shape lowrank: the true CTR is a function of the relevance level alone, the levels hold
    their shares, the lines carry the five fields and agree with the truth, and no additive model of
    user and item ids recovers the CTR logit (the selection lies in their product)."""
    meta = generate(tmp_path / "d", "--shape", "lowrank", "--selection-bias", "0.9", "--seed", "2", "--gzip")
    assert meta["shape"] == "lowrank" and meta["arguments"]["rank"] == 4
    again = generate(tmp_path / "e", "--shape", "lowrank", "--selection-bias", "0.9", "--seed", "2", "--gzip")
    assert meta == again and all((tmp_path / "d" / p).read_bytes() == (tmp_path / "e" / p).read_bytes()
                                 for p in ("train/part-00000.txt.gz", "truth/test.csv.gz"))
    import gzip
    with gzip.open(tmp_path / "d" / "train" / "part-00000.txt.gz", "rt") as f:
        lines = [line.rstrip("\n").split(",") for line in f]
    with gzip.open(tmp_path / "d" / "truth" / "train.csv.gz", "rt") as f:
        truth = list(csv.DictReader(f))
    assert len(lines) == len(truth) == 20000
    ranges = meta["id_ranges"]
    users, items = np.zeros(len(lines), dtype=int), np.zeros(len(lines), dtype=int)
    for row, (cols, t) in enumerate(zip(lines, truth)):
        assert cols[0] == t["sample_id"] and cols[1] == t["click"]
        assert int(cols[2]) == int(t["click"]) * int(t["potential_conversion"])
        fields = [token.split(":") for token in cols[3:]]
        assert [f for f, _ in fields] == ["101", "121", "205", "206", "301"]
        assert all(ranges[f][0] <= int(v) <= ranges[f][1] for f, v in fields)
        users[row], items[row] = int(fields[0][1]) - ranges["101"][0], int(fields[2][1]) - ranges["205"][0]
    true_ctr = np.array([float(t["true_ctr"]) for t in truth])
    levels, counts = np.unique(np.round(true_ctr, 5), return_counts=True)
    assert len(levels) == 5  # one CTR per relevance level
    np.testing.assert_allclose(counts[::1] / len(truth), [0.53, 0.24, 0.14, 0.06, 0.03], atol=0.015)
    train = meta["splits"]["train"]
    assert train["ctr"] == pytest.approx(0.04, abs=0.006) and train["selection_strength"] > 1.5
    logit = np.log(true_ctr / (1 - true_ctr))
    columns = np.zeros((len(lines), 300 + 500))
    columns[np.arange(len(lines)), users] = 1
    columns[np.arange(len(lines)), 300 + items] = 1
    fit, *_ = np.linalg.lstsq(columns, logit, rcond=None)
    assert 1 - np.var(logit - columns @ fit) / np.var(logit) < 0.6
    refused = subprocess.run([sys.executable, GENERATOR, "--shape", "lowrank", "--out", str(tmp_path / "f"),
                              "--hidden-confounding", "0.3"], capture_output=True, text=True)
    assert refused.returncode == 2 and "hidden_confounding does not apply to shape 'lowrank'" in refused.stderr


def test_the_model_readme_gives_the_command_that_made_the_bundled_sample():
    import os
    import shlex
    from conftest import MODEL_DIR
    from datasets.synthetic import generator
    with open(os.path.join(MODEL_DIR, "readme.md")) as f:
        (command,) = [line.strip() for line in f if line.strip().startswith("python datasets/synthetic/generate.py")]
    out, shape, _, given = generator.parse_arguments(shlex.split(command)[2:])
    with open(os.path.join(MODEL_DIR, "data", "meta.json")) as f:
        recorded = json.load(f)["arguments"]
    defaults = {key.name: key.default for key, _, _ in generator.PARAMETERS}
    assert out == "models/multitask/escm2/data" and shape == "truth"
    assert {k: given.get(k, defaults[k]) for k in recorded if k != "attribute_sizes"} == \
        {k: v for k, v in recorded.items() if k != "attribute_sizes"}

