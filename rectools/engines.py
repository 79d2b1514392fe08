"""Engines run a model folder's steps in one graph mode and move its parameters; the loops
(rectools.loops) own epochs, metrics and checkpoints and do not care which engine runs.

Both engines offer: mode ("dygraph" | "static"), summarize_metrics(predictions), train_step(batch,
metrics, weight=1.0) and eval_step(batch, metrics) -> {loss term: float}, parameters() -> {checkpoint
name: ndarray}, set_parameters(state, folder, key), optimizer_state() -> {name: tensor} (not
copied), set_optimizer_state(state).
Checkpoint names are the dygraph model's state_dict names in both modes, so checkpoints load in
either, and the same whatever the number of processes.

With runner.use_fleet and several processes (rectools.distributed), the dygraph engine trains
through paddle.DataParallel, which averages the gradients over the processes at every step: dense
ones by all-reduce; the embedding's sparse (SelectedRows) gradient travels sparse, its rows and
values all-gathered from every process.
"""
import contextlib

import numpy as np
import paddle

from .checkpoint import check_fits
from .device import collective, dygraph_mode, place, processes
from .errors import ConfigError
from .model_loader import model_module


def parameter_hint(package):
    """The model's keys that decide its parameters, for the message of a checkpoint that does not fit."""
    return getattr(model_module(package, "config_schema", "runner.model_dir"), "PARAMETER_KEYS", ())


def dygraph_network(config, package, params=None):
    """(contract, net): the model folder's DygraphModel and its net, initialised with runner.seed,
    or holding `params` ({checkpoint name: array}) when given. Call in dygraph mode."""
    contract = model_module(package, "dygraph_model", "runner.model_dir").DygraphModel()
    if params is None:
        paddle.seed(config["runner.seed"])
    net = contract.create_model(config)
    if params is not None:
        check_fits({k: v.shape for k, v in net.state_dict().items()}, params, "parameters", "export",
                   parameter_hint(package))
        net.set_state_dict({k: np.asarray(v) for k, v in params.items()})
    return contract, net


class DygraphEngine:
    mode = "dygraph"

    def __init__(self, config, package, train):
        self.config, self.hint = config, parameter_hint(package)
        place(config)
        self.contract, self.model = dygraph_network(config, package)
        self.optimizer = self.contract.create_optimizer(self.model, config) if train else None
        self.summarize_metrics = self.contract.summarize_metrics
        # the model is trained through the wrapper and saved from the plain net: checkpoint names stay unprefixed
        self.trained = paddle.DataParallel(self.model) if train and processes(config) > 1 else self.model

    def train_step(self, batch, metrics, weight=1.0):
        """One update from `batch`; its loss is multiplied by `weight` before backward (the last
        round of several processes, rectools.distributed). Returns the unweighted loss terms."""
        terms = self.contract.train_forward(self.trained, metrics, batch, self.config)
        exchange = contextlib.nullcontext()
        if self.trained is not self.model:  # DataParallel: backward exchanges the gradients
            exchange = collective()
        with exchange:
            (terms["loss"] if weight == 1.0 else terms["loss"] * weight).backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        return {k: v.item() for k, v in terms.items()}  # the floats float(v) gives, ~15x cheaper

    def eval_step(self, batch, metrics):
        self.model.eval()
        with paddle.no_grad():
            terms = self.contract.infer_forward(self.model, metrics, batch, self.config)
        self.model.train()
        return {k: float(v) for k, v in terms.items()}

    def parameters(self):
        return {k: v.numpy() for k, v in self.model.state_dict().items()}

    def set_parameters(self, state, folder, key):
        check_fits({k: v.shape for k, v in self.model.state_dict().items()}, state, folder, key, self.hint)
        self.model.set_state_dict({k: np.asarray(v) for k, v in state.items()})

    def optimizer_state(self):
        return self.optimizer.state_dict()

    def set_optimizer_state(self, state):
        self.optimizer.set_state_dict(state)


class StaticEngine:
    mode = "static"

    def __init__(self, config, package, train):
        if train and processes(config) > 1:
            raise ConfigError(f"{config.path}: runner.use_fleet: static training on several processes is not "
                              f"supported (Paddle 3.3.1's fleet cannot build a data-parallel program on the new "
                              f"IR); train with tools/trainer.py")
        self.config, self.hint = config, parameter_hint(package)
        with dygraph_mode():  # start where dygraph starts with the same seed: one run, two graph modes
            initial = dygraph_network(config, package)[1].state_dict()
            initial = {k: v.numpy() for k, v in initial.items()}
        paddle.enable_static()
        self.contract = model_module(package, "static_model", "runner.model_dir").StaticModel(config)
        self.summarize_metrics = self.contract.summarize_metrics
        self.program, startup = paddle.static.Program(), paddle.static.Program()
        self.program.random_seed = startup.random_seed = config["runner.seed"]
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(self.program, startup):
            feeds = self.contract.create_feeds()
            self.graph = self.contract.net(feeds) if train else self.contract.infer_net(feeds)
            if train:
                self.contract.create_optimizer(self.graph)
        self.names = {key: p.name for key, p in self.graph.parameters.items()}
        self._feed_names = {}  # program -> the names it feeds
        self.evaluation = None if train else (self.program, self.graph)  # a trainer's is built when first used
        self.place = place(config)
        self.executor = paddle.static.Executor(self.place)
        self.executor.run(startup)
        self.scope = paddle.static.global_scope()
        self.set_parameters(initial, "initial parameters", "runner.seed")

    def train_step(self, batch, metrics, weight=1.0):
        if weight != 1.0:
            raise ValueError("a static program's loss has no weight")  # one process only, see __init__
        return self._run(self.program, self.graph, batch, metrics)

    def eval_step(self, batch, metrics):
        """As train_step, through the evaluation program (no update ops; a trainer's reads the
        parameters it trains, the same variables of the scope)."""
        if self.evaluation is None:
            self.evaluation = self._evaluation_program()
        return self._run(*self.evaluation, batch, metrics)

    def _run(self, program, graph, batch, metrics):
        names = list(graph.fetches)
        if program not in self._feed_names:  # a training batch may carry what the evaluation program does not read
            self._feed_names[program] = {op.attrs()["name"] for op in program.global_block().ops
                                         if op.name() == "pd_op.data"}
        feed = {k: v for k, v in self.contract.feed(batch).items() if k in self._feed_names[program]}
        values = self.executor.run(program, feed=feed, fetch_list=[graph.fetches[n] for n in names])
        return self.contract.collect(metrics, batch, dict(zip(names, values)))

    def _evaluation_program(self):
        """(program, graph) of the model's infer_net beside the training program. Built under the same
        unique names, its parameters are the training program's variables; its startup program is
        never run, so nothing is initialised again."""
        program = paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(program, paddle.static.Program()):
            graph = self.contract.infer_net(self.contract.create_feeds())
        if {key: p.name for key, p in graph.parameters.items()} != self.names:
            raise RuntimeError("the evaluation program's parameters are not the training program's")
        return program, graph

    def _tensor(self, name):
        return self.scope.find_var(name).get_tensor()

    def _get(self, name):
        return np.array(self._tensor(name))

    def _set(self, name, value):
        self._tensor(name).set(np.asarray(value), self.place)

    def parameters(self):
        return {key: self._get(name) for key, name in self.names.items()}

    def set_parameters(self, state, folder, key):
        check_fits({k: self._get(n).shape for k, n in self.names.items()}, state, folder, key, self.hint)
        for key_, name in self.names.items():
            self._set(name, state[key_])

    def optimizer_state(self):
        """Every persistable value of the program that is not a parameter: moments, beta powers, rates
        (the scope's tensors, not copies)."""
        params = set(self.names.values())
        return {name: self._tensor(name) for name in self.program.state_dict() if name not in params}

    def set_optimizer_state(self, state):
        for name, value in state.items():
            if self.scope.find_var(name) is not None:
                self._set(name, value)


ENGINES = {"dygraph": DygraphEngine, "static": StaticEngine}
