"""Issue 32 feasibility check: a custom op lowered to an XLA:CPU custom call.

Build proto.so as NOTES.md says, then run this file with the venv's Python.
It runs the op eagerly, then twice inside tf.function(jit_compile=True)
(the int64 token threads through both calls), prints the HLO, and feeds a
negative input to show which exception a failing custom call gives Python.
"""

import os

import tensorflow as tf

m = tf.load_op_library(os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto.so"))
x = tf.constant([1.0, 2.0, 3.0])
t = tf.constant(0, tf.int64)
print("eager", m.proto_xla(x, t))


@tf.function(jit_compile=True)
def f(x, t):
    b, t = m.proto_xla(x, t)
    b2, t = m.proto_xla(b * 2, t)
    return b2, t


print("jit", f(x, t))
print(f.experimental_get_compiler_ir(x, t)(stage="hlo")[:2000])
try:
    print(f(tf.constant([-1.0, 2.0]), t))
except Exception as e:  # noqa: BLE001 -- the point is to show the type
    print("ERR", type(e).__name__, str(e)[:300])
