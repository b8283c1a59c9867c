"""The op table: one row per TensorFlow op, and the error texts that both
languages print. Everything that lists ops reads it:

- C++: ops/op_table.h is generated from it at build time (CMake runs
  `python adcme_mpi/op_table.py --header FILE`): the OpKind of every
  checked op, the user-facing names in messages (`UserFacingName`), the
  checks' table of what each rank is doing, and the message templates;
- Python: the package's exports (`wrappers/__init__.py`), the self-test's
  cases (`_selftest.py` has one case per row that has a public name), and
  the tests' and benchmarks' lists of MPI op types.

Adding an op: one row here, its REGISTER_OP and kernel in
ops/<family>.cc, its wrapper and gradient in adcme_mpi/wrappers/<family>.py,
its self-test case and tests. Plain Python, no TensorFlow: CMake runs it.
"""

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    type: str  # the TensorFlow op type (REGISTER_OP's name)
    name: str  # what messages call it on a forward pass
    adjoint: str  # the op type of its gradient: in a backward pass it is "gradient of <that name>"
    family: str  # ops/<family>.cc and adcme_mpi/wrappers/<family>.py
    checked: bool  # runs the cross-rank check (and so has an OpKind)
    public: tuple = ()  # the Python names it backs, exported by the package


OPS = (
    Op("MPISum", "mpi_sum", "MPIBcast", "collectives", True, ("mpi_sum",)),
    Op("MPIAllreduce", "mpi_allreduce", "MPIAllreduce", "collectives", True, ("mpi_allreduce",)),
    Op("MPIBcast", "mpi_bcast", "MPISum", "collectives", True, ("mpi_bcast",)),
    Op("MPIGather", "mpi_gather", "MPIScatter", "collectives", True, ("mpi_gather",)),
    Op("MPIScatter", "mpi_scatter", "MPIGather", "collectives", True, ("mpi_scatter",)),
    Op(
        "MPIHaloExchange",
        "mpi_halo_exchange",
        "MPIHaloExchangeGrad",
        "halo",
        True,
        ("mpi_halo_exchange",),
    ),
    Op(
        "MPIHaloExchangeGrad",
        "mpi_halo_exchange (gradient)",
        "MPIHaloExchange",
        "halo",
        True,
    ),
    Op("MPISparseGather", "mpi_sparse_gather", "MPISparseScatterAdd", "sparse", True),
    Op("MPISparseScatterAdd", "mpi_sparse_scatter_add", "MPISparseGather", "sparse", True),
    Op(
        "MPISparseMatVec",
        "mpi_sparse_matvec",
        "MPISparseMatVec",
        "sparse",
        True,
        ("mpi_sparse_matvec", "mpi_SparseTensor", "petsc_options", "petsc_info"),
    ),
    Op(
        "MPISparseSolve",
        "mpi_sparse_solve",
        "MPISparseSolve",
        "sparse",
        True,
        ("mpi_sparse_solve",),
    ),
    Op("MPISend", "mpi_send", "MPIRecv", "p2p", False, ("mpi_send", "mpi_sendrecv")),
    Op("MPIRecv", "mpi_recv", "MPISend", "p2p", False, ("mpi_recv",)),
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
DATA_DTYPES = "float32, float64, int32, int64"


def by_type(op_type):
    return next(op for op in OPS if op.type == op_type)


def public_names():
    return [name for op in OPS for name in op.public]


def message(key, *args):
    """MESSAGES[key] with $0, $1, ... replaced by args (as the C++ side does)."""
    text = MESSAGES[key]
    for i in reversed(range(len(args))):  # $10 before $1
        text = text.replace(f"${i}", str(args[i]))
    return text


def cpp_header():
    """ops/op_table.h: the table as an X-macro, and the message templates."""
    kinds, rows = {}, []
    for op in OPS:
        if op.checked:
            kinds[op.type] = len(kinds) + 1
    for op in OPS:
        backward = "gradient of " + by_type(op.adjoint).name
        rows.append(f'  X({op.type}, "{op.name}", "{backward}", {kinds.get(op.type, 0)})')
    lines = [
        "// Generated from adcme_mpi/op_table.py at build time; do not edit.",
        "#ifndef ADCME_MPI_OPS_OP_TABLE_H_",
        "#define ADCME_MPI_OPS_OP_TABLE_H_",
        "",
        "// X(type, name in messages, name in a backward pass, check kind or 0)",
        "#define ADCME_MPI_OP_TABLE(X) \\",
        " \\\n".join(rows),
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
