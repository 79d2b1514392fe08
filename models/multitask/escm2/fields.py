"""What this model reads of a data set, from its config: the fields (hyper_parameters.fields, read
here only), ids kept per field, the embedding table's rows and the cache folder."""
from rectools import cache


def fields(config):
    """The field names the model reads, in input order (hyper_parameters.fields): list of str."""
    return list(config["hyper_parameters.fields"])


def reader_options(config):
    """Keyword arguments binding a data set's reader to this model: fields, max_len (ids kept per
    field), vocab (embedding rows: every id must be below it), cache_dir and cache_limit (bytes its
    entries may take, runner.cache_max_gb; rectools.cache)."""
    return {"fields": fields(config), "max_len": config["hyper_parameters.max_len"],
            "vocab": config["hyper_parameters.sparse_feature_number"], "cache_dir": cache.cache_dir(config),
            "cache_limit": cache.max_bytes(config)}
