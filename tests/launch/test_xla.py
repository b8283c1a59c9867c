"""XLA auto-clustering around the MPI ops (TF_XLA_FLAGS="--tf_xla_auto_jit=2
--tf_xla_cpu_global_jit", which TensorFlow reads when it starts, so each
setting is its own job): the heat stencil's loss and gradient, in graph mode
and in tf.function, are the same with and without it."""

import json

import numpy as np
import pytest

from launcher import launch

AUTO_JIT = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"

CODE = """
import json, os
import numpy as np, tensorflow as tf, adcme_mpi as am
from adcme_mpi.wrappers.halo import near_square_grid
m, n = near_square_grid(am.mpi_size())
u0 = np.random.default_rng([3, am.mpi_rank()]).standard_normal((16, 12))

def heat(u, kappa):
    for _ in range(10):
        p = am.mpi_halo_exchange(u, m, n)
        u = u + 0.05 * kappa * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * u)
    return am.mpi_sum(tf.reduce_sum(u * u))

@tf.function
def in_function(u, kappa):
    with tf.GradientTape() as tape:
        tape.watch([u, kappa])
        loss = heat(u, am.mpi_bcast(kappa))
    return [loss] + tape.gradient(loss, [u, kappa])

out = in_function(tf.constant(u0), tf.constant(0.9, tf.float64))
results = {"function": [t.numpy().tolist() for t in out]}
graph = tf.Graph()
with graph.as_default():
    u, kappa = tf.constant(u0), tf.constant(0.9, tf.float64)
    loss = heat(u, am.mpi_bcast(kappa))
    fetches = [loss] + tf.gradients(loss, [u, kappa])
    with am.Session(graph=graph, xla=os.environ.get("XLA_SESSION") == "1") as sess:
        results["graph"] = [np.asarray(t).tolist() for t in sess.run(fetches)]
# one file per rank: long lines from several ranks interleave on mpiexec's stdout
with open(os.path.join(os.environ["XLA_TEST_OUT"], f"rank{am.mpi_rank()}.json"), "w") as f:
    json.dump(results, f)
"""


def clustered_graphs(dumps):
    """The graphs TensorFlow dumped after marking clusters (with
    --tf_xla_clustering_debug) in which XLA clustered something."""
    return [
        p for p in dumps.glob("mark_for_compilation_annotated*") if "_XlaCluster" in p.read_text()
    ]


def results(folder):
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))}


@pytest.mark.parametrize("n", [2])
def test_auto_clustering_gives_the_same_loss_and_gradient(n, tmp_path):
    plain_out, xla_out, dumps = (tmp_path / name for name in ("plain", "xla", "dumps"))
    for folder in (plain_out, xla_out, dumps):
        folder.mkdir()
    plain = launch(
        n, None, code=CODE, timeout=240, env={"TF_XLA_FLAGS": "", "XLA_TEST_OUT": str(plain_out)}
    )
    # TensorFlow dumps the graphs it clustered: XLA really compiled something
    flags = {"TF_XLA_FLAGS": AUTO_JIT + " --tf_xla_clustering_debug", "XLA_TEST_OUT": str(xla_out)}
    xla = launch(n, None, code=CODE, timeout=240, env={**flags, "TF_DUMP_GRAPH_PREFIX": str(dumps)})
    assert plain.code == 0 and xla.code == 0, (plain, xla)
    a, b = results(plain_out), results(xla_out)
    assert sorted(a) == sorted(b) == list(range(n)), (plain, xla)
    for rank in a:
        for mode in ("graph", "function"):
            for x, y in zip(a[rank][mode], b[rank][mode]):
                np.testing.assert_allclose(np.array(y), np.array(x), rtol=1e-12, atol=1e-12)
    assert clustered_graphs(dumps), sorted(p.name for p in dumps.iterdir())


def test_session_xla_argument_turns_on_auto_clustering(tmp_path):
    """am.Session(xla=True), with no TF_XLA_FLAGS of the user's: the graph's
    arithmetic is clustered and the loss and gradient are the same; without
    it, the flag the import adds (--tf_xla_cpu_global_jit) clusters nothing."""
    runs = {}
    for name, xla_session in (("plain", "0"), ("xla", "1")):
        out, dumps = tmp_path / name, tmp_path / f"{name}_dumps"
        out.mkdir(), dumps.mkdir()
        env = {
            "TF_XLA_FLAGS": "--tf_xla_clustering_debug",  # dumps only
            "TF_DUMP_GRAPH_PREFIX": str(dumps),
            "XLA_SESSION": xla_session,
            "XLA_TEST_OUT": str(out),
        }
        result = launch(2, None, code=CODE, timeout=240, env=env)
        assert result.code == 0, result
        runs[name] = (results(out), clustered_graphs(dumps))
    (plain, plain_clusters), (xla, xla_clusters) = runs["plain"], runs["xla"]
    assert not plain_clusters and xla_clusters, (plain_clusters, xla_clusters)
    assert sorted(plain) == sorted(xla) == [0, 1]
    for rank in plain:
        for x, y in zip(plain[rank]["graph"], xla[rank]["graph"]):
            np.testing.assert_allclose(np.array(y), np.array(x), rtol=1e-12, atol=1e-12)
