"""What `import adcme_mpi` says when the environment does not fit the build:
another TensorFlow version than the one recorded at build time, or no
TensorFlow at all. Each case imports a copy of the installed package in a
fresh interpreter."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

INSTALLED = importlib.util.find_spec("adcme_mpi").submodule_search_locations[0]


@pytest.fixture
def package_copy(tmp_path):
    if not os.path.exists(os.path.join(INSTALLED, "libadcme_mpi_ops.so")):
        pytest.skip(f"no built op library in {INSTALLED}")
    shutil.copytree(INSTALLED, tmp_path / "adcme_mpi")
    return tmp_path


def import_from(path):
    env = dict(os.environ, PYTHONPATH=str(path), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", "import adcme_mpi"],
        cwd=path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def test_other_tensorflow_version_is_refused_with_rebuild_recipe(package_copy):
    info = package_copy / "adcme_mpi" / "_build_info.py"
    text = info.read_text()
    recorded = text.split('TF_VERSION = "')[1].split('"')[0]
    info.write_text(text.replace(f'TF_VERSION = "{recorded}"', 'TF_VERSION = "2.0.0"'))
    code, err = import_from(package_copy)
    assert code != 0
    assert "the op library was built against TensorFlow 2.0.0 but TensorFlow" in err, err
    assert "pip install --no-build-isolation --force-reinstall ." in err, err


def test_missing_tensorflow_says_what_to_install(package_copy):
    fake = package_copy / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no tensorflow (simulated)')\n")
    code, err = import_from(package_copy)
    assert code != 0
    assert "adcme_mpi: TensorFlow is not installed" in err, err
    assert "pip install 'adcme_mpi[cpu]'" in err and "--no-build-isolation" in err, err


def run_in(path, code):
    env = dict(os.environ, PYTHONPATH=str(path), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=path, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout + proc.stderr


SPARSE_PRODUCT = """
import numpy as np, adcme_mpi as am
maps = open("/proc/self/maps").read()
print("petsc mapped at import:", "libpetsc" in maps)
A = am.mpi_SparseTensor([[0, 0]], [2.0], 0, 0, 1)
try:
    A @ np.ones(1)
except am.PETScUnavailableError as err:
    print("raised:", err)
"""


def test_sparse_ops_without_petsc_say_how_to_enable_them(package_copy):
    """A build that found no PETSc: everything else works, and a sparse op
    raises PETScUnavailableError with the reason and the recipe."""
    info = package_copy / "adcme_mpi" / "_build_info.py"
    text = re.sub(r"^PETSC_LIBRARY = .*$", 'PETSC_LIBRARY = ""', info.read_text(), flags=re.M)
    text = re.sub(
        r"^PETSC_MISSING = .*$", 'PETSC_MISSING = "no PETSC_DIR (for the test)"', text, flags=re.M
    )
    info.write_text(text)
    code, out = run_in(package_copy, SPARSE_PRODUCT)
    assert code == 0, out
    assert "petsc mapped at import: False" in out, out
    assert "raised: adcme_mpi: the sparse ops" in out, out
    for words in ("no PETSC_DIR (for the test)", "pip install petsc", "PETSC_DIR=", "rebuild"):
        assert words in out, (words, out)
