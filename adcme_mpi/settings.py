"""The package's environment settings: every ADCME_MPI_* variable it reads,
parsed once, here, when the package is imported. A malformed value is a
SettingsError at import that names the variable and the value (a typo must
not silently turn the watchdog or the checks off). The op library gets the
values it needs from `_loader` (adcme_mpi_configure); it reads no variable
itself.

Plain Python, no TensorFlow or MPI: `python -m adcme_mpi` lists these too.
"""

import os
import re
from dataclasses import dataclass


class SettingsError(ValueError):
    """An ADCME_MPI_* environment variable has a value the package cannot use."""


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    kind: str  # "flag" (0 or 1), "seconds" (a number >= 0), "path"


VARIABLES = (
    Variable(
        "ADCME_MPI_CHECK", "cross-rank checks before collectives (default 1; 0 = off)", "flag"
    ),
    Variable(
        "ADCME_MPI_TIMEOUT",
        "watchdog seconds for every wait of an op, of the package's own MPI calls and of the "
        "sparse ops' PETSc calls (default 0 = off)",
        "seconds",
    ),
    Variable("ADCME_MPI_THREAD", "1 = run kernels on one dedicated MPI thread (default 0)", "flag"),
    Variable("ADCME_MPI_NO_ABORT", "1 = an uncaught exception does not abort the job", "flag"),
    Variable(
        "ADCME_MPI_OVERSUBSCRIBED",
        "0/1 overrides the ranks-vs-cores guess that sets how waits poll",
        "flag",
    ),
    Variable("ADCME_MPI_LIBMPI", "libmpi to load before mpi4py (overrides the build's)", "path"),
    Variable("ADCME_MPI_OPS_LIBRARY", "op library path (overrides the installed one)", "path"),
    Variable(
        "ADCME_MPI_SPARSE_LIBRARY", "sparse op library path (overrides the installed one)", "path"
    ),
)

_NUMBER = re.compile(r"^\s*[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?\s*$")


def _parse(variable, text):
    if variable.kind == "flag":
        if text.strip() not in ("0", "1"):
            raise SettingsError(
                f"adcme_mpi: environment variable {variable.name}={text!r} must be 0 or 1"
            )
        return text.strip() == "1"
    if variable.kind == "seconds":
        if not _NUMBER.match(text):
            raise SettingsError(
                f"adcme_mpi: environment variable {variable.name}={text!r} must be a number of "
                "seconds >= 0 (0 = off)"
            )
        return float(text)
    if not text:
        raise SettingsError(f"adcme_mpi: environment variable {variable.name} is set but empty")
    return text


def _local_ranks_exceed_cores(environ):
    """More ranks on this node than cores? From the launcher's environment
    (MPICH/hydra: MPI_LOCALNRANKS, Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE,
    Intel MPI: MPI_LOCALNRANKS); unknown counts as oversubscribed."""
    local = environ.get("MPI_LOCALNRANKS") or environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    cores = os.cpu_count() or 0
    if not local or not local.strip().isdigit() or cores == 0:
        return True
    return int(local) > cores


@dataclass(frozen=True)
class Settings:
    check: bool = True
    timeout: float = 0.0
    thread: bool = False
    no_abort: bool = False
    oversubscribed: bool = True
    libmpi: str = ""
    ops_library: str = ""
    sparse_library: str = ""


def read(environ=None):
    """The settings from `environ` (default os.environ); SettingsError if one is malformed.

    Example::

        from adcme_mpi import settings
        settings.read({"ADCME_MPI_TIMEOUT": "30"}).timeout   # 30.0
    """
    environ = os.environ if environ is None else environ
    values = {}
    for variable in VARIABLES:
        text = environ.get(variable.name)
        if text is not None:
            values[variable.name] = _parse(variable, text)
    oversubscribed = values.get("ADCME_MPI_OVERSUBSCRIBED")
    return Settings(
        check=values.get("ADCME_MPI_CHECK", True),
        timeout=values.get("ADCME_MPI_TIMEOUT", 0.0),
        thread=values.get("ADCME_MPI_THREAD", False),
        no_abort=values.get("ADCME_MPI_NO_ABORT", False),
        oversubscribed=_local_ranks_exceed_cores(environ)
        if oversubscribed is None
        else oversubscribed,
        libmpi=values.get("ADCME_MPI_LIBMPI", ""),
        ops_library=values.get("ADCME_MPI_OPS_LIBRARY", ""),
        sparse_library=values.get("ADCME_MPI_SPARSE_LIBRARY", ""),
    )


CURRENT = read()  # at import: a malformed variable stops the import here
