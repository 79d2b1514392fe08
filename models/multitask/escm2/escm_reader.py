"""The model's reader of Ali-CCP in PaddleRec's line format (`train_reader_path: escm_reader`, as
in PaddleRec): the data set's reader (datasets/ali_ccp/lines.py, where the format, its two parsers
and its errors are described) bound to the model's fields, max_len and sparse_feature_number."""
from datasets.ali_ccp.lines import LinesReader

from .fields import reader_options


class RecDataset(LinesReader):
    """Ali-CCP lines of `file_list` as chunks: ids int64 [n, fields, max_len] (0 pads), click, buy,
    sample_id int64 [n]. `config` gives hyper_parameters.fields, max_len, sparse_feature_number and
    runner.cache_dir; `processes`: parse workers (None: one per core; 0: in this thread). Raises
    DataError naming file and line for malformed data."""

    def __init__(self, file_list, config, chunk_lines=8192, processes=None):
        super().__init__(file_list, **reader_options(config), chunk_lines=chunk_lines, processes=processes)
