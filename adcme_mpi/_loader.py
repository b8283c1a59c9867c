"""Loads the op library once, after mpi4py and TensorFlow, and checks that the
ops and mpi4py use one and the same libmpi.

Order matters: the op library has no RPATH. `import mpi4py.MPI` loads libmpi
and `import tensorflow` loads libtensorflow_framework.so.2, so the dynamic
linker resolves the op library's dependencies to exactly those copies.
"""
import ctypes
import os

from mpi4py import MPI  # noqa: F401  (loads and initialises libmpi first)
import tensorflow as tf

LIBRARY_NAME = "libadcme_mpi_ops.so"


class MPILibraryMismatch(ImportError):
    """The op library and mpi4py ended up on different MPI libraries."""


def _library_path():
    override = os.environ.get("ADCME_MPI_OPS_LIBRARY")
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _mapped_mpi_libraries():
    """Distinct MPI shared objects mapped into this process (Linux)."""
    found = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path)
                if base.startswith("libmpi") and ".so" in base:
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return found


def _load():
    path = _library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"adcme_mpi: op library {path} is missing; build it with `pip install .` "
            "(or cmake) from the adcme_mpi source tree")
    try:
        module = tf.load_op_library(path)
    except tf.errors.NotFoundError as err:
        raise ImportError(
            f"adcme_mpi: cannot load {path}: {err}. The library must be built against "
            f"this TensorFlow ({tf.__version__}) and the MPI that mpi4py loads "
            f"({MPI.Get_library_version().splitlines()[0]})") from err
    check_same_libmpi(path)
    return module


def check_same_libmpi(path):
    info = ctypes.CDLL(path).adcme_mpi_libmpi_info
    info.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(8192)
    info(buf, len(buf))
    ops_version, _, ops_libmpi = buf.value.decode(errors="replace").partition("\x1f")
    ops_libmpi = os.path.realpath(ops_libmpi)
    mpi4py_version = MPI.Get_library_version()
    others = sorted(_mapped_mpi_libraries() - {ops_libmpi})
    if ops_version.strip() != mpi4py_version.strip() or others:
        raise MPILibraryMismatch(
            "adcme_mpi: the op library and mpi4py use different MPI libraries.\n"
            f"  ops:    {ops_libmpi} ({ops_version.splitlines()[0] if ops_version else '?'})\n"
            f"  mpi4py: {', '.join(others) or '(same file)'} "
            f"({mpi4py_version.splitlines()[0]})\n"
            "Rebuild adcme_mpi against the MPI that mpi4py loads (MPI_C_LIBRARIES and "
            "MPI_INCLUDE_PATH), or make mpi4py load the ops' MPI.")


ops = _load()
