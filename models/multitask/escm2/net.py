"""The ESCM2 network, one definition for dygraph, static graph and export.

Input: ids int64 [batch, fields, max_len] (0 pads). One embedding lookup over all fields' ids,
sum-pooled per field and concatenated. Towers on top: CTR, CVR, and for DR an imputation tower
that predicts the CVR error of an impression. Towers are plain MLPs (the paper) or sit on a
shared MMoE backbone (PaddleRec's net).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class MLP(nn.Sequential):
    """Hidden ReLU layers, then one linear output unit (a logit)."""

    def __init__(self, input_size, hidden_sizes):
        layers, width = [], input_size
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)


class MMoE(nn.Layer):
    """Shared experts mixed by one softmax gate per task."""

    def __init__(self, input_size, expert_num, expert_size, task_num):
        super().__init__()
        self.expert_num, self.expert_size = expert_num, expert_size
        self.experts = nn.Linear(input_size, expert_num * expert_size)  # all experts in one matmul
        self.gates = nn.LayerList([nn.Linear(input_size, expert_num) for _ in range(task_num)])

    def forward(self, x):
        experts = F.relu(self.experts(x)).reshape([-1, self.expert_num, self.expert_size])
        return [paddle.sum(experts * F.softmax(gate(x)).unsqueeze(-1), axis=1) for gate in self.gates]


class ESCM2Net(nn.Layer):
    def __init__(self, sparse_feature_number, sparse_feature_dim, num_fields, with_imputation,
                 backbone="mlp", ctr_fc_sizes=(256, 64), cvr_fc_sizes=(256, 64),
                 expert_num=8, expert_size=16, tower_size=8):
        super().__init__()
        self.with_imputation = with_imputation
        self.embedding = nn.Embedding(
            sparse_feature_number, sparse_feature_dim, padding_idx=0, sparse=True,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-0.05, 0.05)))
        width = self.input_width = num_fields * sparse_feature_dim
        tasks = 3 if with_imputation else 2
        if backbone == "mmoe":
            self.mmoe = MMoE(width, expert_num, expert_size, tasks)
            sizes, width = [[tower_size]] * tasks, expert_size
        else:
            self.mmoe = None
            sizes = [ctr_fc_sizes, cvr_fc_sizes, cvr_fc_sizes][:tasks]
        self.towers = nn.LayerList([MLP(width, s) for s in sizes])

    def forward(self, ids):
        """(pCTR, pCVR, pCTCVR[, imputed CVR error]), each of shape [batch]."""
        return self.heads(self.embedding(ids))

    def heads(self, embedded):
        """The towers on looked-up embeddings [batch, fields, max_len, dim] (padding rows zero)."""
        x = embedded.sum(axis=2).reshape([-1, self.input_width])  # fields' sums, side by side
        inputs = self.mmoe(x) if self.mmoe is not None else [x] * len(self.towers)
        logits = [tower(h).squeeze(-1) for tower, h in zip(self.towers, inputs)]
        pctr, pcvr = F.sigmoid(logits[0]), F.sigmoid(logits[1])
        outputs = (pctr, pcvr, pctr * pcvr)
        if self.with_imputation:
            outputs += (F.softplus(logits[2]),)  # an error estimate: >= 0, unbounded above
        return outputs


def from_config(config):
    hp = config.section("hyper_parameters")
    return ESCM2Net(
        sparse_feature_number=hp["sparse_feature_number"], sparse_feature_dim=hp["sparse_feature_dim"],
        num_fields=len(hp["fields"]), with_imputation=config["runner.counterfact_mode"] == "DR",
        backbone=hp["backbone"], ctr_fc_sizes=hp["ctr_fc_sizes"], cvr_fc_sizes=hp["cvr_fc_sizes"],
        expert_num=hp["expert_num"], expert_size=hp["expert_size"], tower_size=hp["tower_size"])
