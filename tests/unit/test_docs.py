"""The API reference (docs/): every public function and class has an example
in its docstring and a place in docs/api.rst, and the site builds with
warnings as errors (Sphinx, from the installed package's docstrings)."""

import inspect
import os
import subprocess
import sys

import pytest

import adcme_mpi as am

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


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
