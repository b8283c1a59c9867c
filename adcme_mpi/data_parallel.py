"""Data-parallel training helpers in Horovod's shape: a GradientTape whose
gradients are reduced over the ranks, and a broadcast of variables.

Both fuse: the tensors travel in as few buffers as possible, one per dtype
and per `fusion_threshold` bytes (as Horovod's HOROVOD_FUSION_THRESHOLD),
each buffer being the flattened tensors concatenated; one collective per
buffer, then the buffer is split back. Everything here is made of the
package's ops (mpi_allreduce, mpi_bcast), so it runs in program order in
graph mode, eagerly and inside tf.function, and its collectives are checked
across ranks like any other.
"""

import tensorflow as tf

from .wrappers.collectives import mpi_allreduce, mpi_bcast

__all__ = ["DistributedGradientTape", "broadcast_variables", "DEFAULT_FUSION_THRESHOLD"]

# bytes per fused buffer, Horovod's default too. Measured (benchmarks/TRAINING.md,
# 0, 64 KiB, 1 MiB, 64 MiB): no threshold beat it; on 44 small gradients one
# buffer saved 25% of the step. It bounds the extra copy's memory on big models.
DEFAULT_FUSION_THRESHOLD = 64 * 1024 * 1024

_WIRE = {  # dtypes the ops carry as they are; the others travel as one of these
    tf.float32: tf.float32,
    tf.float64: tf.float64,
    tf.float16: tf.float32,
    tf.bfloat16: tf.float32,
    tf.int32: tf.int32,
    tf.int64: tf.int64,
    tf.int8: tf.int32,
    tf.int16: tf.int32,
    tf.uint8: tf.int32,
    tf.uint16: tf.int32,
    tf.uint32: tf.int64,
    tf.bool: tf.int32,
}

_REDUCE_OPS = ("mean", "sum")


def _wire_dtype(dtype, what):
    wire = _WIRE.get(tf.as_dtype(dtype).base_dtype)
    if wire is None:
        raise TypeError(f"{what}: dtype {tf.as_dtype(dtype).name} cannot travel over MPI here")
    return wire


def _threshold(fusion_threshold):
    if fusion_threshold is None:
        return DEFAULT_FUSION_THRESHOLD
    threshold = int(fusion_threshold)
    if threshold < 0:
        raise ValueError(f"fusion_threshold = {fusion_threshold} must be >= 0 (0: no fusion)")
    return threshold


def _nbytes(tensor, wire):
    """Static size in bytes (None when the shape is not fully known)."""
    n = tensor.shape.num_elements()
    return None if n is None else n * wire.size


def fusion_buckets(tensors, threshold, what="fusion"):
    """Indices of `tensors` grouped into buckets: same wire dtype, in order,
    at most `threshold` bytes each (a larger tensor, or one of unknown size,
    travels alone; threshold 0: every tensor alone)."""
    open_buckets = {}  # wire dtype -> (indices, bytes) being filled
    buckets = []
    for i, t in enumerate(tensors):
        wire = _wire_dtype(t.dtype, what)
        size = _nbytes(t, wire)
        if size is None or threshold == 0 or size >= threshold:
            buckets.append((wire, [i]))
            continue
        current = open_buckets.get(wire)
        if current is not None and current[1] + size <= threshold:
            current[0].append(i)
            open_buckets[wire] = (current[0], current[1] + size)
        else:
            indices = [i]
            buckets.append((wire, indices))
            open_buckets[wire] = (indices, size)
    return buckets


def _fused(tensors, threshold, collective, what):
    """collective(flat_buffer, wire_dtype) applied per fused bucket; returns
    the results in the tensors' order, shapes and dtypes."""
    out = [None] * len(tensors)
    for wire, indices in fusion_buckets(tensors, threshold, what):
        parts = [tf.cast(tf.reshape(tensors[i], [-1]), wire) for i in indices]
        if len(parts) == 1:
            reduced = collective(parts[0], wire)
            pieces = [reduced]
        else:
            sizes = [tf.size(p) for p in parts]
            reduced = collective(tf.concat(parts, 0), wire)
            pieces = tf.split(reduced, tf.stack(sizes), num=len(parts))
        for i, piece in zip(indices, pieces):
            out[i] = tf.cast(tf.reshape(piece, tf.shape(tensors[i])), tensors[i].dtype)
    return out


def _dense(g):
    if isinstance(g, tf.IndexedSlices):
        return tf.convert_to_tensor(g)
    return g


def allreduce_gradients(grads, op="mean", comm=None, fusion_threshold=None):
    """Reduce a (nested) structure of gradients over the ranks of `comm`
    (`op`: "mean" or "sum"), fused; None stays None, IndexedSlices become
    dense tensors. The helper DistributedGradientTape and
    adcme_mpi.keras.DistributedOptimizer use."""
    if op not in _REDUCE_OPS:
        raise ValueError(f"op = {op!r} must be one of {', '.join(_REDUCE_OPS)}")
    threshold = _threshold(fusion_threshold)
    flat = tf.nest.flatten(grads, expand_composites=False)
    present = [i for i, g in enumerate(flat) if g is not None]
    dense = [tf.convert_to_tensor(_dense(flat[i])) for i in present]
    for t in dense:
        if not t.dtype.is_floating:
            raise TypeError(f"gradient reduction: gradient of dtype {t.dtype.name} is not a float")

    def reduce(buffer, wire):
        return mpi_allreduce(buffer, op=op, comm=comm)

    reduced = _fused(dense, threshold, reduce, "gradient reduction")
    out = list(flat)
    for i, r in zip(present, reduced):
        out[i] = r
    return tf.nest.pack_sequence_as(grads, out)


class DistributedGradientTape:
    """Wraps a ``tf.GradientTape``: ``gradient(target, sources)`` returns the
    gradients reduced over the ranks of `comm` (default COMM_WORLD), as
    Horovod's ``hvd.DistributedGradientTape``.

    op: ``"mean"`` (default, as Horovod: the average of the ranks'
    gradients) or ``"sum"``. With ``"mean"``, if every rank's loss is the
    mean over its own shard and the shards have equal sizes, the result is
    the gradient of the mean loss over the global batch. With unequal
    shards, ``"mean"`` still weights every rank equally (Horovod's
    semantics); for the global-batch mean, scale each rank's loss as
    ``sum over its shard / global batch size`` and use ``op="sum"``.

    Gradients that are None (a source the target does not depend on) stay
    None without communication; they must be None on every rank (the same
    program everywhere). ``tf.IndexedSlices`` gradients (from
    ``tf.gather``, embeddings) are made dense before the reduction and come
    back as dense tensors. float16/bfloat16 gradients are reduced in
    float32 and cast back.

    fusion_threshold: bytes per fused buffer (default
    ``DEFAULT_FUSION_THRESHOLD``, 64 MiB); gradients of one dtype are
    flattened and concatenated into buffers of at most that many bytes (a
    larger gradient travels alone), one ``mpi_allreduce`` per buffer; 0
    sends every gradient alone.

    Works eagerly, inside ``tf.function`` and in graph mode; every other
    method and attribute is the wrapped tape's.

    Example::

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x_shard) - y_shard) ** 2)
        tape = am.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)   # averaged over ranks
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    """

    def __init__(self, tape, op="mean", comm=None, fusion_threshold=None):
        if op not in _REDUCE_OPS:
            raise ValueError(
                f"DistributedGradientTape: op = {op!r} must be one of {', '.join(_REDUCE_OPS)}"
            )
        self._tape = tape
        self._op = op
        self._comm = comm
        self._threshold = _threshold(fusion_threshold)

    def __getattr__(self, name):  # everything else is the tape's
        return getattr(self._tape, name)

    def __enter__(self):
        self._tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._tape.__exit__(*exc)

    def gradient(self, target, sources, output_gradients=None, **kwargs):
        grads = self._tape.gradient(target, sources, output_gradients=output_gradients, **kwargs)
        return allreduce_gradients(grads, self._op, self._comm, self._threshold)


def broadcast_variables(variables, root=0, comm=None, fusion_threshold=None):
    """Assign `root`'s values to every rank's `variables` (a list or nested
    structure of ``tf.Variable``), as Horovod's ``hvd.broadcast_variables``:
    collective, every rank passes its variables in the same order. Fused as
    DistributedGradientTape's reduction (one ``mpi_bcast`` per dtype and
    `fusion_threshold` bytes); integer and bool variables (an optimizer's
    step counter) travel too.

    Eagerly and inside ``tf.function`` it assigns and returns None; in a
    v1 graph it returns the op that assigns (run it once, after the
    initialiser).

    Example::

        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
        am.broadcast_variables(model.variables, root=0)   # every rank: rank 0's weights
    """
    flat = [v for v in tf.nest.flatten(variables) if v is not None]
    v1_graph = not tf.executing_eagerly() and not tf.inside_function()
    if not flat:
        return tf.no_op() if v1_graph else None
    values = [tf.convert_to_tensor(v) for v in flat]
    threshold = _threshold(fusion_threshold)

    def bcast(buffer, wire):
        return mpi_bcast(buffer, root, comm=comm)

    received = _fused(values, threshold, bcast, "broadcast_variables")
    assigns = [v.assign(r) for v, r in zip(flat, received)]
    return tf.group(*assigns) if v1_graph else None
