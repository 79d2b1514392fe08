"""The model's reader of Ali-CCP as a column CSV (`train_reader_path: csv_reader`), the layout of
AITM's and torch-rechub's preprocessing: the data set's reader (datasets/ali_ccp/csv_format.py,
where the format and the id numbering are described) bound to the model's fields, with the field
sizes taken from every file of runner.train_data_dir, for training and for evaluation alike."""
import logging

from datasets.ali_ccp.csv_format import ColumnCsvReader
from rectools.data import data_files
from rectools.errors import ConfigError

from .fields import reader_options

log = logging.getLogger(__name__)


class RecDataset(ColumnCsvReader):
    """Chunks of column-CSV files: ids int64 [n, fields, max_len] (the id in column 0), click, buy,
    sample_id int64 [n] (the row's number across the files). Raises ConfigError without
    runner.train_data_dir or when hyper_parameters.sparse_feature_number is below the rows the
    training files' ids need (naming the number to set); DataError (file and line) for bad data."""

    def __init__(self, file_list, config, chunk_lines=8192):
        if not config.get("runner.train_data_dir"):
            raise ConfigError(f"{config.path}: csv_reader numbers each field's ids from the training files: "
                              f"runner.train_data_dir is required, for evaluation too")
        train_files = data_files(config["runner.train_data_dir"], "runner.train_data_dir")
        options = reader_options(config)
        super().__init__(file_list, options["fields"], options["max_len"], train_files, options["cache_dir"],
                         chunk_lines, cache_limit=options["cache_limit"])
        table = options["vocab"]
        if table < self.rows_needed:
            raise ConfigError(f"{config.path}: hyper_parameters.sparse_feature_number is {table}, but the ids of "
                              f"{len(train_files)} training file(s) need {self.rows_needed} rows (1 + the sum of "
                              f"each field's 1 + largest id): set -o hyper_parameters.sparse_feature_number="
                              f"{self.rows_needed}")
        log.info("csv_reader: field sizes %s from %d training file(s): %d table rows used of %d",
                 dict(zip(self.fields, self.sizes.tolist())), len(train_files), self.rows_needed, table)
