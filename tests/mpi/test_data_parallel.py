"""Data-parallel training (adcme_mpi.DistributedGradientTape,
broadcast_variables, adcme_mpi.keras): every rank holds a different shard of
one global batch; the loss curve and the final weights must equal those of
one process training on the whole batch, computed on every rank locally
with plain TensorFlow / Keras (no MPI). Also: fusion with a tiny and a huge
threshold gives the same numbers with as many collectives as tensors vs one
per dtype; None and IndexedSlices gradients; broadcast_variables makes
different initial values equal; unequal shards with op="sum"."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import data_parallel
from helpers import RANK, SIZE, every_rank

D, H = 3, 5  # inputs, hidden units
PER_RANK = 4  # rows of the global batch on each rank
LR = 0.1
STEPS = 5
TOL = dict(rtol=1e-11, atol=1e-12)  # float64 end to end: rounding only


def global_batch(seed=7, rows=PER_RANK * SIZE):
    g = np.random.default_rng(seed)
    x = g.standard_normal((rows, D))
    y = np.sin(x.sum(1, keepdims=True))
    return x, y


def shard(a, counts=None):
    counts = counts or [PER_RANK] * SIZE
    start = sum(counts[:RANK])
    return a[start : start + counts[RANK]]


def initial_weights(seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((D, H)) * 0.5, g.standard_normal(H) * 0.1, g.standard_normal((H, 1))]


def mlp_loss(ws, x, y, reduce=tf.reduce_mean):
    w1, b1, w2 = ws
    return reduce((tf.tanh(x @ w1 + b1) @ w2 - y) ** 2)


def train(x, y, mode, distributed, threshold=None, op="mean", reduce=tf.reduce_mean):
    """STEPS steps of SGD: (losses, final weights). distributed: gradients
    through DistributedGradientTape; the loss reported is this rank's."""
    ws = [tf.Variable(w) for w in initial_weights()]
    x, y = tf.constant(x), tf.constant(y)

    def step():
        with tf.GradientTape() as tape:
            loss = mlp_loss(ws, x, y, reduce)
        if distributed:
            tape = am.DistributedGradientTape(tape, op=op, fusion_threshold=threshold)
        grads = tape.gradient(loss, ws)
        for w, g in zip(ws, grads):
            w.assign_sub(LR * g)
        return loss

    if mode == "function":
        step = tf.function(step)
    losses = [float(step()) for _ in range(STEPS)]
    return np.array(losses), [w.numpy() for w in ws]


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_tape_equals_one_process_on_the_whole_batch(mode):
    x, y = global_batch()
    ref_losses, ref_ws = train(x, y, mode, distributed=False)
    losses, ws = train(shard(x), shard(y), mode, distributed=True)
    # the global loss is the mean of the ranks' losses (equal shards)
    np.testing.assert_allclose(np.mean(every_rank(losses), axis=0), ref_losses, **TOL)
    for w, ref in zip(ws, ref_ws):
        np.testing.assert_allclose(w, ref, **TOL)
    if SIZE > 1:  # the test can fail: one shard alone trains somewhere else
        _, alone = train(shard(x), shard(y), mode, distributed=False)
        assert not np.allclose(alone[0], ref_ws[0], **TOL)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_unequal_shards_with_sum_of_scaled_losses(mode):
    """op='mean' weights every rank equally; the global-batch mean with
    unequal shards is op='sum' of (sum over the shard / global rows)."""
    counts = [r + 1 for r in range(SIZE)]
    x, y = global_batch(rows=sum(counts))
    ref_losses, ref_ws = train(x, y, mode, distributed=False)
    losses, ws = train(
        shard(x, counts),
        shard(y, counts),
        mode,
        distributed=True,
        op="sum",
        reduce=lambda e: tf.reduce_sum(e) / sum(counts),
    )
    np.testing.assert_allclose(np.sum(every_rank(losses), axis=0), ref_losses, **TOL)
    for w, ref in zip(ws, ref_ws):
        np.testing.assert_allclose(w, ref, **TOL)


def mixed_variables():
    """Variables of two dtypes, a scalar, and one the loss does not use."""
    g = np.random.default_rng([3, RANK])
    return [
        tf.Variable(g.standard_normal((4, 3))),
        tf.Variable(g.standard_normal(3).astype(np.float32)),
        tf.Variable(g.standard_normal(())),
        tf.Variable(g.standard_normal(2).astype(np.float32)),
        tf.Variable(g.standard_normal(5)),  # unused: its gradient is None
    ]


def mixed_loss(vs):
    a, b, c, d, _ = vs
    return (
        tf.reduce_sum(tf.sin(a) * (RANK + 1.0))
        + tf.cast(tf.reduce_sum(b * b), tf.float64) * c
        + tf.cast(tf.reduce_sum(tf.exp(d)), tf.float64)
    )


def allreduce_count(fn):
    return sum(
        op.type == "MPIAllreduce" for op in fn.get_concrete_function().graph.get_operations()
    )


@pytest.mark.parametrize("op", ["mean", "sum"])
def test_fusion_tiny_and_huge_threshold_agree(op):
    vs = mixed_variables()
    results, counts = [], []
    for threshold in (1, 1 << 40):

        @tf.function
        def grads(threshold=threshold):
            with tf.GradientTape() as tape:
                loss = mixed_loss(vs)
            return am.DistributedGradientTape(tape, op=op, fusion_threshold=threshold).gradient(
                loss, vs
            )

        out = grads()
        assert out[4] is None, "an unused variable's gradient stays None"
        results.append([g.numpy() for g in out[:4]])
        counts.append(allreduce_count(grads))
    assert counts == [4, 2], f"4 gradients alone, then one buffer per dtype: {counts}"
    with tf.GradientTape() as tape:
        loss = mixed_loss(vs)
    local = [g.numpy() for g in tape.gradient(loss, vs)[:4]]
    reduce = np.mean if op == "mean" else np.sum
    expected = [reduce(np.stack(every_rank(g)), axis=0) for g in local]
    for tiny, huge, exp in zip(*results, expected):
        np.testing.assert_allclose(tiny, huge, rtol=1e-6 if tiny.dtype == np.float32 else 1e-14)
        np.testing.assert_allclose(tiny, exp, rtol=1e-6 if tiny.dtype == np.float32 else 1e-13)


def test_fusion_buckets_respect_the_threshold():
    sizes = [(4, tf.float32), (4, tf.float64), (4, tf.float32), (100, tf.float32)]
    sizes += [(2, tf.float32), (4, tf.float64)]
    ts = [tf.zeros([n], dt) for n, dt in sizes]
    buckets = data_parallel.fusion_buckets(ts, threshold=64)  # 16+16+8 f32, 32+32 f64
    assert [ix for _, ix in buckets] == [[0, 2, 4], [1, 5], [3]]
    assert [ix for _, ix in data_parallel.fusion_buckets(ts, threshold=0)] == [
        [i] for i in range(6)
    ]


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_none_and_indexed_slices(mode):
    emb = tf.Variable(np.arange(12.0).reshape(6, 2) * (RANK + 1))
    unused = tf.Variable(1.0)
    rows = tf.constant([RANK % 6, 5, 5])

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(emb, rows) ** 2)
        return am.DistributedGradientTape(tape).gradient(loss, {"emb": emb, "unused": unused})

    out = tf.function(grads)() if mode == "function" else grads()
    assert out["unused"] is None
    assert isinstance(out["emb"], tf.Tensor), "IndexedSlices come back dense"
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(emb, rows) ** 2)
    local = tf.convert_to_tensor(tape.gradient(loss, emb)).numpy()
    np.testing.assert_allclose(out["emb"].numpy(), np.mean(every_rank(local), axis=0), **TOL)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("root", sorted({0, SIZE - 1}))
def test_broadcast_variables_makes_different_values_equal(mode, root):
    g = np.random.default_rng([5, RANK])
    vs = [
        tf.Variable(g.standard_normal((3, 2))),
        tf.Variable(g.standard_normal(7).astype(np.float32)),
        tf.Variable(np.int64(RANK * 10 + 1)),
        tf.Variable(RANK % 2 == 1),
        tf.Variable(g.standard_normal(4).astype(np.float16)),
    ]
    before = every_rank([v.numpy() for v in vs])
    if SIZE > 1:
        assert not np.array_equal(before[0][0], before[1][0])
    if mode == "function":
        tf.function(lambda: am.broadcast_variables(vs, root=root, fusion_threshold=16))()
    else:
        am.broadcast_variables(vs, root=root, fusion_threshold=16)
    for v, expected in zip(vs, before[root]):
        assert v.numpy().dtype == expected.dtype
        np.testing.assert_array_equal(v.numpy(), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="op"):
        am.DistributedGradientTape(tf.GradientTape(), op="max")
    with pytest.raises(ValueError, match="fusion_threshold"):
        am.DistributedGradientTape(tf.GradientTape(), fusion_threshold=-1)


# ---- Keras 3: model.fit with DistributedOptimizer and the callbacks ----

BATCH = 2  # rows per rank per step
KERAS_STEPS = 2  # steps per epoch
EPOCHS = 3


def keras_model(seed):
    import keras

    model = keras.Sequential(
        [
            keras.Input((D,), dtype="float64"),
            keras.layers.Dense(H, activation="tanh", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    g = np.random.default_rng(seed)
    model.set_weights([g.standard_normal(w.shape) * 0.5 for w in model.get_weights()])
    return model


@pytest.fixture
def keras_float64():
    """Keras computes the loss's 1/batch factor in floatx: float32's 1/6 is
    not float64's (3 ranks of 2 rows against 6 rows), so float64 throughout."""
    import keras

    saved = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(saved)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_keras_fit_equals_one_process_on_the_whole_batch(optimizer, jit_compile, keras_float64):
    import keras

    import adcme_mpi.keras as amk

    def make_opt():
        return keras.optimizers.SGD(0.1, momentum=0.5) if optimizer == "SGD" else (
            keras.optimizers.Adam(0.05)
        )  # fmt: skip

    # global step k is the ranks' k-th batches, in rank order
    g = np.random.default_rng(11)
    x = g.standard_normal((KERAS_STEPS, SIZE, BATCH, D))
    y = np.cos(x.sum(-1, keepdims=True))
    ref = keras_model(seed=0)  # rank 0's initial weights, which the callback broadcasts
    ref.compile(optimizer=make_opt(), loss="mse")
    ref_hist = ref.fit(
        x.reshape(-1, D), y.reshape(-1, 1), batch_size=SIZE * BATCH, epochs=EPOCHS,
        shuffle=False, verbose=0,
    )  # fmt: skip

    model = keras_model(seed=RANK)  # different initial weights on every rank
    model.compile(
        optimizer=amk.DistributedOptimizer(make_opt()), loss="mse", jit_compile=jit_compile
    )
    assert type(model.optimizer).__name__ == optimizer
    assert model.jit_compile == jit_compile  # (Keras keeps an explicit True)
    hist = model.fit(
        x[:, RANK].reshape(-1, D), y[:, RANK].reshape(-1, 1), batch_size=BATCH, epochs=EPOCHS,
        shuffle=False, verbose=0,
        callbacks=[amk.BroadcastGlobalVariablesCallback(0), amk.MetricAverageCallback()],
    )  # fmt: skip
    np.testing.assert_allclose(hist.history["loss"], ref_hist.history["loss"], **TOL)
    for w, r in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(w, r, **TOL)
    for w, r in zip(model.optimizer.variables, ref.optimizer.variables):
        np.testing.assert_allclose(np.asarray(w), np.asarray(r), **TOL)
    if SIZE > 1:  # the test can fail: the ranks' own losses differ from the average
        own = keras_model(seed=0)
        own.compile(optimizer=make_opt(), loss="mse")
        own_hist = own.fit(
            x[:, RANK].reshape(-1, D), y[:, RANK].reshape(-1, 1), batch_size=BATCH,
            epochs=EPOCHS, shuffle=False, verbose=0,
        )  # fmt: skip
        assert not np.allclose(own_hist.history["loss"], ref_hist.history["loss"], rtol=1e-6)


def test_keras_metric_average_callback():
    import adcme_mpi.keras as amk

    logs = {"loss": float(RANK), "mae": 2.0 * RANK, "name": "not a number"}
    amk.MetricAverageCallback().on_epoch_end(0, logs)
    assert logs == {"loss": (SIZE - 1) / 2, "mae": SIZE - 1.0, "name": "not a number"}


def test_graph_mode_tape_and_broadcast():
    """A v1 graph (the ADCME way): broadcast_variables returns the op that
    assigns, the tape's gradients are reduced when fetched."""
    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.Variable(np.full(3, float(RANK + 1)), use_resource=True)
        sync = am.broadcast_variables([v], root=SIZE - 1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(v * v) * (RANK + 1)
        (grad,) = am.DistributedGradientTape(tape).gradient(loss, [v])
        with am.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(sync)
            value, g = sess.run([v, grad])
    np.testing.assert_array_equal(value, np.full(3, float(SIZE)))
    expected = np.mean([2 * SIZE * (r + 1) for r in range(SIZE)])
    np.testing.assert_allclose(g, np.full(3, expected), **TOL)
