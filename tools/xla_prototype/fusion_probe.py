"""Where does tf.function(jit_compile=True)'s forward+gradient time go?
The heat stencil of benchmarks/bench_xla.py (512 x 512 per rank, 20 steps),
forward and forward+gradient, in one mode per run; prints the medians of 7
calls (ms) after 3 warm-up calls, and the loss and gradient:

  mpiexec -n 1 python tools/xla_prototype/fusion_probe.py MODE

MODE: jit_mpi (jit_compile=True, the halo exchange), jit_pad (jit_compile=True,
tf.pad in place of the exchange and no MPI op at all), graph_mpi / graph_pad
(tf.function without XLA), auto_mpi (run with TF_XLA_FLAGS="--tf_xla_auto_jit=2
--tf_xla_cpu_global_jit"). XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"
dumps the modules before and after XLA's optimizations. Results: NOTES.md."""

import json
import sys
import time

import numpy as np
import tensorflow as tf

import adcme_mpi as am

mode = sys.argv[1]
size, steps = 512, 20
tf.config.threading.set_intra_op_parallelism_threads(1)
P = am.mpi_size()
u0 = tf.constant(np.random.default_rng(am.mpi_rank()).standard_normal((size, size)))


def heat(halo, u0, kappa):
    u = u0
    for _ in range(steps):
        p = halo(u)
        u = u + 0.1 * kappa * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * u)
    return tf.reduce_sum(u * u)


if mode.endswith("mpi"):
    halo = lambda u: am.mpi_halo_exchange(u, 1, P)
    bc = am.mpi_bcast
    red = am.mpi_sum
else:
    halo = lambda u: tf.pad(u, [[1, 1], [1, 1]])
    bc = lambda x: x
    red = lambda x: x


def loss_of(k0):
    return red(heat(halo, u0, bc(k0)))


jit = mode.startswith("jit")


@tf.function(jit_compile=jit)
def both(k0):
    with tf.GradientTape() as tape:
        tape.watch(k0)
        loss = loss_of(k0)
    return loss, tape.gradient(loss, k0)


@tf.function(jit_compile=jit)
def forward(k0):
    return loss_of(k0)


k = tf.constant(0.5, tf.float64)
for f in (forward, both):
    for _ in range(3):
        tf.nest.map_structure(lambda t: t.numpy(), f(k))
res = {}
for name, f in (("forward", forward), ("both", both)):
    ts = []
    for _ in range(7):
        am.mpi_barrier()
        t = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), f(k))
        ts.append(time.perf_counter() - t)
    res[name] = round(1e3 * float(np.median(ts)), 1)
if am.mpi_rank() == 0:
    print(mode, json.dumps(res), [float(x) for x in both(k)])
