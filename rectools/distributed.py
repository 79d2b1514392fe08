"""Several processes on one model: data-parallel training, sharded evaluation and prediction over
paddle.distributed's collectives (gloo on CPUs, NCCL on GPUs), for processes started by

    python -m paddle.distributed.launch --nproc_per_node N tools/trainer.py -m CONFIG -o runner.use_fleet=True

A `Group` is the processes of one job as the loops (rectools.loops) see them; `LOCAL` is one
process alone. The rules, for N processes of ranks 0 .. N-1:

* Shard: batch n of an epoch (numbered in the single-process order) belongs to rank n mod N
  (rectools.data.Shard), so each sample is trained on or scored by exactly one rank per epoch and
  the ranks' shares differ by at most one batch, however the samples are spread over files. Every
  rank must read the same files (a shared folder, or identical copies on each machine): they are
  compared by name and size when a run starts. Each rank reads the whole stream and keeps its
  batches (the reader contract has no row ranges); the parsed-array cache makes that re-reading
  cheap after a file's first pass.
* Training steps run in rounds, one batch per rank (gradients are averaged over the ranks by
  paddle.DataParallel, rectools.engines). Before each step the ranks exchange whether they still
  hold a batch (one all-reduce of N flags). In the last round of an epoch only ranks 0 .. m-1
  (m < N) may hold one: they weight their loss by N/m, and every other rank runs a stand-in
  step, rank 0's first sample with loss weight 0. The averaged gradient is then the mean of the m
  real batches' gradients, and the stand-in adds no embedding row of its own (its rows are among
  rank 0's), so a lazy optimizer updates exactly the rows the real batches touch. Nothing is
  dropped or repeated: the stand-in's predictions and loss are not counted.
* Metrics: each rank's epoch predictions are all-gathered, a round of batches at a time, and put
  back into the single-process batch order before the model's summarize_metrics, so the epoch's
  metrics (exact AUCs included) are those of one process reading the same data; loss terms are
  per-sample means over every rank's samples (sums and counts all-reduced).
* Rank 0 alone claims runner.model_save_path, writes checkpoints, records and prediction files,
  and logs at INFO; the others log warnings and errors only. A rank that fails prints its one
  error line and exits non-zero; paddle.distributed.launch then stops the other ranks (they may
  wait in a collective until it does) and exits non-zero itself.
"""
import contextlib
import hashlib
import io
import logging
import os
import re
import sys

import numpy as np

from . import metrics
from .cache import fingerprint
from .data import Shard
from .device import collective, dygraph_mode, launched_processes, place
from .errors import ConfigError, UserError

log = logging.getLogger("rectools")


class Group:
    """The `size` processes of a job as seen from the one of rank `rank` (0 <= rank < size).

    Every method that communicates must be called by every rank, in the same order (they are
    collectives); with size 1 none communicates.
    """

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size
        self.shard = Shard(rank, size)

    @property
    def main(self):
        """True on rank 0, the process that writes outputs and logs progress."""
        return self.rank == 0

    def __repr__(self):
        return f"Group(rank={self.rank}, size={self.size})"

    # -- collectives -------------------------------------------------------------------------------

    def all_gather(self, value):
        """[value of rank 0, ..., value of rank N-1] of any picklable value."""
        if self.size == 1:
            return [value]
        import paddle.distributed as dist
        values = []
        # Paddle's object collectives run in dygraph only (static infer calls them too)
        with dygraph_mode(), collective():
            dist.all_gather_object(values, value)
        return values

    def sum(self, values):
        """{name: float} summed over the ranks, in float64; a name some rank lacks counts 0 there."""
        if self.size == 1:
            return dict(values)
        names = sorted(set().union(*self.all_gather(sorted(values))))
        return dict(zip(names, self._all_reduce(np.array([values.get(k, 0.0) for k in names], dtype=np.float64)).tolist()))

    def _all_reduce(self, array):
        """A float64 array summed element-wise over the ranks."""
        if self.size == 1:
            return array
        import paddle
        import paddle.distributed as dist
        with dygraph_mode(), collective():
            total = paddle.to_tensor(array)
            dist.all_reduce(total)
            return total.numpy()

    def barrier(self):
        """Wait until every rank has reached this call."""
        if self.size > 1:
            import paddle.distributed as dist
            with dygraph_mode(), collective():
                dist.barrier()

    # -- what the loops use ------------------------------------------------------------------------

    def gather(self, batch_size):
        """A rectools.contract.Gather for epochs cut into batches of `batch_size`: this rank's
        predictions (a rectools.metrics.Columns or {name: 1-D array [n_rank]}, its batches in
        order) -> every rank's, in the single-process batch order, as a Columns of n = sum of
        n_rank rows. Gathered in rounds of whole batches (~CHUNK_ROWS rows a rank, one all-gather
        each) into a spilling Accumulator, so that memory stays bounded however long the epoch.
        None with one process (nothing to do)."""
        if self.size == 1:
            return None

        def gather(predictions):
            columns = metrics.Columns.of(predictions)
            shares = self.all_gather((sorted(columns), columns.rows))
            names, rows = sorted(set().union(*(n for n, _ in shares))), max(r for _, r in shares)
            per_round = max(1, metrics.CHUNK_ROWS // batch_size) * batch_size
            mine = columns.chunks(*names, rows=per_round)
            merged = metrics.Accumulator()
            for _ in range(0, rows, per_round):  # batches r, r+N, ... of a round are a whole span of the epoch
                part = next(mine, None)
                parts = self.all_gather(None if part is None else dict(zip(names, part)))
                merged.add(**interleave([[p and p[name] for p in parts] for name in names], names, batch_size))
            return merged.arrays()
        return gather

    def lockstep(self, batches):
        """The training steps of this rank: (batch, loss weight) per round, from its shard's
        `batches`, with the last round's rule of the module docstring. A weight of 0 marks a
        stand-in step, whose predictions and loss are not to be counted.

        Raises UserError when the ranks' shards do not fit the shard rule (ranks reading
        different data)."""
        batches = iter(batches)
        if self.size == 1:
            yield from ((batch, 1.0) for batch in batches)
            return
        last_round = False
        while True:
            batch = next(batches, None)
            holding = self.holding(batch is not None)
            count = sum(holding)
            if count == 0:
                return
            if last_round or holding != [True] * count + [False] * (self.size - count):
                raise UserError(f"the processes' shares of the data do not fit the shard rule (batches held "
                                f"in one round by ranks {[r for r, h in enumerate(holding) if h]}, after "
                                f"a last round: {last_round}): every process must read the same files")
            if count == self.size:
                yield batch, 1.0
                continue
            last_round = True
            first = self.first_sample(batch)
            yield (batch, self.size / count) if batch is not None else (first, 0.0)

    def holding(self, has_batch):
        """[does rank r hold a batch this round, for r in 0 .. N-1]: one all-reduce of N flags."""
        flags = np.zeros(self.size, dtype=np.float64)
        flags[self.rank] = float(has_batch)
        return [bool(flag) for flag in self._all_reduce(flags)]

    def first_sample(self, batch):
        """Rank 0's first sample ({name: array [1, ...]}) on every rank; rank 0 passes its batch."""
        import paddle.distributed as dist
        box = [{k: v[:1] for k, v in batch.items()} if self.main else None]
        with dygraph_mode():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def in_order(self, items):
        """Rank 0 yields every rank's items in the single-process order (round by round: rank 0's,
        rank 1's, ...); the other ranks yield nothing. `items`: this rank's, one per batch of its
        shard, picklable. One all-gather per round: memory stays at N items."""
        items = iter(items)
        if self.size == 1:
            yield from items
            return
        while True:
            held = self.all_gather(next(items, None))
            if all(item is None for item in held):
                return
            if self.main:
                yield from (item for item in held if item is not None)

    def check_data(self, files):
        """Refuse a job whose ranks read different data: `files` (paths) compared by name, size and
        content fingerprint (rectools.cache.fingerprint: sampled blocks of each file)."""
        if self.size == 1:
            return
        mine = [(os.path.basename(f), os.path.getsize(f), fingerprint(f)) for f in files]
        everyone = self.all_gather(mine)
        for rank, theirs in enumerate(everyone):
            theirs = [tuple(item) for item in theirs]
            if [item[:2] for item in theirs] != [item[:2] for item in mine]:
                raise ConfigError(f"rank {rank} reads other data files than rank {self.rank} "
                                  f"({len(theirs)} files, {sum(s for _, s, _ in theirs)} bytes against {len(mine)}, "
                                  f"{sum(s for _, s, _ in mine)}): every process must read the same files")
            differ = [name for (name, _, a), (_, _, b) in zip(mine, theirs) if a != b]
            if differ:
                raise ConfigError(f"rank {rank} reads other data than rank {self.rank}: {', '.join(differ[:3])} "
                                  f"{'has' if len(differ) == 1 else 'have'} the same name and size but other content "
                                  f"on the two: every process must read the same files")

    def check_parameters(self, parameters):
        """Raise RuntimeError unless every rank holds the same `parameters` ({name: array}), compared
        by the sha256 of each array's bytes; returns the digest of all of them."""
        digests = {name: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
                   for name, value in sorted(parameters.items())}
        whole = hashlib.sha256("".join(digests.values()).encode()).hexdigest()
        if self.size == 1:
            return whole
        differing = sorted({name for theirs in self.all_gather(digests) for name in digests
                            if theirs.get(name) != digests[name]})
        if differing:
            raise RuntimeError(f"parameters differ between processes: {', '.join(differing[:5])}")
        return whole


LOCAL = Group()


def interleave(parts, names, batch_size):
    """Single-process order of every rank's arrays: parts[i][r] is rank r's array `names[i]` (None
    for a rank without samples), its batches r, r+N, r+2N, ... (of batch_size samples, the epoch's
    last one possibly fewer) concatenated. Sample j of rank r goes to ((j // B) * N + r) * B + j % B.
    Raises UserError when the ranks' sizes do not fit that rule."""
    ranks = len(parts[0])
    sizes = [0 if a is None else len(a) for a in parts[0]]
    if sizes != shard_sizes(sum(sizes), batch_size, ranks):
        raise UserError(f"the processes' shares of the data do not fit the shard rule ({sizes} samples, "
                        f"batch {batch_size}): every process must read the same files")
    positions = np.concatenate([((np.arange(n) // batch_size) * ranks + r) * batch_size + np.arange(n) % batch_size
                                for r, n in enumerate(sizes)])
    merged = {}
    for name, arrays in zip(names, parts):
        values = np.concatenate([a for a in arrays if a is not None])
        merged[name] = np.empty_like(values)
        merged[name][positions] = values
    return merged


def group(config):
    """The Group of this process: LOCAL unless runner.use_fleet, then paddle.distributed initialised
    for the job paddle.distributed.launch started (on the device of runner.use_gpu), and the other
    ranks' logging turned down to warnings. Raises ConfigError for a launched job without
    runner.use_fleet (each process would read every sample and write the same folder)."""
    launched = launched_processes()
    if not config["runner.use_fleet"]:
        if launched > 1:
            raise ConfigError(f"{config.path}: started as {launched} processes by paddle.distributed.launch, but "
                              f"runner.use_fleet is False (each would train on every sample): add "
                              f"-o runner.use_fleet=True")
        return LOCAL
    if launched == 1:
        log.info("runner.use_fleet: one process (start several with python -m paddle.distributed.launch "
                 "--nproc_per_node N ...)")
        return LOCAL
    import paddle.distributed as dist
    place(config)  # the device first: NCCL binds each rank to the GPU the launcher gave it
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            dist.init_parallel_env()
    finally:
        sys.stderr.write(without_flags_banner(captured.getvalue()))
    this = Group(dist.get_rank(), dist.get_world_size())
    if not this.main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("runner.use_fleet: %d processes (%s), this is rank 0; batch n of an epoch is rank n mod %d's",
             this.size, "NCCL" if config["runner.use_gpu"] else "gloo", this.size)
    return this


_FLAGS_BANNER = re.compile(r"=+ Modified FLAGS detected =+\n(?:FLAGS\(.*\)\n)*=+\n")


def without_flags_banner(text):
    """`text` (what paddle.distributed.init_parallel_env wrote on stderr) without the "Modified FLAGS
    detected" banner it prints in every process, listing flags Paddle itself set (its new IR); the
    rest, if any, is kept."""
    return _FLAGS_BANNER.sub("", text)


def shard_sizes(samples, batch_size, ranks):
    """Samples of each rank's shard when `samples` are cut into batches of batch_size (the last
    one shorter) and batch n goes to rank n mod `ranks`."""
    batches, short = -(-samples // batch_size), samples % batch_size
    sizes = [len(range(r, batches, ranks)) * batch_size for r in range(ranks)]
    if short:
        sizes[(batches - 1) % ranks] -= batch_size - short
    return sizes
