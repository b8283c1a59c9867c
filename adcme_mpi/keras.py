"""Data parallelism for Keras 3 (TensorFlow backend), in Horovod's shape:
``DistributedOptimizer`` averages gradients across ranks before applying
them, ``BroadcastGlobalVariablesCallback`` gives every rank root's initial
weights and optimizer state, ``MetricAverageCallback`` averages the epoch's
logs across ranks. Imported on its own (``import adcme_mpi.keras``), not by
``import adcme_mpi``: it imports Keras.

A script (``mpiexec -n 2 python train.py``; rank r fits its shard)::

    import adcme_mpi as am
    import adcme_mpi.keras as amk
    model.compile(optimizer=amk.DistributedOptimizer(keras.optimizers.Adam(1e-3)), loss="mse")
    model.fit(x_shard, y_shard, callbacks=[amk.BroadcastGlobalVariablesCallback(0),
                                           amk.MetricAverageCallback()])

The collectives run inside Keras' compiled train step (a ``tf.function``),
also with ``compile(..., jit_compile=True)``: there XLA compiles the whole
step, the allreduces included (they lower to custom calls that run their
kernels; tests/mpi/test_data_parallel.py trains both ways).
"""

import keras
import numpy as np
import tensorflow as tf

from .data_parallel import allreduce_gradients, broadcast_variables
from .wrappers.collectives import mpi_allreduce

__all__ = ["DistributedOptimizer", "BroadcastGlobalVariablesCallback", "MetricAverageCallback"]


def _check_backend(what):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"adcme_mpi.keras.{what}: needs Keras' TensorFlow backend, "
            f"not {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)"
        )


def DistributedOptimizer(optimizer, op="mean", comm=None, fusion_threshold=None):
    """A copy of the Keras optimizer `optimizer` (same class and config)
    whose ``apply`` (which ``apply_gradients`` and ``model.fit``'s train
    step call) first reduces the gradients across the ranks of `comm`:
    the average (``op="mean"``, Horovod's default) or the sum
    (``op="sum"``), fused as in ``adcme_mpi.DistributedGradientTape``
    (None gradients stay None, IndexedSlices become dense). Everything
    after the reduction (clipping, weight decay, the update) is the
    optimizer's own, so with equal shards and the same initial weights
    every rank takes the same step as one process on the whole batch.

    Wrap the optimizer before ``compile()``; its variables are created
    fresh from the config (as Horovod does).

    Example::

        opt = amk.DistributedOptimizer(keras.optimizers.SGD(0.1))
        model.compile(optimizer=opt, loss="mse")
    """
    _check_backend("DistributedOptimizer")
    if op not in ("mean", "sum"):
        raise ValueError(f"DistributedOptimizer: op = {op!r} must be 'mean' or 'sum'")
    base = optimizer.__class__

    def apply(self, grads, trainable_variables=None):
        grads = allreduce_gradients(list(grads), op, comm, fusion_threshold)
        return base.apply(self, grads, trainable_variables)

    cls = type(
        base.__name__,
        (base,),
        {
            "apply": apply,
            "__module__": base.__module__,
            "__doc__": f"{base.__name__}, its gradients reduced ({op}) across MPI ranks "
            "(adcme_mpi.keras.DistributedOptimizer).",
        },
    )
    return cls.from_config(optimizer.get_config())


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Gives every rank `root`'s model weights (trainable and not) and
    optimizer variables, as Horovod's callback of that name: at the start
    of training for whatever is built by then (a model with an ``Input``,
    or already called, is), and after the first batch for what was not
    (Keras builds the optimizer, and a model without ``Input``, in the
    first train step; then that step ran on each rank's own initial
    weights, so build the model before ``fit`` for exact agreement).

    Example::

        model.fit(x, y, callbacks=[amk.BroadcastGlobalVariablesCallback(root=0)])
    """

    def __init__(self, root=0, comm=None):
        _check_backend("BroadcastGlobalVariablesCallback")
        super().__init__()
        self.root = root
        self.comm = comm
        self._model_done = False
        self._optimizer_done = False

    def _broadcast(self):
        variables = []
        model_now = not self._model_done and self.model.built and self.model.weights
        if model_now:
            variables += list(self.model.weights)
        optimizer = getattr(self.model, "optimizer", None)
        optimizer_now = (
            not self._optimizer_done and optimizer is not None and getattr(optimizer, "built", 0)
        )
        if optimizer_now:
            variables += list(optimizer.variables)
        if variables:
            broadcast_variables(variables, self.root, comm=self.comm)
        self._model_done |= bool(model_now)
        self._optimizer_done |= bool(optimizer_now) or optimizer is None

    def on_train_begin(self, logs=None):
        self._broadcast()

    def on_train_batch_end(self, batch, logs=None):
        if not (self._model_done and self._optimizer_done):
            self._broadcast()


class MetricAverageCallback(keras.callbacks.Callback):
    """Replaces every number in the epoch's logs (loss, metrics, validation
    ones) by its average across the ranks of `comm`, at the end of each
    epoch, as Horovod's callback of that name: put it before callbacks
    that read the logs (checkpoints, early stopping); Keras' History and
    progress bar come after it and see the averages. Every rank must have
    the same log keys.

    Example::

        model.fit(x, y, callbacks=[amk.MetricAverageCallback()])
    """

    def __init__(self, comm=None):
        _check_backend("MetricAverageCallback")
        super().__init__()
        self.comm = comm

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        keys = sorted(k for k, v in logs.items() if np.ndim(v) == 0 and _is_number(v))
        if not keys:
            return
        values = tf.constant([float(logs[k]) for k in keys], tf.float64)
        averaged = mpi_allreduce(values, op="mean", comm=self.comm).numpy()
        for key, value in zip(keys, averaged):
            logs[key] = float(value)


def _is_number(v):
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
