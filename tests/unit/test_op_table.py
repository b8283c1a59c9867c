"""The op table (adcme_mpi/op_table.py) is the only list of the ops: each row
names real files, the generated header carries its names, and every public
op has its self-test case and its tests. Cheap and without mpiexec: the
tests under tests/mpi are read from their source (their lists are keyed by
public op: the CASES of test_modes.py and test_second_order.py, and the
@adjoint_test(...) marks), so a new op without tests fails here first."""

import ast
import dataclasses
import glob
import os
import re

import pytest

from adcme_mpi import op_table
from adcme_mpi.op_table import OPS, TEST_KINDS, TYPES, by_type, public_ops

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MPI_TESTS = os.path.join(ROOT, "tests", "mpi")


def registered(kernel):
    """The op types a kernel file registers: REGISTER_OP("T"), or a macro of
    the file whose body calls REGISTER_OP on its first parameter, used as
    MACRO("T", ...) (ROOTED_COLLECTIVE, SPARSE_OP)."""
    text = open(os.path.join(ROOT, kernel)).read()
    types = set(re.findall(r'REGISTER_OP\("(\w+)"\)', text))
    for macro, param, body in re.findall(r"#define (\w+)\((\w+)[^)]*\)((?:.*\\\n)*.*)", text):
        if re.search(rf"REGISTER_OP\({param}\)", body):
            types |= set(re.findall(rf'^{macro}\("(\w+)"', text, flags=re.M))
    return types


@pytest.mark.parametrize("row", OPS, ids=lambda row: row.type)
def test_each_row_names_its_kernel_and_wrapper_files(row):
    assert os.path.isfile(os.path.join(ROOT, row.kernel)), row.kernel
    assert os.path.isfile(os.path.join(ROOT, row.wrapper)), row.wrapper
    assert row.type in registered(row.kernel), f'{row.kernel} has no REGISTER_OP("{row.type}")'
    source = open(os.path.join(ROOT, row.wrapper)).read()
    assert f'RegisterGradient("{row.type}")' in source, f"{row.wrapper}: no gradient of {row.type}"
    for name in row.public:
        assert re.search(rf"^(def {name}\(|{name} = )", source, flags=re.M), (row.wrapper, name)


def test_backward_names_say_whose_gradient_runs():
    """A row's backward types are ops of the table, and each of them, in a
    backward pass, names this row's op: MPIBcast as the gradient of mpi_sum
    says "gradient of mpi_sum"; MPISparseGather, which runs in the gradients
    of mpi_sparse_matvec and of mpi_sparse_solve, names both."""
    for row in OPS:
        assert row.backward_types and set(row.backward_types) <= TYPES, row
        assert " of " in row.backward_name, row.backward_name
        if not row.public:
            continue  # a gradient-only op: its own gradients run on the forward communicator
        for backward in row.backward_types:
            assert row.name in by_type(backward).backward_name, (row.type, backward)


def test_the_header_has_each_row_with_its_full_backward_name():
    assert len(TYPES) == len(OPS)
    header = op_table.cpp_header()
    rows = re.findall(r'^  X\((\w+), "([^"]*)", "([^"]*)", (\d+)\)', header, flags=re.M)
    assert [(t, n, b) for t, n, b, _ in rows] == [(o.type, o.name, o.backward_name) for o in OPS]
    kinds = [int(k) for _, _, _, k in rows]
    assert [k for k in kinds if k] == list(range(1, sum(o.checked for o in OPS) + 1))
    assert all((k != 0) == o.checked for k, o in zip(kinds, OPS))


def test_public_names_are_ops_and_exported():
    import adcme_mpi as am

    assert len(public_ops()) == len(set(public_ops()))
    for name in public_ops():
        assert callable(getattr(am, name)), name
    not_ops = set(am.wrappers.NOT_OPS)
    assert not not_ops & set(public_ops())
    assert set(am.wrappers.__all__) == set(public_ops()) | not_ops
    assert set(am.wrappers.__all__) <= set(am.__all__)


def test_each_public_op_has_a_selftest_case():
    from adcme_mpi import _selftest

    for row in OPS:
        assert (row.case is not None) == bool(row.public), row.type
    assert set(op_table.selftest_cases()) == set(_selftest.CASES)


# ---- the tests' lists (tests/mpi), read from their source ----


def _names(node):
    """A key of CASES: "mpi_sum" or ("mpi_send", "mpi_recv")."""
    value = ast.literal_eval(node)
    return (value,) if isinstance(value, str) else tuple(value)


def declared_cases():
    """{kind: {public op: [where]}} from tests/mpi: the keys of CASES in
    test_modes.py ("modes") and test_second_order.py ("second_order"), and
    the arguments of every @adjoint_test(...) ("adjoint")."""
    found = {kind: {} for kind in TEST_KINDS}
    lists = {"test_modes.py": "modes", "test_second_order.py": "second_order"}
    for path in sorted(glob.glob(os.path.join(MPI_TESTS, "*.py"))):
        tree = ast.parse(open(path).read(), path)
        base = os.path.basename(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "adjoint_test":
                for name in (ast.literal_eval(arg) for arg in node.args):
                    found["adjoint"].setdefault(name, []).append(f"{base}:{node.lineno}")
        if base in lists:
            (cases,) = [
                node.value
                for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CASES"
            ]
            for key in cases.keys:
                for name in _names(key):
                    found[lists[base]].setdefault(name, []).append(f"{base}:{key.lineno}")
    return found


def problems(found, rows):
    """What is missing: public ops of `rows` without a case of a kind and no
    reason in their row, reasons for a kind that has a case, cases of names
    that are not public ops."""
    public = {name: row for row in rows for name in row.public}
    out = []
    for kind in TEST_KINDS:
        for name in sorted(set(found[kind]) - set(public)):
            out.append(f"{kind}: {name} ({found[kind][name]}) is not a public op")
    for name, row in public.items():
        for kind in TEST_KINDS:
            if kind in row.untested and name in found[kind]:
                out.append(f"{name}: its row says it has no {kind} case, but tests/mpi has one")
            if kind not in row.untested and name not in found[kind]:
                out.append(
                    f"{name} has no {kind} case in tests/mpi (and its row, {row.type}, "
                    "gives no reason in `untested`)"
                )
    return out


def test_every_public_op_has_an_adjoint_a_modes_and_a_second_order_case():
    found = declared_cases()
    assert all(found[kind] for kind in TEST_KINDS), found
    assert not problems(found, OPS), "\n".join(problems(found, OPS))


def test_a_new_public_op_without_tests_fails():
    new = op_table.Op(
        type="MPIImaginary",
        name="mpi_imaginary",
        backward_types=("MPIAllreduce",),
        backward_name="gradient of mpi_imaginary",
        kernel="ops/collective.cc",
        wrapper="adcme_mpi/wrappers/collectives.py",
        checked=True,
        public=("mpi_imaginary",),
        case="mpi_imaginary",
    )
    found = declared_cases()
    before = problems(found, OPS)  # [] (the test above)

    def new_problems(row):
        return problems(found, OPS + (row,))[len(before) :]

    assert new_problems(new) == [
        f"mpi_imaginary has no {kind} case in tests/mpi (and its row, MPIImaginary, "
        "gives no reason in `untested`)"
        for kind in TEST_KINDS
    ]
    integers_only = dataclasses.replace(
        new, untested={"adjoint": "integers only", "second_order": "integers only"}
    )
    assert len(new_problems(integers_only)) == 1  # modes
    found["modes"]["mpi_imaginary"] = ["test_modes.py:1"]
    assert new_problems(integers_only) == []
    found["adjoint"]["mpi_imaginary"] = ["test_collectives.py:1"]
    assert new_problems(integers_only) == [
        "mpi_imaginary: its row says it has no adjoint case, but tests/mpi has one"
    ]


def test_reasons_for_no_case_name_a_kind():
    for row in OPS:
        assert set(row.untested) <= set(TEST_KINDS), row
        assert all(isinstance(why, str) and why for why in row.untested.values()), row


def test_the_xla_column_names_exactly_the_ops_that_xla_cc_lowers():
    """A row with xla=True has a REGISTER_XLA_OP in ops/xla.cc, and every
    REGISTER_XLA_OP there has its row marked; xla_ops() is the public ops
    of those rows (what the XLACompilationError message lists)."""
    text = open(os.path.join(ROOT, "ops", "xla.cc")).read()
    lowered = set(re.findall(r'REGISTER_XLA_OP\(Name\("(\w+)"\)', text))
    assert lowered == {row.type for row in OPS if row.xla}
    # every op but the sparse ones (PETSc state), which refuse under jit_compile=True
    assert lowered == {row.type for row in OPS if not row.needs_petsc}
    assert "mpi_allreduce" in op_table.xla_ops() and "mpi_halo_exchange" in op_table.xla_ops()
    assert not any(name.startswith("mpi_sparse") for name in op_table.xla_ops())
    # a lowered op's gradient ops lower too, so its gradient compiles as well
    for row in OPS:
        if row.xla:
            assert all(by_type(t).xla for t in row.backward_types), row


def test_the_buffer_column_reaches_the_header_and_the_kernels():
    """Every row's `buffer` is a BUFFERS policy, the header's buffer table
    carries each row's, and a kernel file with an "input" row allocates
    through MpiKernel::OutputBuffer (which reads the table): a row changed to
    "input" whose kernel writes outputs another way fails here."""
    assert all(row.buffer in op_table.BUFFERS for row in OPS)
    header = op_table.cpp_header()
    rows = re.findall(r"^  X\((\w+), (k\w+)\)", header, flags=re.M)
    assert rows == [(o.type, op_table.BUFFERS[o.buffer]) for o in OPS]
    for row in OPS:
        if row.buffer == "input":
            assert "OutputBuffer(ctx, 0," in open(os.path.join(ROOT, row.kernel)).read(), row
