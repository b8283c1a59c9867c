"""The API reference (docs/): every public function and class has an example
in its docstring and a place in docs/api.rst, and the site builds with
warnings as errors (Sphinx, from the installed package's docstrings).

The lists in README.md and docs/clusters.md match the package: the
environment variables its source reads, the exceptions it exports (and the
TensorFlow errors its kernels return), the public op names."""

import builtins
import glob
import inspect
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import op_table

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DOCS = os.path.join(ROOT, "docs")


def public_objects():
    for name in am.__all__:
        obj = getattr(am, name)
        if inspect.ismodule(obj) or (inspect.isclass(obj) and issubclass(obj, Exception)):
            continue
        yield f"adcme_mpi.{name}", obj
    for name in am.ordering.__all__:
        if name != "current_token":
            yield f"adcme_mpi.ordering.{name}", getattr(am.ordering, name)
    for name in am.linalg.__all__:
        yield f"adcme_mpi.linalg.{name}", getattr(am.linalg, name)


@pytest.mark.parametrize("qualified,obj", list(public_objects()), ids=lambda v: str(v)[:40])
def test_every_public_function_has_an_example_and_a_place_in_the_reference(qualified, obj):
    assert "Example::" in (obj.__doc__ or ""), f"{qualified} has no example in its docstring"
    assert qualified in open(os.path.join(DOCS, "api.rst")).read(), f"{qualified} not in api.rst"


def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", DOCS, str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    warnings = [w for w in warnings if "absl::InitializeLog" not in w]  # TensorFlow's start-up
    assert proc.returncode == 0 and not warnings, proc.stderr
    assert (tmp_path / "api.html").exists()


# ---- README's and docs/clusters.md's lists against the package ----


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def package_sources():
    """The package's Python and C++ source in this checkout (ops/ is not
    installed, so the checkout, not the installed package)."""
    files = glob.glob(os.path.join(ROOT, "adcme_mpi", "**", "*.py"), recursive=True)
    files += glob.glob(os.path.join(ROOT, "ops", "*.cc")) + glob.glob(
        os.path.join(ROOT, "ops", "*.h")
    )
    assert files, f"no package source under {os.path.abspath(ROOT)}"
    return {path: open(path).read() for path in files}


def variables_read():
    """Every ADCME_MPI_* variable the package reads: a string literal that is
    exactly the variable's name, in a file that reads the environment
    (os.environ, getenv; helpers such as C++'s EnvIs("ADCME_MPI_CHECK", "0")
    or a table of names looked up in os.environ count too). Build-time
    (CMake) and test-suite variables are not the package's."""
    found = {}
    for path, text in package_sources().items():
        if "environ" not in text and "getenv" not in text:
            continue
        for name in re.findall(r'"(ADCME_MPI_[A-Z0-9_]+)"', text):
            found.setdefault(name, os.path.relpath(path, ROOT))
    assert "ADCME_MPI_TIMEOUT" in found, "the scan of the package's source found nothing"
    return found


def documented_variables(*path):
    """{name: (default, effect)} from the rows `| `ADCME_MPI_...` | default | effect |`."""
    rows = re.findall(r"^\| `(ADCME_MPI_[A-Z0-9_]+)` \|(.*)\|\s*$", read(*path), re.MULTILINE)
    assert rows, f"no table of ADCME_MPI_* variables in {os.path.join(*path)}"
    table = {}
    for name, rest in rows:
        cells = [cell.strip() for cell in rest.split("|")]
        assert name not in table, f"{name} is listed twice in {os.path.join(*path)}"
        assert len(cells) == 2 and all(cells), f"{name} needs a default and an effect: {rest}"
        table[name] = cells
    return table


@pytest.mark.parametrize("doc", [("README.md",), ("docs", "clusters.md")], ids="/".join)
def test_the_environment_variable_lists_match_the_source(doc):
    read_by_package = variables_read()
    listed = documented_variables(*doc)
    undocumented = {n: f for n, f in read_by_package.items() if n not in listed}
    assert not undocumented, f"read by the package but not in {'/'.join(doc)}: {undocumented}"
    stale = sorted(set(listed) - set(read_by_package))
    assert not stale, f"in {'/'.join(doc)} but read nowhere in adcme_mpi/ or ops/: {stale}"


def readme_exceptions():
    """The names in README's "Exceptions" bullet, in backticks."""
    bullet = re.search(
        r"^\* \*\*Exceptions\.?\*\*(.*?)(?=^\* |^#|\n\n)", read("README.md"), re.M | re.S
    )
    assert bullet, "README has no '* **Exceptions.**' bullet"
    return set(re.findall(r"`((?:tf\.errors\.)?[A-Z][A-Za-z0-9]*)`", bullet.group(1)))


def test_the_exception_list_matches_the_package():
    documented = readme_exceptions()
    tensorflows = {n for n in documented if n.startswith("tf.errors.")}
    pythons = {n for n in documented if isinstance(getattr(builtins, n, None), type)}
    for name in tensorflows:
        error = getattr(tf.errors, name.split(".")[-1], None)
        assert inspect.isclass(error) and issubclass(error, Exception), f"no {name}"
    ours = documented - tensorflows - pythons
    exported = {
        name
        for name in am.__all__
        if inspect.isclass(getattr(am, name)) and issubclass(getattr(am, name), Exception)
    }
    missing = ours - exported
    assert not missing, f"README lists exceptions the package does not export: {sorted(missing)}"
    unlisted = exported - ours
    assert not unlisted, f"exported but not in README's exception list: {sorted(unlisted)}"


def test_the_kernels_errors_are_in_the_exception_list():
    """Every absl::<Kind>Error a kernel returns reaches Python as tf.errors.<Kind>Error."""
    kinds = set()
    for path, text in package_sources().items():
        if path.endswith((".cc", ".h")):
            kinds |= set(re.findall(r"absl::([A-Z][A-Za-z]*Error)\(", text))
    assert "InvalidArgumentError" in kinds, "the scan of ops/ found no errors"
    unlisted = sorted(f"tf.errors.{kind}" for kind in kinds)
    unlisted = [name for name in unlisted if name not in readme_exceptions()]
    assert not unlisted, f"kernels return these, README's exception list lacks them: {unlisted}"


def test_every_public_op_name_is_in_the_readme():
    readme = read("README.md")
    missing = [
        name
        for name in op_table.public_ops()
        if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", readme)
    ]
    assert not missing, f"public op names missing from README: {missing}"
