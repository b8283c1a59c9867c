"""The TensorFlow internals adcme_mpi relies on, in one place.

Checked with TensorFlow 2.21 (the tested version; see pyproject.toml). Each
is a long-standing private API of tf.Graph / tf.Operation / FuncGraph; if a
TensorFlow release renames one, this is the only file to change.
"""

from tensorflow.python.framework import func_graph as _func_graph


def is_function_graph_with_auto_deps(graph):
    """True inside tf.function (and its control-flow bodies), where
    TensorFlow's automatic control dependencies already run stateful ops in
    creation order."""
    return isinstance(graph, _func_graph.FuncGraph) and bool(
        getattr(graph, "_add_control_dependencies", False)
    )


def control_flow_context(graph):
    """The v1 control-flow context (a tf.while_loop body, a tf.cond branch)
    ops are created in now, or None at the top level."""
    return graph._get_control_flow_context()


def add_control_input(op, before):
    """Make `op` run after `before` (an edge added after `op` was created)."""
    op._add_control_input(before)


def exclude_from_autograph(package):
    """Tell AutoGraph to call `package`'s functions as they are inside
    tf.function (they are plain Python around MPI handles; converting them
    only adds frames to tracebacks and warnings about mpi4py's Cython
    methods). Same effect as tf.autograph.experimental.do_not_convert on
    each function, without its wrapper frames."""
    from tensorflow.python.autograph.core import config, config_lib

    rule = config_lib.DoNotConvert(package)
    if rule not in config.CONVERSION_RULES:
        config.CONVERSION_RULES = (rule,) + tuple(config.CONVERSION_RULES)


def in_xla_compilation(graph):
    """True while a tf.function(jit_compile=True) (or an XLA context of
    tf.compat.v1) is being traced: everything created there must compile."""
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))
