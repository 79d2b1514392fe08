"""runner.propensity_file's reading: the join by sample_id and every way a file can be wrong."""
import numpy as np
import pytest

from rectools.errors import ConfigError, DataError, UserError
from rectools.propensity import Propensities, WithPropensity


def write(tmp_path, text, name="propensity.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_predictions_of_tools_predict_serve_as_they_are_and_join_by_sample_id(tmp_path):
    path = write(tmp_path, "sample_id,pctr,pcvr,pctcvr\n30,0.25,0.5,0.125\n10,0.5,0.1,0.05\n20,1,0.1,0.1\n")
    propensities = Propensities(path)
    assert propensities.column == "pctr" and len(propensities) == 3
    np.testing.assert_array_equal(propensities.lookup(np.array([20, 30, 10, 30]), ["data"]),
                                  np.array([1.0, 0.25, 0.5, 0.25], np.float32))


def test_a_propensity_column_is_preferred_to_pctr_and_ids_stay_exact_beyond_float_precision(tmp_path):
    big = 2 ** 62 + 1  # not a float64
    path = write(tmp_path, f"pctr,sample_id,propensity\n0.9,{big},0.125\r\n0.9,{big - 1},0.5\r\n")
    propensities = Propensities(path)
    assert propensities.column == "propensity"
    assert propensities.lookup(np.array([big, big - 1]), ["data"]).tolist() == [0.125, 0.5]


class Chunks:
    file_list = ["a.txt"]

    def chunks(self):
        yield {"sample_id": np.array([2, 1]), "click": np.array([1, 0])}
        yield {"sample_id": np.array([3]), "click": np.array([0])}

    def layout(self):
        return {"kept": True}

    def size(self):
        return 3


def test_a_reader_with_propensities_adds_the_column_and_is_otherwise_the_reader(tmp_path):
    reader = WithPropensity(Chunks(), Propensities(write(tmp_path, "sample_id,propensity\n1,0.5\n2,0.25\n3,1\n")))
    chunks = list(reader.chunks())
    assert [c["propensity"].tolist() for c in chunks] == [[0.25, 0.5], [1.0]]
    assert chunks[0]["click"].tolist() == [1, 0] and reader.layout() == {"kept": True} and reader.size() == 3


def test_a_training_impression_without_a_propensity_is_named(tmp_path):
    reader = WithPropensity(Chunks(), Propensities(write(tmp_path, "sample_id,propensity\n1,0.5\n2,0.25\n")))
    with pytest.raises(UserError, match=r"propensity\.csv has no propensity for sample_id 3 of a\.txt"):
        list(reader.chunks())


@pytest.mark.parametrize("body, line, message", [
    ("1,0.5\n2,0\n", 3, "propensity '0' is not a probability in (0, 1]"),
    ("1,0.5\n2,1.5\n", 3, "propensity '1.5' is not a probability in (0, 1]"),
    ("1,nan\n", 2, "propensity 'nan' is not a probability"),
    ("1,high\n", 2, "propensity 'high' is not a probability"),
    ("1,0.5,7\n", 2, "3 columns, the header has 2"),
    ("1,0.5\n\n2,0.5,3\n", 4, "3 columns, the header has 2"),
    ("1,0.5,7\n2,0.5\n3\n", 2, "3 columns, the header has 2"),  # widths that make up for each other
    ("1.5,0.5\n", 2, "sample_id '1.5' is not an int64"),
    ("1_0,0.5\n", 2, "sample_id '1_0' is not an int64"),
    ("9223372036854775808,0.5\n", 2, "sample_id '9223372036854775808' is not an int64"),
    ("1,0.5\n2,0.1_5\n", 3, "propensity '0.1_5' is not a probability"),
    ("7,0.5\n8,0.5\n7,0.25\n", 4, "sample_id 7 again (line 2 has it;"),
    ("1,0.5#note\n", 2, "propensity '0.5#note' is not a probability"),  # no comment character
    ("1,0.5\n#,0.5\n", 3, "sample_id '#' is not an int64"),
    ("1,0.5\n2\r,0.5\n", 3, "a carriage return inside the line"),
    ("1,0.5\n2,1e-50\n", 3, "propensity '1e-50' is not a probability in (0, 1] as float32"),
    ("1,0.5\n,0.5\n", 3, "sample_id '' is not an int64"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path, "sample_id,propensity\n" + body)
    with pytest.raises(DataError) as error:
        Propensities(path)
    assert (error.value.path, error.value.line_no) == (path, line) and message in error.value.message


@pytest.mark.parametrize("text, message", [
    ("sample_id,pcvr\n1,0.5\n", "the header needs sample_id and one of propensity, pctr"),
    ("id,propensity\n1,0.5\n", "the header needs sample_id"),
    ("sample_id,propensity\n", "holds no propensities"),
])
def test_a_file_without_the_columns_or_any_value_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match="runner.propensity_file: .*" + message):
        Propensities(write(tmp_path, text))


def test_a_missing_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=f"runner.propensity_file: cannot read {tmp_path}/none.csv"):
        Propensities(str(tmp_path / "none.csv"))


def test_a_gzipped_file_a_byte_order_mark_and_blank_lines_read_as_the_data_reader_reads_them(tmp_path):
    import gzip
    text = "\ufeffsample_id,propensity\r\n1,0.5\r\n\r\n2,0.25\r\n\r\n"
    with gzip.open(tmp_path / "given.csv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    for path in (write(tmp_path, text), str(tmp_path / "given.csv.gz")):
        assert Propensities(path).lookup(np.array([2, 1]), ["data"]).tolist() == [0.25, 0.5]
    (tmp_path / "plain.csv").write_bytes((tmp_path / "given.csv.gz").read_bytes())  # gzipped, not so named
    with pytest.raises(ConfigError, match="plain.csv:1: not a UTF-8 CSV header"):
        Propensities(str(tmp_path / "plain.csv"))


def test_a_header_that_names_a_column_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="the header names propensity twice"):
        Propensities(write(tmp_path, "sample_id,propensity,propensity\n1,0.5,0.25\n"))


def test_lines_are_numbered_alike_across_the_blocks_the_file_is_read_in(tmp_path, monkeypatch):
    import rectools.propensity as module
    monkeypatch.setattr(module, "BLOCK_BYTES", 7)  # a block or two per line
    body = "".join(f"{i},0.5\n" for i in range(-3, 40)) + "\r\n\n77,0.25"  # negative ids; no final newline
    propensities = Propensities(write(tmp_path, "sample_id,propensity\n" + body))
    assert len(propensities) == 44
    assert propensities.lookup(np.array([77, -3, 39]), ["data"]).tolist() == [0.25, 0.5, 0.5]
    with pytest.raises(DataError) as error:
        Propensities(write(tmp_path, "sample_id,propensity\n" + body + "\n5,2\n", "bad.csv"))
    assert error.value.line_no == 48 and "propensity '2'" in error.value.message  # 43 lines, 2 blank, 77, then 5
    with pytest.raises(UserError, match=r"no propensity for sample_id -4 of a and 2 more file"):
        propensities.lookup(np.array([0, -4]), ["a", "b", "c"])  # below the smallest id
    with pytest.raises(UserError, match="no propensity for sample_id 78"):
        propensities.lookup(np.array([78]), ["a"])  # above the largest


def test_a_blank_first_line_is_not_taken_for_an_empty_file(tmp_path):
    with pytest.raises(ConfigError, match=":1: the line is blank; the header must come first"):
        Propensities(write(tmp_path, "\nsample_id,propensity\n1,0.5\n"))
    with pytest.raises(ConfigError, match="propensity.csv is empty"):
        Propensities(write(tmp_path, ""))
