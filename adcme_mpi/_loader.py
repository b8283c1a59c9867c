"""Loads the op library once, after mpi4py and TensorFlow, and checks that the
ops and mpi4py use one and the same libmpi.

Order matters: the op library has no RPATH. `import mpi4py.MPI` loads libmpi
and `import tensorflow` loads libtensorflow_framework.so.2, so the dynamic
linker resolves the op library's dependencies to exactly those copies.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import re
import sys

from . import _c_api
from .settings import CURRENT as SETTINGS

LIBRARY_NAME = "libadcme_mpi_ops.so"
HERE = os.path.dirname(os.path.abspath(__file__))


def _built_dir():
    """Where the op library and _build_info.py are: this package's directory,
    or, when this is the source tree without a build (`python -m adcme_mpi`
    or `python -c` run from the checkout puts it first on sys.path), the
    installed package's directory."""
    if os.path.exists(os.path.join(HERE, LIBRARY_NAME)):
        return HERE
    try:
        installed = importlib.metadata.distribution("adcme_mpi").locate_file("adcme_mpi")
    except importlib.metadata.PackageNotFoundError:
        return HERE
    return str(installed) if os.path.exists(os.path.join(installed, LIBRARY_NAME)) else HERE


BUILT_DIR = _built_dir()


def _read_build_info():
    path = os.path.join(BUILT_DIR, "_build_info.py")
    if not os.path.exists(path):
        return None  # a source tree without a build
    spec = importlib.util.spec_from_file_location("adcme_mpi._build_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build_info = _read_build_info()


def _preload_libmpi():
    """Load the MPI the ops were built against (a system/site MPI named by
    MPI_C_LIBRARIES) globally before mpi4py looks for one, so both use it.
    ADCME_MPI_LIBMPI=<path> overrides."""
    path = SETTINGS.libmpi or getattr(_build_info, "PRELOAD_LIBMPI", "")
    if path and "mpi4py.MPI" not in sys.modules:
        ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)


_preload_libmpi()
try:
    from mpi4py import MPI  # loads and initialises libmpi before the ops
except (ImportError, RuntimeError, OSError) as err:  # no libmpi for mpi4py
    raise ImportError(
        f"adcme_mpi: mpi4py cannot load an MPI library ({err}). Install one: "
        "pip install 'adcme_mpi[mpich]', or rebuild against the MPI you have "
        "(MPI_C_LIBRARIES=... MPI_INCLUDE_PATH=... pip install .)"
    ) from err
try:
    import tensorflow as tf
except ImportError as err:
    raise ImportError(
        "adcme_mpi: TensorFlow is not installed. Install the one the package was "
        f"built against ({getattr(_build_info, 'TF_VERSION', '?')}): pip install "
        "'adcme_mpi[cpu]', or rebuild against your own TensorFlow: "
        "pip install --no-build-isolation --force-reinstall ."
    ) from err


class MPILibraryMismatchError(ImportError):
    """The op library and mpi4py ended up on different MPI libraries."""


MPILibraryMismatch = MPILibraryMismatchError  # the name before 0.2


def _library_path():
    return SETTINGS.ops_library or os.path.join(BUILT_DIR, LIBRARY_NAME)


# An MPI's core library (libmpi.so.40, libmpi.so.12, libmpich.so.12), not its
# language bindings beside it (Open MPI's libmpi_cxx, libmpi_mpifh, which
# Debian's PETSc brings along: the same MPI, not another one).
_CORE_LIBMPI = re.compile(r"^lib(mpi|mpich)\.so(\.|$)")


def _mapped_mpi_libraries():
    """Distinct MPI core libraries mapped into this process (Linux)."""
    found = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if _CORE_LIBMPI.match(os.path.basename(path)):
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return found


def _load():
    built_for = getattr(_build_info, "TF_VERSION", None)
    if built_for and built_for != tf.__version__:
        raise ImportError(
            f"adcme_mpi: the op library was built against TensorFlow {built_for} but "
            f"TensorFlow {tf.__version__} is installed; rebuild it against this TensorFlow, "
            "from the adcme_mpi source tree in this environment: "
            "pip install --no-build-isolation --force-reinstall ."
        )
    path = _library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"adcme_mpi: op library {path} is missing; build it with `pip install .` "
            "(or cmake) from the adcme_mpi source tree"
        )
    try:
        module = tf.load_op_library(path)
    except tf.errors.NotFoundError as err:
        raise ImportError(
            f"adcme_mpi: cannot load {path}: {err}. The library must be built against "
            f"this TensorFlow ({tf.__version__}) and the MPI that mpi4py loads "
            f"({MPI.Get_library_version().splitlines()[0]})"
        ) from err
    check_same_libmpi(path)
    _load_xla(os.path.dirname(path))
    return module


XLA_LIBRARY_NAME = "libadcme_mpi_xla.so"
# True once the XLA lowerings (ops/xla.cc) are loaded: the ops of
# op_table.xla_ops() then compile inside tf.function(jit_compile=True).
xla_loaded = False


def _load_xla(directory):
    """The XLA lowerings, when they were built (CMake option ADCME_MPI_XLA)."""
    global xla_loaded
    path = os.path.join(directory, XLA_LIBRARY_NAME)
    if os.path.exists(path):
        ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        xla_loaded = True


def check_same_libmpi(path):
    """The op library at `path`, every libmpi mapped into this process (a
    library loaded later, such as PETSc, brings its own if it was built
    against another MPI) and mpi4py's must be one and the same."""
    _, info = _c_api.text_call(_c_api.bind(path, _c_api.OPS_LIBRARY).adcme_mpi_libmpi_info)
    ops_version, _, ops_libmpi = info.partition("\x1f")
    ops_libmpi = os.path.realpath(ops_libmpi)
    # (Open MPI counts the terminating NUL in the version string's length)
    ops_version = ops_version.replace("\x00", "").strip()
    mpi4py_version = MPI.Get_library_version().replace("\x00", "").strip()
    others = sorted(_mapped_mpi_libraries() - {ops_libmpi})
    if ops_version != mpi4py_version or others:
        raise MPILibraryMismatchError(
            "adcme_mpi: the op library and mpi4py use different MPI libraries.\n"
            f"  ops:    {ops_libmpi} ({ops_version.splitlines()[0] if ops_version else '?'})\n"
            f"  mpi4py: {', '.join(others) or '(same file)'} "
            f"({mpi4py_version.splitlines()[0]})\n"
            "Rebuild adcme_mpi against the MPI that mpi4py loads (MPI_C_LIBRARIES and "
            "MPI_INCLUDE_PATH), or make mpi4py load the ops' MPI."
        )


ops = _load()
capi = _c_api.bind(_library_path(), _c_api.OPS_LIBRARY)
# the op library reads no environment variable itself: the settings, once
capi.adcme_mpi_configure(SETTINGS.check, SETTINGS.thread, SETTINGS.timeout, SETTINGS.oversubscribed)


# ---- the sparse ops (PETSc), a library of their own, loaded on first use ----

SPARSE_LIBRARY_NAME = "libadcme_mpi_sparse.so"


class PETScUnavailableError(RuntimeError):
    """The sparse ops were not built: no usable PETSc at build time."""


_sparse = None


def sparse_library():
    """(op module, C API) of the sparse ops. Loads PETSc's shared object
    first (the libraries carry no RPATH), then the ops, then checks again that
    one libmpi serves everything, PETSc included."""
    global _sparse
    if _sparse is not None:
        return _sparse
    path = SETTINGS.sparse_library or os.path.join(BUILT_DIR, SPARSE_LIBRARY_NAME)
    petsc = getattr(_build_info, "PETSC_LIBRARY", "")
    if not os.path.exists(path) or not petsc:
        why = getattr(_build_info, "PETSC_MISSING", "") or "this build predates the sparse ops"
        raise PETScUnavailableError(
            "adcme_mpi: the sparse ops (mpi_SparseTensor products and solves) were not built: "
            f"no usable PETSc when adcme_mpi was built ({why}). Install a PETSc built against "
            "the same MPI and rebuild: `python tools/install_petsc.py` from the source "
            "checkout, with this environment's python (it does `pip install petsc` against "
            "the mpich wheel and a BLAS wheel, no root; README 'Sparse matrices'), or name "
            "a PETSc with PETSC_DIR=... "
            "[PETSC_ARCH=...], then `pip install --force-reinstall .`"
        )
    # An OpenBLAS under PETSc (tools/install_petsc.py's) starts one thread per
    # core when it loads, reading OPENBLAS_NUM_THREADS then: with several
    # ranks on a node, each rank's threads would compete for the same cores.
    # One thread per rank, unless the user asked for more.
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = threads or "1"
    try:
        ctypes.CDLL(petsc, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as err:
        raise PETScUnavailableError(
            f"adcme_mpi: cannot load PETSc ({petsc}), which the sparse ops were built "
            f"against: {err}"
        ) from err
    finally:
        if threads is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
    module = tf.load_op_library(path)
    check_same_libmpi(_library_path())
    _sparse = (module, _c_api.bind(path, _c_api.SPARSE_LIBRARY))
    return _sparse


def finalize_sparse():
    """PETSc's end, before MPI's (a no-op when the sparse ops were never used)."""
    if _sparse is not None:
        _sparse[1].adcme_mpi_petsc_finalize()
