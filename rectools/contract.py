"""The model-folder contract: what a folder must hold for the tools to train, evaluate, export and
serve it. rectools knows nothing of any one model; everything model-specific comes through here.

A model folder is a directory of Python modules loaded as one package (relative imports work):

    config_schema.py   KEYS (list of rectools.config.Key), validate(config); optional PARAMETER_KEYS
    <reader>.py        RecDataset, named by runner.train_reader_path / runner.infer_reader_path
    dygraph_model.py   DygraphModel      (tools/trainer.py, tools/infer.py, export)
    static_model.py    StaticModel       (tools/static_trainer.py, tools/static_infer.py; optional)
    serving.py         MODEL, PARAMS, SIGNATURE, OUTPUTS, export, signature, inputs (tools/export.py,
                       tools/predict.py, runner.use_inference; optional)

Data moves as numpy arrays. A *batch* is a dict of arrays that share their first dimension (B
samples); every reader yields an int64 `sample_id` [B] among them, the rest is the model's own (for
a multi-task model: id arrays, its labels). *Predictions* are what a model adds
to the metrics of an epoch: named 1-D arrays, one value per sample, in batch order; the loop adds the
batch's `sample_id` beside them, so whoever receives an epoch's predictions (metrics, a benchmark,
another process) can tell which sample each belongs to.

The classes here are abstract base classes: a model folder's classes name them as bases to declare
what they implement (an unimplemented method then fails at construction, naming it), and
`check_model_folder` verifies a whole folder, as a test does for every folder of this repository.
"""
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np

Arrays = Dict[str, np.ndarray]


class Predictions(ABC):
    """Collects per-batch prediction arrays over an epoch (rectools.metrics.Accumulator)."""

    @abstractmethod
    def add(self, **arrays: np.ndarray) -> None:
        """Append named arrays of one batch; each is flattened to 1-D [B]."""

    @abstractmethod
    def arrays(self, last_rows: Optional[int] = None) -> Mapping:
        """Every row so far, or the last `last_rows`: a read-only mapping of name -> 1-D array (one
        value per sample; rectools.metrics.Columns, which also passes over them in bounded memory)."""


class Reader(ABC):
    """`RecDataset(file_list, config)` of a reader module: the samples of some files.

    file_list: paths (str) read in this order. chunks() yields batches of any size (the loop re-cuts
    them), in a deterministic order for a given config, `sample_id` int64 [n] included. Malformed
    input raises rectools.errors.DataError naming file and line; nothing is skipped silently.
    """

    file_list: List[str]

    @abstractmethod
    def chunks(self) -> Iterator[Arrays]:
        """One pass over every file: dicts of arrays sharing their first dimension."""

    def layout(self) -> Optional[dict]:
        """Optional: what maps the data's values to the model's ids beyond the config (JSON-able),
        when the reader learns it from the data (e.g. the column-CSV reader's field sizes, from the
        training files), else None, which this default returns. A checkpoint records it, and one
        whose layout differs from the data's is refused when loaded, since its ids would reach
        other embedding rows."""
        return None

    def size(self) -> Optional[int]:
        """Optional: the samples of one pass (int), when known cheaply (e.g. from parsed files'
        cache entries), else None, which this default returns. Progress lines use it for an ETA in
        a pass of which no earlier pass was seen; it must never parse the data to find out."""
        return None


class DygraphModel(ABC):
    """PaddleRec's dygraph contract, `DygraphModel()` with no arguments, as tools/trainer.py uses it."""

    @abstractmethod
    def create_model(self, config) -> "paddle.nn.Layer":  # noqa: F821
        """The network, freshly initialised (the caller seeds Paddle first)."""

    @abstractmethod
    def create_optimizer(self, dy_model, config) -> "paddle.optimizer.Optimizer":  # noqa: F821
        """The optimizer over dy_model's parameters."""

    @abstractmethod
    def train_forward(self, dy_model, metrics: Predictions, batch: Arrays, config) -> Dict[str, "paddle.Tensor"]:  # noqa: F821
        """One batch forward: returns the loss terms as scalar tensors, the total under "loss"
        (the caller runs backward); adds the batch's predictions to `metrics`."""

    @abstractmethod
    def infer_forward(self, dy_model, metrics: Predictions, batch: Arrays, config) -> Dict[str, "paddle.Tensor"]:  # noqa: F821
        """As train_forward, for evaluation (the caller disables gradients and sets eval mode)."""

    @abstractmethod
    def summarize_metrics(self, predictions: Mapping) -> Dict[str, float]:
        """Epoch metrics (AUCs, log-losses, counts) from an epoch's predictions, as Predictions.arrays()
        returns them (sample_id included; a rectools.metrics.Columns, whose chunks() keep memory
        bounded however long the epoch; with several processes, the union of theirs). A mapping of
        name -> 1-D array is all it may assume."""

    def diagnose(self, record: Mapping) -> List[str]:
        """Warning lines about an epoch evaluated by tools/infer.py, from its record (summarize_metrics'
        figures among them); infer logs each. None by default."""
        return []

    # Optional: recalibrate(predictions, parameters) -> {name: new array}. At each training epoch's
    # end, before its checkpoint, the parameters to replace, given the trained model's predictions on
    # (at most runner.recalibration_samples of) the training data, as summarize_metrics receives them, and its parameters
    # (name -> array, as checkpoints hold them). None: nothing to recalibrate, no data read for it.
    recalibrate: Optional[Callable[[Mapping, Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None

    # Optional: initialize(columns, parameters) -> {name: new array}. Before the first step of a run
    # from scratch (not a resumed one), the parameters to replace, given the numeric one-dimensional
    # columns (labels, sample ids: name -> 1-D array) of a sample of the training data's batches
    # spread over a whole pass (rectools.loops.spread_sample: about INIT_SAMPLES impressions, or
    # runner.recalibration_samples if fewer; with several processes the union of theirs, the same on
    # each) and the fresh parameters. Not called when the training data has no samples. None: no
    # data read for it.
    initialize: Optional[Callable[[Mapping, Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None


@dataclass
class StaticGraph:
    """What StaticModel.net builds into the current program.

    fetches: name -> Value fetched every step (loss terms, predictions: whatever collect() reads).
    parameters: checkpoint name (as in the dygraph model's state_dict) -> the program's parameter.
    state: anything create_optimizer needs from the build (e.g. the feeds and gathered rows).
    """
    fetches: Dict[str, object]
    parameters: Dict[str, object]
    state: dict = field(default_factory=dict)


class StaticModel(ABC):
    """PaddleRec's static contract, `StaticModel(config)`; called inside a program guard, in order:
    create_feeds() -> net(feeds) or infer_net(feeds) -> create_optimizer(graph) when training."""

    @abstractmethod
    def create_feeds(self) -> Dict[str, object]:
        """The program's data placeholders, by feed name."""

    @abstractmethod
    def feed(self, batch: Arrays) -> Arrays:
        """A batch as the feed dict of the placeholders (numpy arrays)."""

    @abstractmethod
    def net(self, feeds) -> StaticGraph:
        """The training graph."""

    @abstractmethod
    def infer_net(self, feeds) -> StaticGraph:
        """The evaluation graph (no update ops)."""

    @abstractmethod
    def create_optimizer(self, graph: StaticGraph) -> None:
        """Append the backward pass and the parameter updates of `graph`'s loss."""

    @abstractmethod
    def collect(self, metrics: Predictions, batch: Arrays, fetched: Arrays) -> Dict[str, float]:
        """After a step: the batch's predictions (from `fetched`, the fetches' values as numpy) into
        `metrics`; returns the loss terms as floats, the total under "loss"."""

    @abstractmethod
    def summarize_metrics(self, predictions: Mapping) -> Dict[str, float]:
        """As DygraphModel.summarize_metrics."""

    def diagnose(self, record: Mapping) -> List[str]:
        """As DygraphModel.diagnose."""
        return []

    recalibrate: Optional[Callable[[Mapping, Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None  # as DygraphModel's
    initialize: Optional[Callable[[Mapping, Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None  # as DygraphModel's


READER_KEYS = ("runner.train_reader_path", "runner.infer_reader_path")  # declared by each model folder
SERVING_NAMES = ("MODEL", "PARAMS", "SIGNATURE", "OUTPUTS")
SERVING_FUNCTIONS = {
    "export": "export(net, config, out_dir): write the inference model of the dygraph net into out_dir",
    "signature": "signature(config) -> dict: what an exported model and the data fed to it must agree on "
                 "(written as SIGNATURE beside the model, compared by tools/predict.py)",
    "inputs": "inputs(batch, config) -> {input name: array}: a reader batch as the exported model's inputs",
}


def check_model_folder(package, config) -> List[str]:
    """What the model folder `package` (from rectools.model_loader) lacks of the contract under
    `config`: an empty list when it meets it. Optional modules are checked when present."""
    from .model_loader import has_module, model_module
    problems = []

    def declares(module, name, base):
        cls = getattr(model_module(package, module, "model folder"), name, None)
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            problems.append(f"{module}.{name} is not a rectools.contract.{base.__name__}")

    schema = model_module(package, "config_schema", "model folder")
    if not isinstance(getattr(schema, "KEYS", None), list) or not callable(getattr(schema, "validate", None)):
        problems.append("config_schema: KEYS (a list of rectools.config.Key) and validate(config)")
    for key in READER_KEYS:
        if key not in config.schema:
            problems.append(f"config_schema: KEYS declares no {key} (the name of its reader module)")
        else:
            declares(config[key], "RecDataset", Reader)
    declares("dygraph_model", "DygraphModel", DygraphModel)
    if has_module(package, "static_model"):
        declares("static_model", "StaticModel", StaticModel)
    if has_module(package, "serving"):
        serving = model_module(package, "serving", "model folder")
        problems += [f"serving.{n}" for n in SERVING_NAMES if not hasattr(serving, n)]
        problems += [f"serving.{n}()" for n in SERVING_FUNCTIONS if not inspect.isfunction(getattr(serving, n, None))]
    return problems


Gather = Callable[[Mapping], Mapping]  # an epoch's predictions of this process -> every process's (a Columns)
