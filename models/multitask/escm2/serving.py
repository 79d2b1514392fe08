"""The exported inference model: one int64 input [batch, max_len] per field, named
`field_<field id>` (e.g. field_101, field_109_14), and three outputs named pctr, pcvr, pctcvr.

It is written with paddle.jit.save from the dygraph net (the same net.py), so it needs no
training-side code to run: paddle.inference loads `model.json` + `model.pdiparams`.
`serving.json` beside them records the fields, max_len and vocabulary size (sparse_feature_number)
it was exported for; predict refuses a config that differs.
"""
import json
import os

import paddle
from paddle.static import InputSpec

from rectools.serving import save_inference_model

from .fields import fields as model_fields

OUTPUTS = ("pctr", "pcvr", "pctcvr")
MODEL, PARAMS, SIGNATURE = "model.json", "model.pdiparams", "serving.json"


def input_name(field):
    return f"field_{field}"


class PerFieldInputs(paddle.nn.Layer):
    """The net behind one input per field, as a serving system sends them."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, fields):
        return self.net(paddle.stack(fields, axis=1))[:3]


def export(net, config, out_dir):
    """Write the inference model of `net` into out_dir (created; its files are replaced)."""
    fields, max_len = model_fields(config), config["hyper_parameters.max_len"]
    spec = [[InputSpec([None, max_len], "int64", name=input_name(f)) for f in fields]]
    net.eval()
    save_inference_model(PerFieldInputs(net), spec, OUTPUTS, out_dir, MODEL)
    with open(os.path.join(out_dir, SIGNATURE), "w") as f:
        json.dump(signature(config), f, indent=1)


def signature(config):
    """What a served model and the data fed to it must agree on."""
    return {"inputs": [input_name(f) for f in model_fields(config)],
            "max_len": config["hyper_parameters.max_len"], "outputs": list(OUTPUTS),
            "sparse_feature_number": config["hyper_parameters.sparse_feature_number"]}


def inputs(batch, config):
    """A reader batch as the exported model's inputs."""
    return {input_name(f): batch["ids"][:, i, :] for i, f in enumerate(model_fields(config))}
