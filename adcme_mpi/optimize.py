"""mpi_optimize: ADCME's master/worker distributed optimizer, on scipy.

Rank 0 runs scipy.optimize.minimize. Every time scipy needs the objective or
the gradient at x, rank 0 broadcasts a command with x; every rank (rank 0
included) evaluates the same callables (which run the same TF graph, whose MPI
ops need every rank), and scipy uses rank 0's values. At the end rank 0
broadcasts the result, so every rank returns the same OptimizeResult.
"""

import traceback

import numpy as np
import scipy.optimize
from mpi4py import MPI

from ._watch import watched
from .runtime import require_mpi

__all__ = ["mpi_optimize", "MPIOptimizeError"]

_EVAL, _STOP = "eval", "stop"


class MPIOptimizeError(RuntimeError):
    """An objective or gradient evaluation raised on some rank(s)."""


class _Control:
    """Commands and error votes on a private duplicate of the communicator."""

    def __init__(self, comm, error_wait):
        self.who = f"mpi_optimize (rank {comm.Get_rank()} of {comm.Get_size()})"
        with watched(self.who, "every rank to start mpi_optimize"):
            self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.error_wait = error_wait

    def bcast(self, value, waiting_for):
        """comm.bcast from rank 0, under the watchdog (ADCME_MPI_TIMEOUT)."""
        with watched(self.who, waiting_for):
            return self.comm.bcast(value, root=0)

    def agree_on_errors(self, error):
        """Every rank says whether its evaluation failed. If the others do not
        answer within `error_wait` seconds (they are stuck inside an MPI op
        that this rank never reached), the watchdog aborts the job instead of
        hanging, quoting this rank's error."""
        flag = np.array([1 if error else 0], dtype=np.int32)
        total = np.zeros(1, dtype=np.int32)
        request = self.comm.Iallreduce(flag, total, op=MPI.SUM)
        if error:
            last = error.strip().splitlines()[-1]
            waiting_for = (
                "the other ranks to report their evaluation (they may wait inside an MPI op "
                f"this rank never reached); this rank's evaluation raised: {last}"
            )
            timeout = self.error_wait
        else:
            waiting_for, timeout = "every rank to report its evaluation", None
        with watched(self.who, waiting_for, timeout):
            request.Wait()
        if total[0] == 0:
            return
        with watched(self.who, "every rank's error message"):
            messages = self.comm.allgather(error)
        text = "\n".join(f"--- rank {r} ---\n{m}" for r, m in enumerate(messages) if m)
        bad = [r for r, m in enumerate(messages) if m]
        raise MPIOptimizeError(f"mpi_optimize: evaluation raised on rank(s) {bad}:\n{text}")

    def free(self):
        self.comm.Free()


# scipy's methods that need the Hessian as products H p (`hessp=`); "trust-exact" and
# "dogleg" need the full matrix, which a distributed graph does not form.
SECOND_ORDER = ("Newton-CG", "trust-ncg", "trust-krylov")
_METHODS = (
    "Nelder-Mead",
    "Powell",
    "CG",
    "BFGS",
    "L-BFGS-B",
    "TNC",
    "COBYLA",
    "COBYQA",
    "SLSQP",
    "trust-constr",
) + SECOND_ORDER


def _evaluate(kind, x, f, g, fg, hessp=None):
    if kind == "h":
        # x carries (x, p): the workers need both to run the same graph
        x, p = x
        return np.asarray(hessp(x, p), dtype=np.float64).reshape(x.shape)
    if fg is not None:
        value, grad = fg(x)
        return (float(value), np.asarray(grad, dtype=np.float64).reshape(x.shape))
    if kind == "f":
        return float(f(x))
    if kind == "g":
        return np.asarray(g(x), dtype=np.float64).reshape(x.shape)
    raise ValueError(kind)


def _run_one(control, kind, x, f, g, fg, hessp=None):
    error, result = None, None
    try:
        result = _evaluate(kind, x, f, g, fg, hessp)
    except Exception:  # reported to every rank below
        error = traceback.format_exc()
    control.agree_on_errors(error)
    return result


def mpi_optimize(
    f=None,
    g=None,
    x0=None,
    method="L-BFGS-B",
    options=None,
    callback=None,
    *,
    fg=None,
    hessp=None,
    comm=None,
    verbose=False,
    error_wait=30.0,
    **minimize_kw,
):
    """Minimise f with scipy.optimize.minimize on rank 0, evaluating on every rank.

    f(x) -> float and g(x) -> ndarray (scipy's style), or fg(x) -> (f, g) in
    their place (one graph run per step). Their values on rank 0 are what
    scipy sees, so they should be the global objective and gradient there
    (e.g. reduce with mpi_sum and differentiate through mpi_bcast'd
    parameters). x0 is taken from rank 0. `method`, `options` and any other
    keyword (bounds, tol, ...) go to scipy. `callback` runs on rank 0.
    verbose=True prints iteration, loss and gradient norm on rank 0.

    Second order: with method "Newton-CG", "trust-ncg" or "trust-krylov", pass
    hessp(x, p) -> ndarray, the Hessian of the objective at x times p (build
    it in the graph by differentiating <g, p> once more: every MPI op's
    gradient is differentiable, see the example); every rank runs it, like f
    and g. hessp is an error for the other methods, and those three need it.

    Every rank returns the same OptimizeResult. If f or g raises on any rank,
    every rank raises MPIOptimizeError (or, when the failing rank left the
    others waiting inside an MPI op, the job is aborted after `error_wait` s).

    Example::

        th = tf.compat.v1.placeholder(tf.float64, [1])
        L = (tf.reduce_sum(am.mpi_sum(am.mpi_bcast(th) ** am.mpi_rank())) - 2) ** 2
        g = tf.gradients(L, th)[0]
        sess = am.Session()
        f = lambda x: sess.run(L, {th: x})
        result = am.mpi_optimize(f, lambda x: sess.run(g, {th: x}), np.ones(1))
        result.x   # the same on every rank

    The same problem by Newton-CG, with Hessian-vector products from the graph::

        p = tf.compat.v1.placeholder(tf.float64, [1])
        hp = tf.gradients(tf.reduce_sum(g * p), th)[0]
        result = am.mpi_optimize(
            f, lambda x: sess.run(g, {th: x}), np.ones(1), method="Newton-CG",
            hessp=lambda x, v: sess.run(hp, {th: x, p: v}),
        )
    """
    require_mpi("mpi_optimize")
    where = f"mpi_optimize (rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()})"
    if fg is None and (f is None or g is None):
        raise TypeError(f"{where}: pass f and g, or fg")
    if x0 is None:
        raise TypeError(f"{where}: x0 is required")
    _check_method(where, method, hessp)
    control = _Control(comm or MPI.COMM_WORLD, error_wait)
    try:
        x0 = np.array(x0, dtype=np.float64)
        x0 = control.bcast(x0, "rank 0's x0")
        if control.rank == 0:
            result = _master(
                control, f, g, fg, hessp, x0, method, options, callback, verbose, minimize_kw
            )
        else:
            result = _worker(control, f, g, fg, hessp)
        return result
    finally:
        control.free()


def _check_method(where, method, hessp):
    """On every rank, before any command: a bad name raised by scipy on rank 0
    alone would reach the workers only as a stop message."""
    if callable(method):
        return  # a custom minimizer: scipy passes it everything, hessp included
    if not isinstance(method, str) or method.lower() not in {m.lower() for m in _METHODS}:
        raise ValueError(
            f"{where}: argument 'method' = {method!r} is not one of scipy's minimize methods "
            f"mpi_optimize supports: {', '.join(_METHODS)}"
        )
    second = method.lower() in {m.lower() for m in SECOND_ORDER}
    if second and hessp is None:
        raise ValueError(
            f"{where}: argument 'hessp' is required with method {method!r} "
            "(a callable hessp(x, p) -> Hessian times p)"
        )
    if not second and hessp is not None:
        raise ValueError(
            f"{where}: argument 'hessp' is only used by the second-order methods "
            f"{', '.join(SECOND_ORDER)}, not by method {method!r}"
        )


def _master(control, f, g, fg, hessp, x0, method, options, callback, verbose, minimize_kw):
    def remote(kind):
        def evaluate(x, p=None):
            x = np.asarray(x, dtype=np.float64).reshape(x0.shape)
            if kind == "h":
                x = (x, np.asarray(p, dtype=np.float64).reshape(x0.shape))
            control.bcast((_EVAL, kind, x), "the workers")
            return _run_one(control, kind, x, f, g, fg, hessp)

        return evaluate

    history = {"iteration": 0, "last": None}

    def fun_and_record(kind):
        evaluate = remote(kind)

        def wrapped(x):
            out = evaluate(x)
            history["last"] = out
            return out

        return wrapped

    if fg is not None:
        fun, jac = fun_and_record("fg"), True
    else:
        fun, jac = fun_and_record("f"), remote("g")

    def report(xk, *rest):
        history["iteration"] += 1
        if verbose:
            last = history["last"]
            loss = last[0] if isinstance(last, tuple) else last
            grad = last[1] if isinstance(last, tuple) else None
            norm = f"{np.linalg.norm(grad):.3e}" if grad is not None else "-"
            print(
                f"mpi_optimize iter {history['iteration']:4d}  loss {loss:.6e}  |grad| {norm}",
                flush=True,
            )
        if callback is not None:
            return callback(xk, *rest)
        return None

    try:
        if hessp is not None:
            minimize_kw = dict(minimize_kw, hessp=remote("h"))
        result = scipy.optimize.minimize(
            fun, x0, jac=jac, method=method, options=options, callback=report, **minimize_kw
        )
    except MPIOptimizeError:
        raise  # every rank raises it already
    except BaseException as err:
        # scipy itself (or the callback) failed on rank 0: release the workers first
        control.bcast((_STOP, None, f"rank 0 failed: {err!r}"), "the workers")
        raise
    control.bcast((_STOP, result, None), "the workers")
    return result


def _worker(control, f, g, fg, hessp):
    while True:
        command, payload, extra = control.bcast(None, "rank 0's next command")
        if command == _STOP:
            if extra is not None:
                raise MPIOptimizeError(f"mpi_optimize: {extra}")
            return payload
        _run_one(control, payload, extra, f, g, fg, hessp)
