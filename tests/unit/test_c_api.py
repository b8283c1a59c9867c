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
