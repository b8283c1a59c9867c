"""The C ABI is written once in ops/c_api.h and once as ctypes signatures in
adcme_mpi/_c_api.py: the two must name the same entry points, in the same
order, with the same number of arguments."""

import os
import re

from adcme_mpi import _c_api

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "ops", "c_api.h")


def declared():
    text = open(HEADER).read()
    found = re.findall(r"ADCME_MPI_C_API\s+[\w\s\*]+?\b(adcme_mpi_\w+)\(([^)]*)\);", text)
    return [
        (name, 0 if args.strip() in ("", "void") else args.count(",") + 1) for name, args in found
    ]


def test_header_and_ctypes_agree():
    signatures = {**_c_api.OPS_LIBRARY, **_c_api.SPARSE_LIBRARY}
    bound = [(name, len(argtypes)) for name, (_, argtypes) in signatures.items()]
    assert declared() == bound


def test_the_ops_library_exports_every_entry_point():
    import adcme_mpi._loader as loader

    for name in _c_api.OPS_LIBRARY:
        assert hasattr(loader.capi, name), name


def test_the_op_table_lists_every_registered_op():
    """Adding an op is one row in adcme_mpi/op_table.py: every REGISTER_OP in
    ops/ has its row (its kind, its names in messages, its export), and
    every row an op."""
    from adcme_mpi import op_table

    ops_dir = os.path.join(os.path.dirname(HEADER))
    registered = set()
    for name in os.listdir(ops_dir):
        if name.endswith(".cc"):
            text = open(os.path.join(ops_dir, name)).read()
            registered |= set(re.findall(r'REGISTER_OP\("(\w+)"\)', text))
            # the families' macros: ROOTED_COLLECTIVE("MPISum", ...), SPARSE_OP(...)
            registered |= set(re.findall(r'^[A-Z_]+\("(MPI\w+)",', text, flags=re.M))
    assert registered == set(op_table.TYPES)


def test_messages_fill_in_like_absl_substitute():
    from adcme_mpi.op_table import message

    assert message("out_of_range", "root", 5, 0, 1) == "argument 'root' = 5 is out of range [0, 1]"
