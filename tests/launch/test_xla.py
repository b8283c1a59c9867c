"""XLA auto-clustering around the MPI ops (TF_XLA_FLAGS="--tf_xla_auto_jit=2
--tf_xla_cpu_global_jit", which TensorFlow reads when it starts, so each
setting is its own job), or am.Session(xla=True): the heat stencil's loss
and gradient, in graph mode and in tf.function, are the same with and
without it."""

import json

import numpy as np

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


def run_setting(tmp_path, name, flags, xla_session="0"):
    """One 2-rank job of CODE: (results per rank, the graphs XLA clustered)."""
    out, dumps = tmp_path / name, tmp_path / f"{name}_dumps"
    out.mkdir(), dumps.mkdir()
    env = {
        "TF_XLA_FLAGS": f"{flags} --tf_xla_clustering_debug".strip(),  # the debug flag: dumps
        "TF_DUMP_GRAPH_PREFIX": str(dumps),
        "XLA_SESSION": xla_session,
        "XLA_TEST_OUT": str(out),
    }
    result = launch(2, None, code=CODE, timeout=240, env=env)
    assert result.code == 0, result
    found = results(out)
    assert sorted(found) == [0, 1], result
    return found, clustered_graphs(dumps)


def assert_same(a, b, modes):
    for rank in a:
        for mode in modes:
            for x, y in zip(a[rank][mode], b[rank][mode]):
                np.testing.assert_allclose(np.array(y), np.array(x), rtol=1e-12, atol=1e-12)


def test_auto_clustering_gives_the_same_loss_and_gradient(tmp_path):
    """Three jobs: no flags of the user's (the flag the import adds,
    --tf_xla_cpu_global_jit, clusters nothing); TF_XLA_FLAGS' auto-clustering
    (graph mode and tf.function); am.Session(xla=True) (graph mode). Both
    ways cluster, and the loss and gradient are the same as without."""
    plain, plain_clusters = run_setting(tmp_path, "plain", "")
    env_xla, env_clusters = run_setting(tmp_path, "env", AUTO_JIT)
    session_xla, session_clusters = run_setting(tmp_path, "session", "", xla_session="1")
    assert not plain_clusters and env_clusters and session_clusters, (
        plain_clusters,
        env_clusters,
        session_clusters,
    )
    assert_same(plain, env_xla, ("graph", "function"))
    assert_same(plain, session_xla, ("graph",))


RING_HVP = """
import json
import numpy as np, tensorflow as tf, adcme_mpi as am
from mpi4py import MPI
am.mpi_init()
r, n = am.mpi_rank(), am.mpi_size()

def ring(t):  # even ranks send first, odd ranks receive first
    nxt, prv = (r + 1) % n, (r - 1) % n
    if r % 2 == 0:
        sent = am.mpi_send(t, nxt)
        return sent * am.mpi_recv(t, prv) + sent
    got = am.mpi_recv(t, prv)
    sent = am.mpi_send(t, nxt)
    return sent * got + sent

rng = np.random.default_rng([5, r])
graph = tf.Graph()
with graph.as_default():
    x, v = tf.constant(rng.standard_normal(5)), tf.constant(rng.standard_normal(5))
    g = tf.gradients(tf.reduce_sum(ring(x) ** 3), x)[0]
    hv = tf.gradients(tf.reduce_sum(g * v), x)[0]
    with am.Session(graph=graph) as sess:
        every = MPI.COMM_WORLD.gather(sess.run(hv).tolist(), root=0)
if r == 0:  # (one line: lines from several ranks interleave on mpiexec's stdout)
    print("HV", json.dumps(every), flush=True)
"""


def hvps(result):
    assert result.code == 0, result
    lines = [line for line in result.out.splitlines() if line.startswith("HV ")]
    assert len(lines) == 1, result
    found = json.loads(lines[0][3:])
    assert len(found) == 2, result
    return found


def test_second_derivative_of_a_send_recv_ring_under_auto_clustering_in_a_graph():
    """A v1 graph's second-order adjoint whose token gradient is data (the
    receive's template gradient carries its send's token) or a filler was
    ordered after the op placed before it by a control edge alone; under
    auto-clustering XLA dropped it and the 2-rank ring's Hessian-vector
    product hung. Now a data link too: it completes, equal to the plain run."""
    plain = hvps(launch(2, None, code=RING_HVP, timeout=120))
    clustered = hvps(launch(2, None, code=RING_HVP, timeout=120, env={"TF_XLA_FLAGS": AUTO_JIT}))
    for rank in (0, 1):
        np.testing.assert_allclose(clustered[rank], plain[rank], rtol=1e-12, atol=1e-12)
