"""Program order for MPI ops, in every mode.

Every MPI op takes an *ordering token* (a float scalar) as its last input and
returns a new one as its last output. One token is threaded through all MPI
ops of a program, in the order the script creates them:

- Forward: each op depends on the previous one through the token, so MPI ops
  run in program order on every rank, whatever TensorFlow's scheduler does.
- Backward: the gradient of an op's token input is the token output of its
  adjoint op, so gradient ops run in the exact reverse order of their forward
  ops in graph mode, in eager mode (GradientTape) and in tf.function, however
  the tape or tf.gradients orders its work. Reverse order is deadlock-free
  whenever the forward pass was (gradient sends never block; see p2p.py).
- No local path: because the token links all MPI ops, a rank whose own loss
  does not depend on an op's output still runs that op's adjoint (with a zero
  cotangent), so the collective backward ops meet on every rank.

In v1 graphs (tf.compat.v1, the ADCME way) each MPI op also gets a control
edge from the one before it in its graph and control-flow context, with
gradient ops inserted at the position that mirrors their forward op: so MPI
ops created after a tf.gradients call also run after the gradient ops. Its
token also depends as data on the op placed before it (auto-clustering
compiles v1 graphs with XLA, which drops control edges).
tf.function orders stateful ops itself, by control edges, and eager mode
runs ops as created. XLA drops control edges (jit_compile=True,
auto-clustering), so inside tf.function each MPI op also depends as data on
the MPI op made before it (`run_in_order`), adjoints included; after a
custom-gradient block, on the block's token output (`_after_block`).

A tf.while_loop body is its own context with its own token: use
`while_loop` below, which threads the token through the loop, or
`checkpointed_loop` for a time loop whose gradient recomputes steps from a
few stored states (binomial checkpointing) instead of keeping every step.
"""

import weakref

import tensorflow as tf

from . import _tf_private, revolve

__all__ = ["while_loop", "checkpointed_loop", "custom_gradient", "current_token"]


def _new_token():
    return tf.zeros([], tf.float32)


class _Sequence:
    """The MPI ops of one graph and control-flow context, in execution order,
    and the current token.

    Forward ops run in creation order. A gradient op goes right before the
    gradient ops of forward ops created earlier than its own forward op, so
    gradient ops run in the exact reverse order of their forward ops.

    In a graph it holds names, not tensors or ops (looked up in `graph` when
    needed): the registry of sequences must not keep graphs alive."""

    def __init__(self, graph=None):
        self._graph = graph  # a weak reference, or None in eager mode
        self.names = []  # op names, in execution order
        self.tokens = []  # for each: the name of its token output (a loop's is not its last output)
        self.adjoint = []  # for each: sequence number of the op it is the adjoint of, or None
        self.seq = {}  # op name -> creation sequence number
        self._token = None  # eager: a tensor; graph: a tensor name
        self._last = None  # in a function graph: the token output of the last MPI op made

    @property
    def token(self):
        if self._graph is None or self._token is None:
            return self._token
        return self._graph().get_tensor_by_name(self._token)

    @token.setter
    def token(self, value):
        self._token = value if self._graph is None or value is None else value.name

    def after_last(self, token):
        """`token`, made to depend as data on the last MPI op made in this
        function graph, unless it is that op's token already."""
        if self._last is None:
            return token
        return _linked(token, self._graph().get_tensor_by_name(self._last), True)

    def made(self, token_output):
        self._last = token_output.name

    def current_token(self):
        if self._token is None:
            self.token = _new_token()
        return self.token

    def op_at(self, position):
        return self._graph().get_operation_by_name(self.names[position])

    def position_for(self, adjoint_of):
        end = len(self.names)
        # (a GradientTape in a v1 graph hands gradient functions a _MockOp without a name)
        name = getattr(adjoint_of, "name", None)
        if name not in self.seq:
            return end, None
        target = self.seq[name]
        # step back over the adjoints of ops created before `adjoint_of`, but
        # never to before `adjoint_of` itself (when it is a gradient op whose
        # own gradient this is: second derivatives)
        floor = self.names.index(name) + 1
        while end > floor and self.adjoint[end - 1] is not None and self.adjoint[end - 1] < target:
            end -= 1
        return end, target

    def token_at(self, position):
        return self._graph().get_tensor_by_name(self.tokens[position])

    def insert(self, position, token_output, adjoint_seq):
        op = token_output.op
        self.seq[op.name] = len(self.seq)
        self.names.insert(position, op.name)
        self.tokens.insert(position, token_output.name)
        self.adjoint.insert(position, adjoint_seq)


def _linked(token, previous, pass_gradient):
    """`token` plus `previous` (another MPI op's token output) times zero:
    a data dependency, which XLA keeps where it drops control edges.
    `pass_gradient`: whether differentiating again follows the link."""
    if token.name == previous.name:
        return token
    return token + 0.0 * (previous if pass_gradient else tf.stop_gradient(previous))


# graph -> {control-flow context name ("" at the top level): _Sequence}, weakly
# keyed: the values hold only names, so a graph dies when its user drops it,
# and a new graph (even one that reuses an id) starts with no sequences.
_sequences = weakref.WeakKeyDictionary()
_eager = _Sequence()


def _sequence_for(graph):
    if tf.executing_eagerly():
        return _eager
    per_graph = _sequences.setdefault(graph, {})
    context = _tf_private.control_flow_context(graph)
    key = "" if context is None else context.name
    sequence = per_graph.get(key)
    if sequence is None:
        sequence = per_graph[key] = _Sequence(weakref.ref(graph))
    return sequence


def _current_sequence():
    return _sequence_for(None if tf.executing_eagerly() else tf.compat.v1.get_default_graph())


def _after_block(token_output):
    """The MPI ops after a custom-gradient block (custom_gradient,
    checkpointed_loop) follow its token output: it becomes the current token
    and, in a function graph, the op the next one links to as data
    (run_in_order). Linked to the last MPI op made *inside* the block, the
    next op's gradient would flow into the block's inside, past its gradient
    function: TensorFlow would differentiate the block's forward ops as well
    (in checkpointed_loop, its stored loop: a second reverse pass whose MPI
    ops race the block's own)."""
    sequence = _current_sequence()
    sequence.token = token_output
    if not tf.executing_eagerly():
        sequence.made(token_output)


def current_token():
    """The token the next MPI op created here will take."""
    return _current_sequence().current_token()


def _as_list(deps):
    if deps is None:
        return []
    return list(deps) if isinstance(deps, (list, tuple)) else [deps]


def run_in_order(create, deps=None, adjoint_of=None, token=None):
    """Create one MPI op in program order: `create(token)` builds it and
    returns its outputs, the last being its token output.

    `adjoint_of`: the forward op whose gradient this op computes; `token`:
    then the gradient of that op's token output (None: the current token).
    A forward op advances the current token; gradient ops chain through the
    token gradients instead."""
    deps = _as_list(deps)
    if tf.executing_eagerly():
        outs = create(token if token is not None else _eager.current_token())
        if adjoint_of is None:
            _eager.token = outs[-1]
        return outs
    graph = tf.compat.v1.get_default_graph()
    sequence = _sequence_for(graph)
    if token is None:
        token = sequence.current_token()
    if _tf_private.is_function_graph_with_auto_deps(graph):
        # tf.function runs stateful ops in creation order by control edges,
        # which XLA drops (jit_compile=True, auto-clustering): so each MPI op
        # also depends on the one made before it as data. Forward ops do
        # through the token already; an adjoint's token gradient may come
        # from elsewhere (a constant where nothing consumed its forward op's
        # token; data, where a gradient carried a token into arithmetic,
        # differentiated again; an adjoint whose forward op the tape skipped).
        # Not under stop_gradient: differentiated again, the link passes the
        # second-order chain back in reverse creation order, one chain.
        with graph.control_dependencies(deps):
            outs = create(sequence.after_last(token))
        sequence.made(outs[-1])
    else:
        position, adjoint_seq = sequence.position_for(adjoint_of)
        if position > 0:
            # the op placed before this one: a control edge, and data too
            # (auto-clustering compiles v1 graphs with XLA as well). Under
            # stop_gradient: in a v1 graph the placement, not the token's
            # gradient, orders second derivatives, and a forward op made
            # after tf.gradients must not lead later gradients into the
            # adjoints before it.
            deps.append(sequence.op_at(position - 1))
            token = _linked(token, sequence.token_at(position - 1), False)
        with graph.control_dependencies(deps):
            outs = create(token)
        op = outs[-1].op
        if position < len(sequence.names):
            _tf_private.add_control_input(sequence.op_at(position), op)
        sequence.insert(position, outs[-1], adjoint_seq)
    if adjoint_of is None:
        sequence.token = outs[-1]
    return outs


def while_loop(cond, body, loop_vars, **kwargs):
    """tf.while_loop whose MPI ops stay in program order: the ordering token
    is threaded through the loop as an extra loop variable, so iteration i+1's
    MPI ops follow iteration i's (in the forward and the backward pass), and
    the loop sits in the program order of the ops around it. Every result
    waits for the loop's exit token: fetching any of them runs all of the
    loop's MPI ops on that rank, whatever the result depends on.

    Example::

        step = lambda i, u: (i + 1, am.mpi_halo_exchange(u, 1, P)[1:-1, 1:-1])
        i, u = am.ordering.while_loop(lambda i, u: i < 10, step, (0, u0))
    """
    loop_vars = list(loop_vars) if isinstance(loop_vars, (list, tuple)) else [loop_vars]

    def token_cond(token, *args):
        return cond(*args)

    def token_body(token, *args):
        _current_sequence().token = token
        out = body(*args)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return [current_token()] + out

    def create(token):
        out = tf.while_loop(token_cond, token_body, [token] + loop_vars, **kwargs)
        return _after(out[0], list(out[1:])) + [out[0]]

    outs = run_in_order(create)
    return outs[:-1] if len(outs) > 2 else outs[0]


def _after(token, values):
    """`values` (a loop's results), each made to wait for the loop's exit
    token. A session runs only what its fetches need: had a rank fetched a
    result that none of the loop's MPI ops feed (a TensorArray of
    zero-width rows written from constants, say), that rank would have run
    none of them, and its peers would wait for it. Through the exit token,
    every result needs every MPI op of every iteration."""
    with tf.control_dependencies([token]):
        return [
            tf.nest.map_structure(
                lambda v: v.identity() if isinstance(v, tf.TensorArray) else tf.identity(v), value
            )
            for value in values
        ]


def custom_gradient(f):
    """tf.custom_gradient for functions whose forward or gradient creates MPI
    ops (e.g. an adjoint-method solve): both stay in program order.

    `f(*tensors)` returns `(outputs, grad_fn)` as for tf.custom_gradient. The
    ordering token goes in and out of the block as an extra tensor, so the
    block's MPI ops follow the ones before it, the ones after it follow the
    block, and `grad_fn`'s MPI ops run at the block's place in the reverse
    order. (With a plain tf.custom_gradient the token would bypass the
    block's gradient and TensorFlow would try to differentiate its inside.)
    `grad_fn` may itself be differentiable (second derivatives): its MPI ops
    chain from the block's token output too, so differentiating the
    gradient again reaches the block on every rank, also where a rank's loss
    is linear in the block's outputs, and the ranks' second-order MPI ops
    come in the same order.

    Example::

        @am.ordering.custom_gradient
        def solve(kappa):
            u = cg(kappa, b)   # MPI ops inside
            def grad(du):
                return adjoint(kappa, cg(kappa, du))   # MPI ops inside, in reverse order
            return u, grad
    """

    calls = []  # per call: {"token": the block's token output, as seen outside it}

    @tf.custom_gradient
    def block(*args):
        outer = calls[-1]
        *inputs, token = args
        _current_sequence().token = token
        outputs, grad_fn = f(*inputs)
        single = not isinstance(outputs, (list, tuple))
        flat = [outputs] if single else list(outputs)

        def grad(*upstream):
            *dys, dtoken = upstream
            sequence = _current_sequence()
            saved = sequence.token
            if dtoken is not None:
                sequence.token = dtoken
            if outer.get("token") is not None:
                # the gradient's MPI ops chain from the block's own token
                # output too (plus zero): differentiating this gradient again
                # then reaches the block on every rank, after the second-order
                # ops of this gradient, even where the rank's first-order
                # cotangent (a zeros constant) cut the link
                sequence.token = sequence.current_token() + 0.0 * outer["token"]
            grads = grad_fn(dys[0]) if single else grad_fn(*dys)
            grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
            out_token = sequence.current_token()
            sequence.token = saved  # gradient ops never advance the forward chain
            return grads + [out_token]

        return flat + [current_token()], grad

    def wrapper(*inputs):
        outer = {}
        calls[:] = [outer]  # (the grad function keeps its own call's)
        outs = block(*inputs, current_token())
        outer["token"] = outs[-1]
        _after_block(outs[-1])
        return outs[0] if len(outs) == 2 else list(outs[:-1])

    wrapper.__name__ = getattr(f, "__name__", "custom_gradient")
    wrapper.__doc__ = f.__doc__
    return wrapper


def checkpointed_loop(step, state, n_steps, checkpoints, params=()):
    """`n_steps` iterations `state = step(i, state, *params)` whose gradient
    keeps `checkpoints` states instead of every step's: binomial (revolve)
    checkpointing. `step` may contain MPI ops: they stay in program order.

    The forward pass runs the loop once, storing the initial state, K =
    `checkpoints` states at the positions of the binomial schedule and the
    state before the last step (tensors only, no tape). The backward pass
    reverses the steps from the last to the first: it restores a stored
    state, recomputes the steps up to step j (storing new checkpoints on the
    way, as the schedule says), then runs step j under a tape and its vector
    -Jacobian product. The schedule depends only on `n_steps` and K
    (`adcme_mpi.revolve`), so every rank recomputes the same steps in the
    same order: the recomputed MPI ops get new sequence numbers in the same
    order everywhere (the cross-rank check still holds), their adjoints run
    in reverse order after them, and the gradients equal the stored loop's
    to rounding. The backward pass recomputes `revolve.schedule(n, K)
    .advances` steps (the binomial minimum; about n at K =
    `revolve.checkpoints_for(n)`, n (n - 1) / 2 at K = 0, none at K >= n - 1).

    - `step(i, state, *params)`: i the step number (an int32 scalar tensor),
      `state` a float tensor or a list/tuple of them; returns the next state,
      same structure, shapes and dtypes.
    - `params`: tensors `step` depends on, whose gradients you want (pass
      them here: a tensor `step` merely captures gets no gradient).
      tf.Variables read inside `step` get their gradients too.
    - Eager mode, tf.function, tf.function(jit_compile=True) and graph mode
      (tf.gradients) with control flow v2 (TensorFlow 2's default); with
      control flow v1 (tf.compat.v1.disable_control_flow_v2) it raises an
      error. (Its gradient is its own, so no loop of it needs
      `maximum_iterations` under XLA.)
    - Inside, the loop is three nested tf.while_loops whatever n_steps is:
      the graph holds one copy of `step` and of its adjoint.

    Example::

        # heat: 2,000 steps, 60 stored states, halo exchanges inside

        def step(i, u, kappa):
            up = am.mpi_halo_exchange(u, m, n, fill_value=0.0)
            return u + c * kappa * laplacian(up)

        K = am.revolve.checkpoints_for(2000)  # 60: recomputes <= 2,000 steps
        u = am.ordering.checkpointed_loop(step, u0, 2000, K, params=[kappa])
    """
    from tensorflow.python.ops import control_flow_util

    n_steps, K = int(n_steps), int(checkpoints)
    if n_steps < 1 or K < 0:
        raise ValueError(
            f"checkpointed_loop: need n_steps >= 1 and checkpoints >= 0, got n_steps={n_steps}, "
            f"checkpoints={K}"
        )
    if not tf.executing_eagerly() and not control_flow_util.EnableControlFlowV2(
        tf.compat.v1.get_default_graph()
    ):
        raise NotImplementedError(
            "checkpointed_loop: control flow v1 is not supported (its TensorArrays cannot be "
            "overwritten); use TensorFlow 2's default control flow v2"
        )
    sched = revolve.schedule(n_steps, min(K, n_steps))
    structure = state
    flat0 = [tf.convert_to_tensor(s) for s in tf.nest.flatten(state)]
    params = [tf.convert_to_tensor(p) for p in params]
    n_state = len(flat0)
    slots = sched.K + 3

    def call_step(i, flat):
        out = step(i, tf.nest.pack_sequence_as(structure, flat), *params_now)
        out = [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]
        if len(out) != n_state:
            raise ValueError(
                f"checkpointed_loop: step returned {len(out)} tensors, the state has {n_state}"
            )
        return out

    params_now = params  # the tensors `step` sees: the block's inputs inside it

    def advance(i0, flat, count):
        """`count` (a tensor) steps from position i0: a while loop of MPI ops in order."""

        def body(k, *flat):
            return [k + 1] + call_step(i0 + k, list(flat))

        out = while_loop(lambda k, *flat: k < count, body, [tf.constant(0)] + list(flat))
        return list(out[1:])

    @tf.custom_gradient
    def block(*args):
        nonlocal params_now
        *inputs, token = args
        flat_in, params_in = list(inputs[:n_state]), list(inputs[n_state:])
        params_now = params_in
        _current_sequence().token = token
        forward_slot = tf.constant(sched.forward_slot, tf.int32)
        arrays = [
            tf.TensorArray(s.dtype, size=slots, element_shape=s.shape, clear_after_read=False)
            for s in flat_in
        ]

        def body(i, *loop):
            flat, arrays = list(loop[:n_state]), list(loop[n_state:])
            new = call_step(i, flat)
            arrays = [a.write(forward_slot[i], s) for a, s in zip(arrays, flat)]
            return [i + 1] + new + arrays

        out = while_loop(lambda i, *loop: i < n_steps, body, [tf.constant(0)] + flat_in + arrays)
        flat_out, arrays = list(out[1 : 1 + n_state]), list(out[1 + n_state :])

        def grad(*upstream, variables=None):
            *dys, dtoken = upstream
            variables = list(variables or [])
            sequence = _current_sequence()
            saved = sequence.token
            if dtoken is not None:
                sequence.token = dtoken
            dflat = [tf.zeros_like(y) if d is None else d for d, y in zip(dys, flat_out)]
            dflat, dparams, dvars = reverse_sweep(arrays, dflat, params_in, variables)
            out_token = sequence.current_token()
            sequence.token = saved  # gradient ops never advance the forward chain
            grads = dflat + dparams + [out_token]
            return (grads, dvars) if variables else grads

        def reverse_sweep(arrays, dflat, params_in, variables):
            """The reverse steps n-1..0, one iteration each: restore,
            recompute (storing), step j under a tape and its adjoint."""
            restore_slot = tf.constant([r[0] for r in sched.records], tf.int32)
            restore_pos = tf.constant([r[1] for r in sched.records], tf.int32)
            width = max(1, max(len(r[2]) for r in sched.records))
            seg_count = tf.constant([len(r[2]) for r in sched.records], tf.int32)
            seg_steps = tf.constant(
                [[m for m, _ in r[2]] + [0] * (width - len(r[2])) for r in sched.records], tf.int32
            )
            seg_slot = tf.constant(
                [[s for _, s in r[2]] + [0] * (width - len(r[2])) for r in sched.records], tf.int32
            )
            n_p = len(params_in)

            def reverse_body(q, *loop):
                loop = list(loop)
                arrays = loop[:n_state]
                dstate = loop[n_state : 2 * n_state]
                dps = loop[2 * n_state : 2 * n_state + n_p]
                dvs = loop[2 * n_state + n_p :]
                j = n_steps - 1 - q
                flat = [a.read(restore_slot[q]) for a in arrays]

                def segment(k, pos, *loop):
                    flat, arrays = list(loop[:n_state]), list(loop[n_state:])
                    m = seg_steps[q, k]
                    flat = advance(pos, flat, m)
                    arrays = [a.write(seg_slot[q, k], s) for a, s in zip(arrays, flat)]
                    return [k + 1, pos + m] + flat + arrays

                out = while_loop(
                    lambda k, pos, *loop: k < seg_count[q],
                    segment,
                    [tf.constant(0), restore_pos[q]] + flat + arrays,
                )
                flat, arrays = list(out[2 : 2 + n_state]), list(out[2 + n_state :])
                # step j under a tape, its token too: its MPI ops' adjoints
                # chain through the token after the recomputed forward ops
                sequence = _current_sequence()
                token_in = tf.identity(sequence.current_token())
                sequence.token = token_in
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(flat + params_now + [token_in] + variables)
                    new = call_step(j, flat)
                    token_out = sequence.current_token()
                sources = flat + params_now + variables + [token_in]
                g = tape.gradient(
                    new + [token_out],
                    sources,
                    output_gradients=dstate + [token_out],
                )
                g = [
                    tf.zeros_like(s) if gi is None else tf.convert_to_tensor(gi)
                    for gi, s in zip(g[:-1], sources[:-1])
                ] + [token_out if g[-1] is None else g[-1]]
                sequence.token = g[-1]
                dstate = g[:n_state]
                dps = [a + b for a, b in zip(dps, g[n_state : n_state + n_p])]
                dvs = [a + b for a, b in zip(dvs, g[n_state + n_p : -1])]
                return [q + 1] + arrays + dstate + dps + dvs

            zeros_p = [tf.zeros_like(p) for p in params_in]
            zeros_v = [tf.zeros_like(v) for v in variables]
            out = while_loop(
                lambda q, *loop: q < n_steps,
                reverse_body,
                [tf.constant(0)] + list(arrays) + dflat + zeros_p + zeros_v,
            )
            out = list(out[1:])
            n = n_state
            return out[n : 2 * n], out[2 * n : 2 * n + n_p], out[2 * n + n_p :]

        return flat_out + [current_token()], grad

    outs = block(*flat0, *params, current_token())
    _after_block(outs[-1])
    return tf.nest.pack_sequence_as(structure, list(outs[:-1]))
