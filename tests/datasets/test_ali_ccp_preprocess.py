"""datasets/ali_ccp/preprocess.py: raw Tianchi files to PaddleRec's lines, checked line by line."""
import collections
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import MODEL_DIR, REPO, run_tool
from rectools.errors import DataError, UserError

TOOL = os.path.join(REPO, "datasets", "ali_ccp", "preprocess.py")
_spec = importlib.util.spec_from_file_location("ali_ccp_preprocess", TOOL)
pre = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pre)

FIELDS = pre.default_fields()
S1, S2, S3 = "\x01", "\x02", "\x03"


def items(*pairs, value="1.0"):
    """feature_list of (field, feat) pairs, every separator of the raw format."""
    return S1.join(f"{field}{S2}{feat}{S3}{value}" for field, feat in pairs)


def write(path, lines, end="\n"):
    with open(path, "w", newline="") as f:
        f.write("".join(line + end for line in lines))
    return str(path)


def lines_of(path):
    with open(path) as f:
        return f.read().splitlines()


# A worked example. min_count 2, no dev rows. Training rows after the drop of row 4: 1 2 3 5 6.
#   205: 100 in rows 1, 2 (row 4 is dropped) -> 2; 101 and 102 once -> rare
#   301: 5 in rows 1, 5 -> 2; 6 once -> rare
#   101 (common): c1 joins rows 1, 2 and c3 row 5 -> 11: 3; c2 joins rows 3, 6 -> 12: 2
#   109_14 (common, c1 only): 50: 2, 51: 2 (a tie: ascending raw id)
# Ids in field order (config_schema.ALI_CCP_FIELDS): 101 -> rare 1, 11 -> 2, 12 -> 3;
# 109_14 -> rare 4, 50 -> 5, 51 -> 6; 110_14 .. 129 -> rare 7 .. 17; 205 -> rare 18, 100 -> 19;
# 206 .. 853 -> rare 20 .. 27; 301 -> rare 28, 5 -> 29; sparse_feature_number 30.
COMMON = ["c1,3," + items(("101", 11), ("109_14", 50)) + S1 + items(("109_14", 51), value="0.693147"),
          "c2,2," + items(("101", 12), ("999", 7)),  # 999 is not one of the 23 fields
          "c3,1," + items(("101", 11))]
SKELETON = ["1,0,0,c1,2," + items(("205", 100), ("301", 5)),
            "2,1,0,c1,2," + items(("205", 100), ("301", 6)),
            "3,1,1,c2,1," + items(("205", 101)),
            "4,0,1,c2,1," + items(("205", 100)),  # a purchase without a click: dropped
            "5,0,0,c3,2," + items(("205", 102), ("301", 5)),
            "6,1,0,c2,0,"]
TEST_COMMON = ["t1,2," + items(("101", 12), ("101", 99))]
TEST_SKELETON = ["7,1,0,t1,1," + items(("205", 100)),
                 "8,0,1,t1,1," + items(("205", 103)),
                 "9,0,0,t1,2," + items(("205", 101), ("888", 1))]


@pytest.fixture
def worked(tmp_path):
    paths = {"skeleton": write(tmp_path / "sample_skeleton_train.csv", SKELETON),
             "common": write(tmp_path / "common_features_train.csv", COMMON),
             "test_skeleton": write(tmp_path / "sample_skeleton_test.csv", TEST_SKELETON, end="\r\n"),
             "test_common": write(tmp_path / "common_features_test.csv", TEST_COMMON)}
    return tmp_path, paths


def test_worked_example_line_by_line(worked):
    tmp_path, paths = worked
    out = tmp_path / "out"
    meta = pre.preprocess(out=str(out), min_count=2, dev_fraction=0, **paths)
    assert lines_of(out / "train_data" / "part-00000.txt") == [
        "1,0,0,205:19,301:29,101:2,109_14:5,109_14:6",
        "2,1,0,205:19,301:28,101:2,109_14:5,109_14:6",
        "3,1,1,205:18,101:3",
        "5,0,0,205:18,301:29,101:2",
        "6,1,0,101:3"]
    assert lines_of(out / "dev_data" / "part-00000.txt") == []
    # test ids unseen in training (205:103 is dropped with its row, 101:99) take the rare id
    assert lines_of(out / "test_data" / "part-00000.txt") == ["7,1,0,205:19,101:3,101:1", "9,0,0,205:18,101:3,101:1"]
    vocab = lines_of(out / "vocab.tsv")
    assert vocab[:7] == ["id\tfield\tfeat_id\tcount", "1\t101\trare\t0", "2\t101\t11\t3", "3\t101\t12\t2",
                         "4\t109_14\trare\t0", "5\t109_14\t50\t2", "6\t109_14\t51\t2"]
    assert vocab[7:18] == [f"{i}\t{f}\trare\t0" for i, f in zip(range(7, 18), FIELDS[2:13])]
    assert vocab[18:20] == ["18\t205\trare\t2", "19\t205\t100\t2"]
    assert vocab[-2:] == ["28\t301\trare\t1", "29\t301\t5\t2"]
    assert len(vocab) == 1 + 29
    assert meta["sparse_feature_number"] == 30
    assert meta["splits"] == {"train": {"rows": 5, "clicks": 3, "buys": 1}, "dev": {"rows": 0, "clicks": 0, "buys": 0},
                              "test": {"rows": 2, "clicks": 1, "buys": 0}}
    assert meta["dropped_click0_buy1"] == {"train": 1, "dev": 0, "test": 1}
    assert meta["skipped_field_items"] == {"skeleton": {}, "common": {"999": 1}, "test_skeleton": {"888": 1},
                                           "test_common": {}}
    assert meta["field_ids"]["205"] == {"rare_id": 18, "last_id": 19, "frequent_ids": 1, "rare_distinct_ids": 2}
    with open(out / "meta.json") as f:
        assert json.load(f) == meta
    assert sorted(os.listdir(tmp_path)) == sorted([*map(os.path.basename, paths.values()), "out"])  # no leftovers


def test_output_trains_and_evaluates_with_the_tools(worked):
    tmp_path, paths = worked
    out = tmp_path / "out"
    meta = pre.preprocess(out=str(out), min_count=1, dev_fraction=0, **paths)
    overrides = ["-o", f"runner.train_data_dir={out / 'train_data'}", f"runner.test_data_dir={out / 'test_data'}",
                 f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
                 f"runner.model_save_path={tmp_path / 'model'}", "runner.epochs=1", "runner.train_batch_size=2",
                 "hyper_parameters.max_len=2"]
    config = os.path.join(MODEL_DIR, "config_bigdata.yaml")
    for tool in ("trainer.py", "infer.py"):
        result = run_tool(tool, "-m", config, *overrides, cwd=str(tmp_path))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(tmp_path / "model" / "train_metrics.jsonl") as f:
        assert json.loads(f.readline())["samples"] == meta["splits"]["train"]["rows"]
    with open(tmp_path / "model" / "infer_metrics.jsonl") as f:
        assert json.loads(f.readline())["samples"] == meta["splits"]["test"]["rows"]


@pytest.mark.parametrize("which, line, expected", [
    ("skeleton", "7,0,0,c9,0,", "sample_skeleton_train.csv:7: common_feature_index 'c9' is not in"),
    ("skeleton", "7,0,0,c1,1,205" + S2 + "100", "sample_skeleton_train.csv:7: feature item 1 of 1 is not"),
    ("skeleton", "7,0,0,c1,2," + items(("205", 1)) + S1 + "205" + S2 + "x" + S3 + "1.0",
     "sample_skeleton_train.csv:7: feature item 2 of 2 is not"),
    ("skeleton", "7,0,0,c1,1,205" + S2 + "1" + S3 + "high", "sample_skeleton_train.csv:7: feature item 1 of 1"),
    ("skeleton", "7,2,0,c1,0,", "sample_skeleton_train.csv:7: click and buy must be 0 or 1, got click='2'"),
    ("skeleton", "7,1,yes,c1,0,", "sample_skeleton_train.csv:7: click and buy must be 0 or 1"),
    ("skeleton", "7,1,0,c1,0", "sample_skeleton_train.csv:7: expected 6 columns"),
    ("skeleton", "7,1,0,c1,3," + items(("205", 1), ("301", 2)), "sample_skeleton_train.csv:7: feature_num is 3 but "
                                                                "feature_list holds 2 item(s)"),
    ("skeleton", "x7,1,0,c1,0,", "sample_skeleton_train.csv:7: sample_id is not a non-negative integer"),
    ("common", "c4,1," + items(("101", 1)) + ",extra", "common_features_train.csv:4: expected 3 columns"),
    ("common", "c4,2," + items(("101", 1)), "common_features_train.csv:4: feature_num is 2"),
    ("common", "c1,0,", "common_features_train.csv:4: common_feature_index 'c1' appears a second time"),
    ("common", "c4,1,101" + S3 + "1" + S2 + "1.0", "common_features_train.csv:4: feature item 1 of 1 is not"),
])
def test_malformed_input_is_refused_with_file_and_line(worked, which, line, expected):
    tmp_path, paths = worked
    source = SKELETON if which == "skeleton" else COMMON
    write(paths[which], source + [line])
    with pytest.raises(DataError) as caught:
        pre.preprocess(out=str(tmp_path / "out"), min_count=2, dev_fraction=0, **paths)
    assert str(caught.value).startswith(os.path.join(str(tmp_path), "")) and expected in str(caught.value)
    assert not os.path.exists(tmp_path / "out")
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary folder left


def test_missing_common_row_in_the_test_split_names_the_test_file(worked):
    tmp_path, paths = worked
    write(paths["test_skeleton"], TEST_SKELETON + ["10,0,0,t2,0,"])
    with pytest.raises(DataError, match=r"sample_skeleton_test.csv:4: common_feature_index 't2' is not in .*"
                                        r"common_features_test.csv"):
        pre.preprocess(out=str(tmp_path / "out"), **paths)
    assert not os.path.exists(tmp_path / "out")


def test_an_existing_output_is_replaced_only_with_force(worked):
    tmp_path, paths = worked
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="pass --force"):
        pre.preprocess(out=str(out), **paths)
    assert (out / "mine.txt").read_text() == "keep me"
    pre.preprocess(out=str(out), force=True, **paths)
    assert sorted(os.listdir(out)) == ["dev_data", "meta.json", "test_data", "train_data", "vocab.tsv"]


def random_raw(folder, seed, n_common=25, n_rows=400):
    """Raw files with skewed ids (some frequent, many rare), other fields, dropped rows."""
    rng = random.Random(seed)
    common, rows = {}, []
    for c in range(n_common):
        pairs = [("101", c), ("124", rng.randint(1, 3))]
        pairs += [("109_14", rng.choice([1, 1, 2, 3, rng.randint(4, 500)])) for _ in range(rng.randint(0, 6))]
        pairs += [("777", rng.randint(1, 9))] * rng.randint(0, 2)
        common[f"u{c:03d}"] = pairs
    sample_id = 100
    for cidx in common:  # grouped by common row, as the real skeleton is
        for _ in range(rng.randint(5, 30)):
            sample_id += rng.randint(1, 3)
            click = int(rng.random() < 0.3)
            buy = int(rng.random() < 0.3) if click else int(rng.random() < 0.05)
            pairs = [("205", rng.choice([7, 7, 8, 9, rng.randint(10, 900)]))]
            pairs += [("210", rng.randint(1, 6)) for _ in range(rng.randint(0, 3))]
            pairs += [("301", rng.randint(1, 3)), ("666", 1)][: rng.randint(1, 2)]
            rows.append((sample_id, click, buy, cidx, pairs))
            if len(rows) == n_rows:
                break
        if len(rows) == n_rows:
            break
    write(folder / "common.csv", [f"{c},{len(p)},{items(*p)}" for c, p in common.items()])
    write(folder / "skeleton.csv", [f"{s},{c},{b},{x},{len(p)},{items(*p)}" for s, c, b, x, p in rows])
    return str(folder / "skeleton.csv"), str(folder / "common.csv"), common, rows


def read_vocab(path):
    vocab = {}
    for line in lines_of(path)[1:]:
        new_id, field, feat, count = line.split("\t")
        vocab[int(new_id)] = (field, feat, int(count))
    return vocab


def test_random_rows_decode_back_to_their_raw_features(tmp_path):
    skeleton, common_path, common, rows = random_raw(tmp_path, seed=3)
    out = tmp_path / "out"
    meta = pre.preprocess(skeleton, common_path, str(out), min_count=3, dev_fraction=0.25, seed=5)
    vocab = read_vocab(out / "vocab.tsv")
    rare = {field: new_id for new_id, (field, feat, _) in vocab.items() if feat == "rare"}
    frequent = {(field, feat): new_id for new_id, (field, feat, _) in vocab.items() if feat != "rare"}
    written = {}
    for split in ("train", "dev"):
        for line in lines_of(out / f"{split}_data" / "part-00000.txt"):
            cols = line.split(",")
            written[int(cols[0])] = (split, cols[1:3], cols[3:])
    raw = {s: (c, b, x, p) for s, c, b, x, p in rows}
    dropped = {s for s, (c, b, _, _) in raw.items() if c == 0 and b == 1}
    assert set(written) == set(raw) - dropped and dropped
    # the training rows' occurrences, counted here from the raw rows
    counts = collections.Counter()
    for s, (split, _, _) in written.items():
        if split == "train":
            _, _, cidx, pairs = raw[s]
            counts.update((f, str(v)) for f, v in pairs + common[cidx] if f in FIELDS)
    assert {key for key, n in counts.items() if n >= 3} == set(frequent)
    for (field, feat), new_id in frequent.items():
        assert vocab[new_id][2] == counts[(field, feat)]
    for field in FIELDS:  # per field: one rare id, then descending counts, ties by ascending raw id
        ids = sorted(i for (f, _), i in frequent.items() if f == field)
        assert ids == list(range(rare[field] + 1, rare[field] + 1 + len(ids)))
        order = [(-vocab[i][2], int(vocab[i][1])) for i in ids]
        assert order == sorted(order)
        assert vocab[rare[field]][2] == sum(n for (f, _), n in counts.items() if f == field and n < 3)
    assert meta["sparse_feature_number"] == max(vocab) + 1
    for s, (split, labels, tokens) in written.items():
        click, buy, cidx, pairs = raw[s]
        assert labels == [str(click), str(buy)]
        expected = [f"{f}:{frequent.get((f, str(v)), rare[f])}" for f, v in pairs + common[cidx] if f in FIELDS]
        assert tokens == expected, s
    dev = sum(1 for split, _, _ in written.values() if split == "dev")
    assert 0.15 < dev / len(written) < 0.35
    assert meta["splits"]["dev"]["rows"] == dev
    assert meta["dropped_click0_buy1"]["train"] + meta["dropped_click0_buy1"]["dev"] == len(dropped)
    assert sum(meta["skipped_field_items"]["skeleton"].values()) == sum(
        1 for _, _, _, _, p in rows for f, _ in p if f not in FIELDS)


def test_the_dev_split_is_reproducible_by_seed(tmp_path):
    skeleton, common, _, _ = random_raw(tmp_path, seed=4)
    outputs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        pre.preprocess(skeleton, common, str(tmp_path / name), min_count=2, dev_fraction=0.3, seed=seed)
        outputs[name] = [lines_of(tmp_path / name / f"{s}_data" / "part-00000.txt") for s in ("train", "dev")]
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_the_command_line(tmp_path):
    skeleton, common, _, _ = random_raw(tmp_path, seed=6)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, TOOL, "--skeleton", skeleton, "--common", common, "--out", str(out),
                             "--min-count", "2", "--dev-fraction", "0.2", "--seed", "9"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(out / "meta.json") as f:
        meta = json.load(f)
    assert f"sparse_feature_number: {meta['sparse_feature_number']}" in result.stdout
    assert f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}" in result.stdout
    assert "pass 1/2 (count): 400 rows in" in result.stdout and (meta["min_count"], meta["seed"]) == (2, 9)
    with open(skeleton, "a") as f:
        f.write("1,1,0,nowhere,0,\n")
    result = subprocess.run([sys.executable, TOOL, "--skeleton", skeleton, "--common", common, "--out",
                             str(tmp_path / "again")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == f"error: {skeleton}:401: common_feature_index 'nowhere' is not in {common}\n"
    assert not os.path.exists(tmp_path / "again")


def test_max_len_writes_the_first_ids_of_each_field_and_counts_the_rest(worked, tmp_path):
    _, paths = worked
    meta = pre.preprocess(out=str(tmp_path / "out"), min_count=2, dev_fraction=0, max_len=1, **paths)
    assert lines_of(tmp_path / "out" / "train_data" / "part-00000.txt") == [
        "1,0,0,205:19,301:29,101:2,109_14:5",
        "2,1,0,205:19,301:28,101:2,109_14:5",
        "3,1,1,205:18,101:3",
        "5,0,0,205:18,301:29,101:2",
        "6,1,0,101:3"]
    assert lines_of(tmp_path / "out" / "test_data" / "part-00000.txt") == ["7,1,0,205:19,101:3", "9,0,0,205:18,101:3"]
    assert meta["truncated_ids"] == {"109_14": 2, "101": 2}
    assert meta["sparse_feature_number"] == 30  # the vocabulary counts every id, written or not


def test_max_len_counts_a_field_found_in_both_files_once_per_line(tmp_path):
    # 101 in the skeleton row (12, 13) and in its common row (11): the line's first two are kept
    common = write(tmp_path / "common.csv", ["c1,1," + items(("101", 11))])
    skeleton = write(tmp_path / "skeleton.csv", ["1,1,0,c1,2," + items(("101", 12), ("101", 13)),
                                                 "2,0,0,c1,1," + items(("205", 5))])
    full = pre.preprocess(skeleton, common, str(tmp_path / "full"), min_count=1, dev_fraction=0)
    cut = pre.preprocess(skeleton, common, str(tmp_path / "cut"), min_count=1, dev_fraction=0, max_len=2)
    # 101: rare 1; 11 (count 2) -> 2; 12, 13 (count 1 each) -> 3, 4; 109_14 .. 129: rare 5 .. 16; 205: rare 17, 5 -> 18
    assert lines_of(tmp_path / "full" / "train_data" / "part-00000.txt") == ["1,1,0,101:3,101:4,101:2",
                                                                              "2,0,0,205:18,101:2"]
    assert lines_of(tmp_path / "cut" / "train_data" / "part-00000.txt") == ["1,1,0,101:3,101:4", "2,0,0,205:18,101:2"]
    assert (full["truncated_ids"], cut["truncated_ids"]) == ({}, {"101": 1})
