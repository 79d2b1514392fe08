"""What the net's sizes take in memory, as lower bounds (rectools.limits refuses those beyond the
machine's): a config asking for more fails when it is read, naming the key, not mid-run."""
from rectools.errors import ConfigError

FLOAT = 4  # bytes of a float32 parameter or activation
ID = 8  # bytes of an int64 id in a batch
ADAM = 3  # a trained parameter, and Adam's two moments of it
ID_LIMIT = 2 ** 31  # the largest vocabulary supported: ids in the int32 range (such a table takes >= 100 GB anyway)


def needs(config):
    """[(key, bytes, how)] (rectools.limits.check_memory) of the parts of the net and its batches whose size a key sets, each a
    lower bound of the memory training takes. Raises ConfigError for a vocabulary of 2^31 ids or
    more."""
    hp = lambda key: config[f"hyper_parameters.{key}"]  # noqa: E731
    vocab, dim, max_len, fields = hp("sparse_feature_number"), hp("sparse_feature_dim"), hp("max_len"), len(hp("fields"))
    if vocab >= ID_LIMIT:
        raise ConfigError(f"{config.path}: hyper_parameters.sparse_feature_number is {vocab}, beyond 2^31 - 1 = "
                          f"{ID_LIMIT - 1}, the largest vocabulary supported (int32 ids)")
    found = [("hyper_parameters.sparse_feature_number x sparse_feature_dim", vocab * dim * FLOAT * ADAM,
              f"the embedding table, {vocab} x sparse_feature_dim {dim} x {FLOAT} bytes, x {ADAM} with Adam's moments")]
    batch = max(config["runner.train_batch_size"], config["runner.infer_batch_size"])
    found.append(("hyper_parameters.max_len", batch * fields * max_len * (ID + dim * FLOAT),
                  f"a batch's ids and their embeddings, {batch} x {fields} fields x {max_len} x ({ID} + {dim} x "
                  f"{FLOAT}) bytes"))
    if hp("backbone") == "mlp":
        for key in ("ctr_fc_sizes", "cvr_fc_sizes"):
            widths = [fields * dim, *hp(key), 1]
            weights = sum(a * b for a, b in zip(widths, widths[1:]))
            found.append((f"hyper_parameters.{key}", weights * FLOAT * ADAM,
                          f"the tower's {weights} weights x {FLOAT} bytes x {ADAM} with Adam's moments"))
    return found
