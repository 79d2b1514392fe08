"""Row-sparse embedding updates inside a static program (Paddle 3.x new IR).

On the new IR an embedding's gradient is a dense [rows, dim] tensor, so Adam would move every
row of the table at every step. Here the batch's distinct ids (`uniq`, found on the host by the
model's feed) are gathered from the table, the loss is differentiated with respect to those rows
only, and the rows, and for Adam their moments, are written back in place. The update
reproduces what dygraph does for `Embedding(sparse=True)` with `Adam(lazy_mode=True)` or SGD:
gradients of repeated ids are summed, the padding row receives the gradient of its positions
(its lookups still return zeros), and Adam's bias correction uses one global pair of beta powers
that advances before it is used.
"""
import warnings

import numpy as np
import paddle
from paddle import _C_ops


def lookup(table, uniq, inverse, padding_idx=0):
    """(embeddings [positions, dim], rows): rows = table[uniq] is what the gradient is taken of."""
    rows = paddle.gather(table, uniq)
    rows.stop_gradient = False
    embedded = paddle.gather(rows, inverse)
    if padding_idx is not None:  # zero in the forward pass, yet the gradient reaches the row, as in dygraph
        is_pad = paddle.gather(paddle.cast(uniq == padding_idx, embedded.dtype), inverse).unsqueeze(-1)
        embedded = embedded - (embedded * is_pad).detach()
    return embedded, rows


def _state(name, shape, value):
    param = paddle.static.create_parameter(shape, "float32", attr=paddle.ParamAttr(name=name, trainable=False),
                                           default_initializer=paddle.nn.initializer.Constant(value))
    param.stop_gradient = True
    return param


def _write_rows(target, uniq, rows):
    _C_ops.scatter_(target, uniq, rows, True)  # in place: paddle.scatter_ would copy in static mode


def minimize(loss, table, rows, uniq, dense_optimizer, dense_parameters, kind, learning_rate,
             beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Append the backward pass, the dense optimizer's update and the row update of `table`."""
    table.stop_gradient = True  # no table-sized gradient is ever built
    with warnings.catch_warnings():  # Paddle's own backward asks a Value for its place and warns about it
        warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
        grads = paddle.static.append_backward(loss, parameter_list=list(dense_parameters) + [rows])
    row_grad = next(g for p, g in grads if p.is_same(rows))
    dense_optimizer.apply_gradients([(p, g) for p, g in grads if not p.is_same(rows)])
    if kind == "sgd":
        _write_rows(table, uniq, rows - learning_rate * row_grad)
        return
    f32 = lambda x: float(np.float32(x))  # noqa: E731  constants as the float32 kernel sees them
    moment1 = _state(table.name + "_moment1", table.shape, 0.0)
    moment2 = _state(table.name + "_moment2", table.shape, 0.0)
    beta1_pow = _state(table.name + "_beta1_pow", [1], beta1)
    beta2_pow = _state(table.name + "_beta2_pow", [1], beta2)
    beta1_pow_next, beta2_pow_next = beta1_pow * f32(beta1), beta2_pow * f32(beta2)
    correction = paddle.sqrt(1.0 - beta2_pow_next)
    step = f32(learning_rate) * correction / (1.0 - beta1_pow_next)
    m1 = f32(beta1) * paddle.gather(moment1, uniq) + f32(np.float32(1) - np.float32(beta1)) * row_grad
    m2 = f32(beta2) * paddle.gather(moment2, uniq) + f32(np.float32(1) - np.float32(beta2)) * row_grad * row_grad
    _write_rows(table, uniq, rows - step * (m1 / (paddle.sqrt(m2) + f32(epsilon) * correction)))
    _write_rows(moment1, uniq, m1)
    _write_rows(moment2, uniq, m2)
    _C_ops.assign_out_(beta1_pow_next, beta1_pow)
    _C_ops.assign_out_(beta2_pow_next, beta2_pow)
