"""2-D acoustic wave equation u_tt + sigma(x, y) u_t = c(x, y)^2 Laplace(u) + f
on [0,1]^2, the grid split into m x n patches joined by halo exchanges (as
heat's), and the seismic inverse problem that recovers the velocity c from
traces recorded along a horizontal line of receivers.

- Time: leapfrog (second order in time and space), explicit; stable for
  dt * max(c) * sqrt(2) / h < 1; the default number of steps is the smallest
  stable one (10% margin) for every c within the optimizer's bounds, and an
  unstable number of steps is refused.
- Source: a Ricker wavelet of peak frequency f0 at one node (its owner adds
  w(t) / h^2 there); or any separable f = w(t) F(x, y) (the manufactured
  solution of the tests).
- Absorbing boundary: a damping sponge, sigma = sigma_max (d / L)^2 in a layer
  of width L along the four sides (zero inside), sigma_max = 3 c_ref log(1/R)
  / (2 L) with R = 1e-3, discretised centred in time. A sponge rather than a
  PML: it is local (no auxiliary fields to carry through the halo exchange
  and the checkpointed state), its adjoint is the same damping, and a layer
  of 10-20 cells keeps reflections near 1%, enough for this inversion. Beyond
  the layer the ghost cells hold 0 (a Dirichlet wall the wave reaches damped).
- Receivers: every node of grid row `receiver_row` (a horizontal line, which
  crosses the block columns, so several ranks hold parts of it). Each rank
  records its own part; `WaveProblem.gather_traces` joins the parts into the
  whole (steps x N) array on every rank (host side, mpi4py allgather).
- Inverse problem: the parameter is the velocity c at every node (N*N values,
  rank 0's vector counts: broadcast by mpi_bcast, each rank takes its patch),
  bounded by [C_MIN, C_MAX] (the box keeps the scheme stable). The misfit is
  sum over steps and receivers of (u - d)^2 divided by sum d^2 (1 at u = 0),
  accumulated inside the time loop, summed over ranks by mpi_sum (the loss
  lives on rank 0, as heat's). L-BFGS-B through mpi_optimize.
- The time loop is ordering.checkpointed_loop with `checkpoints=K` (K stored
  states, the rest recomputed in the backward pass), or with K=None the
  stored loop (ordering.while_loop, every step kept for the gradient).

Example::

    problem = wave.WaveProblem(N=48, checkpoints=8)
    summary = wave.run(N=48, maxiter=10)   # every rank; the loss history on rank 0
"""

import math
import resource
import time

import numpy as np
import tensorflow as tf
from mpi4py import MPI

from .. import ordering
from ..optimize import mpi_optimize
from ..runtime import Session
from .communication import MPIOps
from .grid import Patch, default_grid, pyplot_or_none, recording_fg
from .heat import laplacian

C_MIN, C_MAX = 0.8, 1.6  # the optimizer's box for c (and the stability bound)
C_BACKGROUND = 1.0


def stable_steps(N, T, c_max):
    """The smallest number of steps with dt * c_max * sqrt(2) / h < 1 (10% margin)."""
    h = 1.0 / (N + 1)
    return max(1, math.ceil(1.1 * T * c_max * math.sqrt(2) / h))


def ricker(t, f0, t0=None):
    """The Ricker wavelet (1 - 2 a) exp(-a), a = (pi f0 (t - t0))^2, t0 = 1.2 / f0 by default."""
    t0 = 1.2 / f0 if t0 is None else t0
    a = (np.pi * f0 * (np.asarray(t) - t0)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)


def true_velocity(x, y):
    """The model the example recovers: background 1 with a fast disc (1.3) and a slow one (0.85)."""
    fast = 0.3 * np.exp(-((x - 0.38) ** 2 + (y - 0.5) ** 2) / (2 * 0.07**2))
    slow = -0.15 * np.exp(-((x - 0.66) ** 2 + (y - 0.45) ** 2) / (2 * 0.06**2))
    return C_BACKGROUND + fast + slow


class WaveProblem:
    """Leapfrog time stepping on this rank's patch.

    - `N`: interior nodes per side (h = 1/(N+1)); `T`, `steps` (default: the
      smallest stable number for c up to `c_max`); `grid`, `comm` as heat's.
    - `f0`: the Ricker peak frequency (default (N + 1) / 10: 10 nodes per
      wavelength at c = 1 and f0; the wavelet's spectrum reaches about 2.5
      f0, 4 nodes per wavelength, where the dispersion error grows);
      `source`: the (x, y) of the source node (nearest node); or `forcing`:
      (w, F) with w(t) a function of time and F this rank's field, for any
      separable source (the Ricker source is then off).
    - `sponge`: the absorbing layer's width (fraction of the side; 0: none).
    - `initial`: (u at -dt, u at 0) as this rank's arrays (default zero).
    - `receiver_y`: the receivers' line (nearest grid row).
    - `checkpoints`: None keeps every step for the gradient, K stores K states
      (ordering.checkpointed_loop).
    - `dtype`: np.float64 or np.float32.
    """

    def __init__(
        self,
        N=48,
        T=1.2,
        steps=None,
        grid=None,
        comm=None,
        f0=None,
        source=(0.5, 0.85),
        forcing=None,
        sponge=0.15,
        initial=None,
        receiver_y=0.15,
        c_max=C_MAX,
        checkpoints=None,
        dtype=np.float64,
        ops=None,
    ):
        comm = comm or MPI.COMM_WORLD
        self.ops = ops or MPIOps()
        self.checkpoints = checkpoints
        self.dtype = np.dtype(dtype)
        m, n = grid or default_grid(comm.Get_size())
        p = self.patch = Patch(N, m, n, comm)
        self.comm, self.T = comm, T
        self.steps = steps or stable_steps(N, T, c_max)
        self.dt = T / self.steps
        courant = self.dt * c_max * math.sqrt(2) / p.h
        if courant >= 1.0:
            raise ValueError(
                f"wave: unstable leapfrog scheme: dt * max(c) * sqrt(2) / h = {courant:.2f} >= 1 "
                f"(N={N}, steps={self.steps}, T={T}, c up to {c_max}); use --steps "
                f"{stable_steps(N, T, c_max)} or more, or a smaller --N"
            )
        x, y = p.coordinates()
        self.x, self.y = x, y
        t = np.arange(self.steps + 1) * self.dt
        if forcing is None:
            self.f0 = f0 or (N + 1) / 10.0
            self.wavelet = ricker(t, self.f0)
            self.source_node = (round(source[1] / p.h) - 1, round(source[0] / p.h) - 1)
            field = np.zeros((p.rows, p.cols))
            i, j = self.source_node[0] - p.r0, self.source_node[1] - p.c0
            if 0 <= i < p.rows and 0 <= j < p.cols:
                field[i, j] = 1.0 / p.h**2  # a point source: w(t) delta(x - xs)
            self.source_field = field
        else:
            self.f0, self.source_node = None, None
            w, self.source_field = forcing
            self.wavelet = np.asarray(w(t), dtype=float)
        # the sponge: sigma(d) = sigma_max (d / L)^2, d the distance into the layer
        if sponge > 0:
            dist = np.maximum.reduce(
                [np.maximum(sponge - s, 0.0) for s in (x, 1.0 - x, y, 1.0 - y)]
            )
            sigma_max = 3.0 * C_BACKGROUND * math.log(1e3) / (2.0 * sponge)
            sigma = sigma_max * (dist / sponge) ** 2
        else:
            sigma = np.zeros_like(x)
        self.sigma = sigma
        # u+ = (2 u - a- u- + dt^2 (c^2 Lap u + f)) / a+, a+- = 1 +- sigma dt / 2
        self.inv_plus = 1.0 / (1.0 + 0.5 * sigma * self.dt)
        self.minus = 1.0 - 0.5 * sigma * self.dt
        zeros = np.zeros((p.rows, p.cols))
        self.initial = initial or (zeros, zeros)
        self.receiver_row = min(max(round(receiver_y / p.h) - 1, 0), N - 1)
        local = self.receiver_row - p.r0
        self.local_row = local if 0 <= local < p.rows else None

    # ---- the scheme ----

    def _c(self, value):
        return tf.constant(np.asarray(value, dtype=self.dtype))

    def step(self, i, u_prev, u, c):
        """u at step i+1 from steps i-1 and i."""
        p = self.patch
        up = self.ops.halo_exchange(u, p.m, p.n, fill_value=0.0, comm=self.comm)
        force = tf.gather(self._c(self.wavelet), i) * self._c(self.source_field)
        rhs = (
            2.0 * u
            - self._c(self.minus) * u_prev
            + (self.dt**2) * (c * c * laplacian(up) / p.h**2 + force)
        )
        return rhs * self._c(self.inv_plus)

    def _loop(self, step, state):
        if self.checkpoints is not None:
            return ordering.checkpointed_loop(step, state, self.steps, self.checkpoints)

        def body(i, *state):
            return [i + 1, *step(i, state)]

        out = ordering.while_loop(lambda i, *s: i < self.steps, body, [tf.constant(0), *state])
        return out[1:]

    def final(self, c):
        """u at time T (this rank's patch)."""
        u_prev, u = (self._c(a) for a in self.initial)

        def step(i, state):
            u_prev, u = state
            return [u, self.step(i, u_prev, u, c)]

        return self._loop(step, [u_prev, u])[1]

    def traces(self, c):
        """This rank's part of the receiver line at steps 1..steps: (steps x cols),
        (steps x 0) where the line is not in this patch. Forward only (a
        TensorArray per step, no gradient)."""
        u_prev, u = (self._c(a) for a in self.initial)
        row = self.local_row
        width = self.patch.cols if row is not None else 0
        record = tf.TensorArray(self.dtype, size=self.steps, element_shape=[width])

        def body(i, u_prev, u, record):
            un = self.step(i, u_prev, u, c)
            # where the line is not in this patch, zero-width rows that no MPI op
            # feeds: ordering.while_loop still runs every step's halo exchange here
            sample = un[row] if row is not None else tf.zeros([0], self.dtype)
            return i + 1, u, un, record.write(i, sample)

        out = ordering.while_loop(
            lambda i, *s: i < self.steps, body, [tf.constant(0), u_prev, u, record]
        )
        return out[3].stack()

    def misfit(self, c, observed, scale=1.0):
        """scale * sum over steps and this rank's receivers of (u - observed)^2,
        accumulated inside the time loop (checkpointed with `checkpoints`)."""
        u_prev, u = (self._c(a) for a in self.initial)
        row = self.local_row
        data = self._c(observed) if row is not None else None

        def step(i, state, c):
            u_prev, u, J = state
            un = self.step(i, u_prev, u, c)
            if row is not None:
                J = J + scale * tf.reduce_sum((un[row] - tf.gather(data, i)) ** 2)
            return [u, un, J]

        state = [u_prev, u, tf.constant(0.0, self.dtype)]
        if self.checkpoints is not None:
            return ordering.checkpointed_loop(
                step, state, self.steps, self.checkpoints, params=[c]
            )[2]

        def body(i, *state):
            return [i + 1, *step(i, list(state), c)]

        out = ordering.while_loop(lambda i, *s: i < self.steps, body, [tf.constant(0), *state])
        return out[3]

    def gather_traces(self, local):
        """This rank's (steps x cols) part of the line joined into the whole
        (steps x N) array, on every rank (host side)."""
        p = self.patch
        parts = self.comm.allgather((p.c0, np.asarray(local)))
        whole = np.zeros((self.steps, p.N), dtype=np.asarray(local).dtype)
        for c0, part in parts:
            if part.shape[1]:
                whole[:, c0 : c0 + part.shape[1]] = part
        return whole

    def local_traces(self, whole):
        """This rank's part of a (steps x N) array of traces: (steps x cols) or (steps x 0)."""
        p = self.patch
        if self.local_row is None:
            return np.zeros((self.steps, 0))
        return whole[:, p.c0 : p.c0 + p.cols]


def build_inverse(problem, observed_whole):
    """Graph: c (placeholder, N*N values, rank 0's count) -> relative misfit
    on rank 0 and its gradient."""
    p = problem.patch
    c0 = tf.compat.v1.placeholder(problem.dtype, [p.N * p.N])
    c_all = tf.reshape(problem.ops.bcast(c0, comm=problem.comm), [p.N, p.N])
    c = c_all[p.r0 : p.r0 + p.rows, p.c0 : p.c0 + p.cols]
    scale = 1.0 / float(np.sum(np.asarray(observed_whole, dtype=float) ** 2))
    J = problem.misfit(c, problem.local_traces(observed_whole), scale)
    loss = problem.ops.sum(J, comm=problem.comm)
    return c0, loss, tf.gradients(loss, c0)[0]


def evaluate(graph_builder):
    """Build fetches in a fresh graph and run them once (every rank)."""
    with tf.Graph().as_default() as g:
        fetches = graph_builder()
        with Session(graph=g) as sess:
            return sess.run(fetches)


MANUFACTURED_OMEGA = 2.0 * np.pi


def manufactured_error(N, grid=None, comm=None):
    """The scheme's error against an exact solution: u = sin(pi x) sin(2 pi y)
    sin(omega t), omega = 2 pi, in c = 1 + 0.3 x y with no sponge, forced by
    f = (5 pi^2 c^2 - omega^2) u, u(-dt) and u(0) exact, to T = 0.5 with dt =
    h / 4 (refining h refines dt; Courant 0.57 at c = 1.6). Returns max |u -
    u_exact| over every rank's nodes, on every rank. Leapfrog is second order
    in both: the error falls 4x per halving of h (tests/mpi/test_wave.py,
    benchmarks/wave_checks.py)."""
    comm = comm or MPI.COMM_WORLD
    grid = grid or default_grid(comm.Get_size())
    x, y = Patch(N, *grid, comm=comm).coordinates()
    c = 1.0 + 0.3 * x * y
    shape = np.sin(np.pi * x) * np.sin(2 * np.pi * y)
    steps = 2 * (N + 1)
    problem = WaveProblem(
        N=N,
        T=0.5,
        steps=steps,
        sponge=0.0,
        grid=grid,
        comm=comm,
        forcing=(
            lambda t: np.sin(MANUFACTURED_OMEGA * t),
            (5 * np.pi**2 * c**2 - MANUFACTURED_OMEGA**2) * shape,
        ),
        initial=(np.sin(-MANUFACTURED_OMEGA * 0.5 / steps) * shape, 0.0 * shape),
    )
    u = evaluate(lambda: problem.final(tf.constant(c)))
    exact = np.sin(MANUFACTURED_OMEGA * 0.5) * shape
    return comm.allreduce(float(np.max(np.abs(u - exact))), op=MPI.MAX)


def taylor_remainders(problem, observed, c, dc, eps):
    """The Taylor test of the misfit's gradient g at c (N*N values, rank 0's
    counts) along dc: for each e in eps, |J(c + e dc) - J(c)| (first order in
    e) and |J(c + e dc) - J(c) - e <g, dc>| (second order if g is right).
    Returns both lists on every rank."""
    with tf.Graph().as_default() as g:
        c0, loss, grad = build_inverse(problem, observed)
        with Session(graph=g) as sess:
            J0, gradient = sess.run([loss, grad], {c0: c})
            J = [sess.run(loss, {c0: c + e * dc}) for e in eps]
    first = [abs(Je - J0) for Je in J]
    second = [abs(Je - J0 - e * float(gradient @ dc)) for Je, e in zip(J, eps)]
    # mpi_sum: the loss and its gradient live on rank 0
    return problem.comm.bcast((first, second))


def run(N=48, T=1.2, steps=None, checkpoints=None, out=None, maxiter=30, verbose=False):
    """Records traces in the true model (true_velocity), then recovers c from
    them with L-BFGS-B from the background model (c = 1). Every rank returns
    the summary; rank 0 prints the misfit history and writes the pictures."""
    problem = WaveProblem(N=N, T=T, steps=steps, checkpoints=checkpoints)
    p, rank = problem.patch, problem.patch.rank
    c_true_global = true_velocity(*np.meshgrid((np.arange(N) + 1) * p.h, (np.arange(N) + 1) * p.h))
    observed = problem.gather_traces(
        evaluate(lambda: problem.traces(tf.constant(p.local(c_true_global))))
    )
    start = np.full(N * N, C_BACKGROUND)
    began = time.time()
    with tf.Graph().as_default() as g:
        c0, loss, grad = build_inverse(problem, observed)
        with Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, c0)
            iterations = []
            result = mpi_optimize(
                fg=fg,
                x0=start,
                method="L-BFGS-B",
                verbose=verbose,
                bounds=[(C_MIN, C_MAX)] * (N * N),
                callback=lambda xk: iterations.append(len(history)),
                options={"maxiter": maxiter, "gtol": 1e-12, "ftol": 1e-14},
            )
    seconds = time.time() - began
    c_found = result.x.reshape(N, N)
    history = problem.comm.bcast(history)
    summary = {
        "loss0": float(history[0]),
        "loss": float(result.fun),
        "iterations": int(result.nit),
        "evaluations": len(history),
        "history": [float(v) for v in history],
        "model_error0": float(np.linalg.norm(C_BACKGROUND - c_true_global)),
        "model_error": float(np.linalg.norm(c_found - c_true_global)),
        "steps": problem.steps,
        "seconds": seconds,
        # the largest resident set of any rank so far (Linux: KiB)
        "peak_rss_mb": problem.comm.allreduce(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, op=MPI.MAX
        ),
    }
    if rank == 0:
        print(
            f"wave inverse: N={N} steps={problem.steps} K={checkpoints} "
            f"grid={p.m}x{p.n} f0={problem.f0:.2f} misfit {history[0]:.3e} -> {result.fun:.3e} "
            f"in {result.nit} iterations ({len(history)} evaluations, {seconds:.0f} s); "
            f"|c - c_true| {summary['model_error0']:.3f} -> {summary['model_error']:.3f}; "
            f"peak RSS {summary['peak_rss_mb']:.0f} MB (the largest rank)",
            flush=True,
        )
        print("misfit history: " + " ".join(f"{v:.3e}" for v in history), flush=True)
    if out:
        found = evaluate(lambda: problem.traces(tf.constant(p.local(c_found))))
        found = problem.gather_traces(found)
        if rank == 0:
            summary["figures"] = save_figures(
                out, problem, c_true_global, c_found, observed, found, history
            )
    return summary


def save_figures(out, problem, c_true, c_found, observed, found, history):
    """<out>/wave_models.png (true, initial, recovered c; source and
    receivers marked) and <out>/wave_traces.png (observed traces, the
    recovered model's, their difference, the misfit per evaluation). Returns
    the paths, or [] without matplotlib. Rank 0 calls it."""
    import os

    plt = pyplot_or_none("wave")
    if plt is None:
        return []
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "wave_models.png"), os.path.join(out, "wave_traces.png")]
    p, N = problem.patch, problem.patch.N
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4))
    initial = np.full_like(c_true, C_BACKGROUND)
    lo, hi = float(min(c_true.min(), c_found.min())), float(max(c_true.max(), c_found.max()))
    xs = (problem.source_node[1] + 1) * p.h, (problem.source_node[0] + 1) * p.h
    yr = (problem.receiver_row + 1) * p.h
    for ax, field, title in zip(
        axes, [c_true, initial, c_found], ["true c", "initial c", "recovered c"]
    ):
        im = ax.imshow(field, origin="lower", extent=[0, 1, 0, 1], vmin=lo, vmax=hi)
        ax.plot([xs[0]], [xs[1]], "r*", markersize=12)
        ax.plot([p.h, N * p.h], [yr, yr], "w--", linewidth=1)
        for k in range(1, p.n):  # block columns: the receiver line crosses them
            ax.axvline(k * p.cols * p.h + 0.5 * p.h, color="k", linewidth=0.5)
        for k in range(1, p.m):
            ax.axhline(k * p.rows * p.h + 0.5 * p.h, color="k", linewidth=0.5)
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.savefig(paths[0], dpi=90, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4), gridspec_kw={"wspace": 0.3})
    scale = float(np.max(np.abs(observed)))
    extent = [0, 1, problem.T, 0]
    for ax, data, title in zip(
        axes,
        [observed, found, observed - found],
        ["observed traces", "recovered model's traces", "difference"],
    ):
        ax.imshow(data, aspect="auto", cmap="seismic", extent=extent, vmin=-scale, vmax=scale)
        ax.set_xlabel("receiver x")
        ax.set_ylabel("t")
        ax.set_title(title)
    axes[3].semilogy(history)
    axes[3].set_xlabel("evaluation")
    axes[3].set_ylabel("relative misfit")
    axes[3].set_title("wave inverse problem")
    fig.savefig(paths[1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return paths
