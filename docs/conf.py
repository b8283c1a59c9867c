"""Sphinx configuration: the API reference from the docstrings (autodoc),
and the guides in this folder (Markdown, through MyST). Built in CI with
warnings as errors: `sphinx-build -W --keep-going docs docs/_build`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

project = "adcme_mpi"
author = "adcme_mpi developers"
extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
html_theme = "alabaster"
# the guides link to files of the repository (README.md, examples/...), which
# are not documents of this site
suppress_warnings = ["myst.xref_missing"]
