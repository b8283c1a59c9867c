"""The op table: one row per TensorFlow op, the only list of the ops, and the
error texts that both languages print. Everything that lists ops reads it:

- C++: CMake runs `python adcme_mpi/op_table.py --header FILE` at build time
  and writes the header to `generated/op_table.h` in the CMake build
  directory (`build/generated/op_table.h` for `cmake -B build`; for a pip
  install, under scikit-build-core's build directory): the OpKind of every
  checked op and each op's names in messages, forward and in a backward pass
  (`X(type, name, backward name, kind)`, read by UserFacingName and the
  checks' report of what each rank is doing), each op's buffer policy
  (`ADCME_MPI_BUFFER_TABLE`, read by MpiKernel::OutputBuffer: which ops
  write into their input's buffer), and the message templates;
- Python: the package's op exports (`wrappers/__init__.py`; the public names
  that are not ops, mpi_SparseTensor, petsc_options and petsc_info, are
  exported there by hand), the self-test's cases (`_selftest.py`, one per
  `case` key), the tests' lists (`tests/mpi/test_modes.py` and
  `tests/mpi/test_second_order.py` key their CASES by public op; adjoint
  tests are marked `@adjoint_test("<public op>")`) and the benchmarks' lists
  of MPI op types.

Adding an op touches four places:
1. its row here (every field of Op; if its gradient runs the op of another
   row, e.g. MPIAllreduce, that row's backward_name must name it too);
2. its kernel: its REGISTER_OP and kernel in the row's `kernel` file;
3. its wrapper and gradient in the row's `wrapper` file (a public function
   also needs an example in its docstring and a line in docs/api.rst);
4. its own tests: its self-test case (adcme_mpi/_selftest.py CASES, under
   the row's `case` key), an adjoint (dot-product) test in tests/mpi marked
   `@adjoint_test("<public op>")`, and entries in the CASES of
   tests/mpi/test_modes.py and tests/mpi/test_second_order.py, or the
   reason for none in the row's `untested`.
Without mpiexec, tests/unit/test_op_table.py and test_c_api.py fail when one
is missing: a REGISTER_OP without a row, a row whose files do not exist or
do not register it, a public op without a self-test case, an adjoint test,
a modes case or a second-order case. Under mpiexec, test_modes.py and
test_second_order.py fail for a public op without a case, and
tests/mpi/test_op_table.py when a gradient makes other ops than its row's
backward_types. Plain Python, no TensorFlow: CMake runs it.
"""

import sys
from dataclasses import dataclass, field

# The kinds of test every public op needs (tests/mpi), unless its row's
# `untested` says why not.
TEST_KINDS = ("adjoint", "modes", "second_order")

# Kernel files that CMake builds into the sparse library (PETSc): their ops
# exist only where PETSc was found (CMakeLists.txt, adcme_mpi_sparse).
PETSC_KERNELS = ("ops/sparse.cc",)


# What an op's `buffer` says about where its data outputs are written
# (ops/kernel.h, MpiKernel::OutputBuffer):
BUFFERS = {
    # output 0 into input 0's buffer when TensorFlow can hand it over
    # (nothing else reads that input); a new buffer otherwise. Only for a
    # kernel that is right when the two are one buffer (in place).
    "input": "kInput",
    # a new buffer every run (also the ops that return their input itself)
    "new": "kNew",
}
# (A third policy, a large output kept by its kernel from run to run, and a
# pool of freed large blocks were measured and left out: slower at 1 MiB,
# no faster at 8 MiB; benchmarks/LARGE_BUFFERS.md.)


@dataclass(frozen=True)
class Op:
    type: str  # the TensorFlow op type (REGISTER_OP's name)
    name: str  # what messages call it on a forward pass
    backward_types: tuple  # the op types its gradient function makes (on the gradient comm)
    backward_name: str  # what messages call it when it runs in a backward pass, in full
    kernel: str  # its REGISTER_OP and kernel (a path from the checkout's root)
    wrapper: str  # its Python wrapper and gradient (a path from the checkout's root)
    checked: bool  # runs the cross-rank check (and so has an OpKind)
    public: tuple = ()  # the public Python op functions it backs (am.<name>), ops only
    case: str = None  # its self-test case (_selftest.CASES); None: a gradient-only op
    untested: dict = field(default_factory=dict, hash=False)  # test kind -> why none
    # lowers to XLA (ops/xla.cc: a side-effecting custom call that runs the
    # op's kernel): compiles inside tf.function(jit_compile=True). Not the
    # sparse ops (their rows say False), which refuse there.
    xla: bool = True
    # where its data outputs are written (BUFFERS; ops/kernel.h, OutputBuffer)
    buffer: str = "new"

    @property
    def needs_petsc(self):
        return self.kernel in PETSC_KERNELS


OPS = (
    Op(
        type="MPISum",
        name="mpi_sum",
        backward_types=("MPIBcast",),
        backward_name="gradient of mpi_bcast",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_sum",),
        case="mpi_sum",
        buffer="input",
    ),
    Op(
        type="MPIAllreduce",
        name="mpi_allreduce",
        backward_types=("MPIAllreduce",),
        backward_name="gradient of mpi_allreduce",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_allreduce",),
        case="mpi_allreduce",
        buffer="input",
    ),
    Op(
        type="MPIBcast",
        name="mpi_bcast",
        backward_types=("MPISum",),
        backward_name="gradient of mpi_sum",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_bcast",),
        case="mpi_bcast",
        buffer="input",
    ),
    Op(
        type="MPIGather",
        name="mpi_gather",
        backward_types=("MPIScatter",),
        backward_name="gradient of mpi_scatter",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_gather",),
        case="mpi_gather",
    ),
    Op(
        type="MPIScatter",
        name="mpi_scatter",
        backward_types=("MPIGather",),
        backward_name="gradient of mpi_gather",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_scatter",),
        case="mpi_scatter",
    ),
    Op(
        type="MPIAllgather",
        name="mpi_allgather",
        backward_types=("MPIReduceScatter",),
        # (also the one op of the gradients of mpi_allreduce's and mpi_sum's
        # op="prod", and of mpi_sum's op="max" and "min")
        backward_name="gradient of mpi_reduce_scatter, mpi_allreduce or mpi_sum",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_allgather",),
        case="mpi_allgather",
    ),
    Op(
        type="MPIReduceScatter",
        name="mpi_reduce_scatter",
        backward_types=("MPIAllgather",),
        backward_name="gradient of mpi_allgather",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_reduce_scatter",),
        case="mpi_reduce_scatter",
    ),
    Op(
        type="MPIScan",
        name="mpi_scan",
        # the reverse scan (attr reverse) on the gradient communicator; its
        # own gradient is the forward scan again
        backward_types=("MPIScan",),
        backward_name="gradient of mpi_scan",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_scan",),
        case="mpi_scan",
    ),
    Op(
        type="MPIAlltoall",
        name="mpi_alltoall",
        # its own adjoint: the alltoall back, with the transposed splits
        backward_types=("MPIAlltoall",),
        backward_name="gradient of mpi_alltoall",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_alltoall",),
        case="mpi_alltoall",
    ),
    Op(
        type="MPIHaloExchange",
        name="mpi_halo_exchange",
        backward_types=("MPIHaloExchangeGrad",),
        # as the gradient of its gradient: the wrappers alternate the communicators,
        # so there it runs on the forward one; this name is for completeness
        backward_name="gradient of mpi_halo_exchange's gradient",
        kernel="ops/halo.cc",
        wrapper="adcme_mpi/wrappers/halo.py",
        checked=True,
        public=("mpi_halo_exchange",),
        case="mpi_halo_exchange",
    ),
    Op(
        type="MPIHaloExchangeGrad",
        name="mpi_halo_exchange (gradient)",
        backward_types=("MPIHaloExchange",),
        backward_name="gradient of mpi_halo_exchange",
        kernel="ops/halo.cc",
        wrapper="adcme_mpi/wrappers/halo.py",
        checked=True,
    ),
    Op(
        type="MPISparseGather",
        name="mpi_sparse_gather",
        backward_types=("MPISparseScatterAdd",),
        # the x_j of the values' gradients (_value_gradient, wrappers/sparse.py)
        backward_name="gradient of mpi_sparse_matvec or mpi_sparse_solve for the matrix values",
        kernel="ops/sparse.cc",
        xla=False,  # not lowered: its kernel holds PETSc state across runs
        wrapper="adcme_mpi/wrappers/sparse.py",
        checked=True,
    ),
    Op(
        type="MPISparseScatterAdd",
        name="mpi_sparse_scatter_add",
        backward_types=("MPISparseGather",),
        # the gather's gradient: on the gradient communicator only in a third derivative
        # (or higher) of a product or a solve
        backward_name=(
            "higher derivative of mpi_sparse_matvec or mpi_sparse_solve for the matrix values"
        ),
        kernel="ops/sparse.cc",
        xla=False,  # not lowered: its kernel holds PETSc state across runs
        wrapper="adcme_mpi/wrappers/sparse.py",
        checked=True,
    ),
    Op(
        type="MPISparseMatVec",
        name="mpi_sparse_matvec",
        backward_types=("MPISparseMatVec", "MPISparseGather"),
        backward_name="gradient of mpi_sparse_matvec",
        kernel="ops/sparse.cc",
        xla=False,  # not lowered: its kernel holds PETSc state across runs
        wrapper="adcme_mpi/wrappers/sparse.py",
        checked=True,
        public=("mpi_sparse_matvec",),
        case="mpi_sparse_matvec",
    ),
    Op(
        type="MPISparseSolve",
        name="mpi_sparse_solve",
        backward_types=("MPISparseSolve", "MPISparseGather"),
        backward_name="gradient of mpi_sparse_solve",
        kernel="ops/sparse.cc",
        xla=False,  # not lowered: its kernel holds PETSc state across runs
        wrapper="adcme_mpi/wrappers/sparse.py",
        checked=True,
        public=("mpi_sparse_solve",),
        case="mpi_sparse_solve",
    ),
    Op(
        type="MPISend",
        name="mpi_send",
        backward_types=("MPIRecv",),
        backward_name="gradient of mpi_recv",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_send", "mpi_sendrecv"),
        case="mpi_send/mpi_recv",
    ),
    Op(
        type="MPIRecv",
        name="mpi_recv",
        backward_types=("MPISend",),
        backward_name="gradient of mpi_send",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_recv",),
        case="mpi_send/mpi_recv",
        buffer="input",
    ),
    Op(
        type="MPIExchange",
        name="mpi_exchange",
        backward_types=("MPIExchange",),
        backward_name="gradient of mpi_exchange",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_exchange",),
        case="mpi_exchange",
    ),
    Op(
        type="MPIIsend",
        name="mpi_isend",
        backward_types=("MPIWait",),
        backward_name="gradient of mpi_wait (of an mpi_irecv)",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_isend",),
        case="mpi_isend/mpi_irecv/mpi_wait",
    ),
    Op(
        type="MPIIrecv",
        name="mpi_irecv",
        backward_types=("MPIWait",),
        backward_name="gradient of mpi_wait (of an mpi_isend)",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_irecv",),
        case="mpi_isend/mpi_irecv/mpi_wait",
    ),
    Op(
        type="MPIWait",
        name="mpi_wait",
        backward_types=("MPIIsend", "MPIIrecv"),
        backward_name="gradient of mpi_isend / mpi_irecv (its wait)",
        kernel="ops/p2p.cc",
        wrapper="adcme_mpi/wrappers/p2p.py",
        checked=False,
        public=("mpi_wait",),
        case="mpi_isend/mpi_irecv/mpi_wait",
    ),
)

# Error texts, written once: `$0`, `$1`, ... are the arguments (absl::Substitute's
# syntax; `message` below fills them in Python). Every message starts with the
# op and rank ("mpi_bcast (rank 1 of 2): ...") in both languages.
MESSAGES = {
    "out_of_range": "argument '$0' = $1 is out of range [$2, $3]",
    "dtype": "argument '$0' has dtype $1; supported: $2",
    "to_oneself": "argument '$0' = $1 is this rank; sending to oneself is an error",
    "same_everywhere": "argument '$0' must be the same on every rank; got$1",
    "solver": "argument 'solver' = '$0' is not one of $1",
    "grid_size": "m * n = $0 * $1 = $2 must equal the communicator size $3",
    "halo_width": "argument '$0' has shape $1; each dimension must be at least width = $2",
}

# The sparse solve's solvers (ADCME's names, plus GAMG), written once: the
# wrapper checks against them and the kernel's header gets them.
SOLVERS = ("BoomerAMG", "GAMG", "GMRES", "CG")

TYPES = frozenset(op.type for op in OPS)
DATA_DTYPES = "float32, float64, int32, int64, float16, bfloat16, complex64, complex128"
# The halo exchange's (its gradient kernel is float32/float64 only).
HALO_DTYPES = "float32, float64, int32, int64"


def by_type(op_type):
    return next(op for op in OPS if op.type == op_type)


def xla_ops():
    """The public ops that compile inside tf.function(jit_compile=True)."""
    return tuple(name for o in OPS if o.xla for name in o.public)


def public_ops():
    """The public Python op functions, in table order (am.mpi_sum, ...)."""
    return [name for op in OPS for name in op.public]


def row_of(public_name):
    """The row whose op a public function runs (mpi_sendrecv: MPISend's)."""
    return next(op for op in OPS if public_name in op.public)


def selftest_cases():
    """The self-test's case keys, each once, in table order."""
    return list(dict.fromkeys(op.case for op in OPS if op.case is not None))


def message(key, *args):
    """MESSAGES[key] with $0, $1, ... replaced by args (as the C++ side does)."""
    text = MESSAGES[key]
    for i in reversed(range(len(args))):  # $10 before $1
        text = text.replace(f"${i}", str(args[i]))
    return text


def _c_string(text):
    assert '"' not in text and "\\" not in text, text
    return f'"{text}"'


def cpp_header():
    """generated/op_table.h: the table as an X-macro, and the message templates."""
    kinds, rows, buffers = {}, [], []
    for op in OPS:
        if op.checked:
            kinds[op.type] = len(kinds) + 1
    for op in OPS:
        name, backward = _c_string(op.name), _c_string(op.backward_name)
        rows.append(f"  X({op.type}, {name}, {backward}, {kinds.get(op.type, 0)})")
        buffers.append(f"  X({op.type}, {BUFFERS[op.buffer]})")
    lines = [
        "// Generated from adcme_mpi/op_table.py at build time; do not edit.",
        "#ifndef ADCME_MPI_OPS_OP_TABLE_H_",
        "#define ADCME_MPI_OPS_OP_TABLE_H_",
        "",
        "// X(type, name in messages, name in messages in a backward pass (in full,",
        '// e.g. "gradient of mpi_sum"), check kind or 0)',
        "#define ADCME_MPI_OP_TABLE(X) \\",
        " \\\n".join(rows),
        "",
        "// X(type, BufferPolicy of its data outputs: kInput or kNew)",
        "#define ADCME_MPI_BUFFER_TABLE(X) \\",
        " \\\n".join(buffers),
        "",
        "namespace adcme_mpi {",
        "namespace messages {",
    ]
    for key, text in MESSAGES.items():
        camel = "".join(part.capitalize() for part in key.split("_"))
        lines.append(f'constexpr char k{camel}[] = "{text}";')
    lines += [
        f'constexpr char kDataDtypes[] = "{DATA_DTYPES}";',
        "}  // namespace messages",
        "constexpr const char* kSolvers[] = {" + ", ".join(f'"{s}"' for s in SOLVERS) + "};",
        f"constexpr int kSolverCount = {len(SOLVERS)};",
        f'constexpr char kSolverNames[] = "{", ".join(SOLVERS)}";',
        "}  // namespace adcme_mpi",
        "",
        "#endif  // ADCME_MPI_OPS_OP_TABLE_H_",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--header":
        sys.exit("usage: python adcme_mpi/op_table.py --header FILE")
    text = cpp_header()
    try:
        unchanged = open(sys.argv[2]).read() == text
    except OSError:
        unchanged = False
    if not unchanged:  # keep the file's time when nothing changed (no rebuild)
        with open(sys.argv[2], "w") as f:
            f.write(text)
