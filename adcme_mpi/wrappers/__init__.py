"""Op wrappers, one module per op family; importing a module registers the
gradients of its ops (each next to its forward op, in adjoint pairs). The
public ops come from the op table (adcme_mpi/op_table.py): each row's public
names, taken from the row's wrapper module. The public names that are not
ops are exported here by hand (NOT_OPS)."""

import importlib
import os

from ..op_table import OPS, public_ops
from .sparse import mpi_SparseTensor, petsc_info, petsc_options

# exported beside the ops: the sparse matrix class and PETSc's settings
NOT_OPS = {
    "mpi_SparseTensor": mpi_SparseTensor,
    "petsc_options": petsc_options,
    "petsc_info": petsc_info,
}


def _module(wrapper):
    """adcme_mpi/wrappers/halo.py -> the module adcme_mpi.wrappers.halo"""
    return importlib.import_module(os.path.splitext(wrapper)[0].replace("/", "."))


_modules = {op.wrapper: _module(op.wrapper) for op in OPS}
for _op in OPS:
    for _name in _op.public:
        globals()[_name] = getattr(_modules[_op.wrapper], _name)

__all__ = public_ops() + list(NOT_OPS)
