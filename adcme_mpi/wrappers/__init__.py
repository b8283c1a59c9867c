"""Op wrappers, one module per op family; importing a module registers the
gradients of its ops (each next to its forward op, in adjoint pairs). What
is exported comes from the op table (adcme_mpi/op_table.py): each row's
public names, taken from its family's module."""

import importlib

from ..op_table import OPS, public_names

_families = {op.family: importlib.import_module(f".{op.family}", __name__) for op in OPS}
for _op in OPS:
    for _name in _op.public:
        globals()[_name] = getattr(_families[_op.family], _name)

__all__ = public_names()
