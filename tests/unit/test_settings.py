"""The environment settings are parsed once, at import (adcme_mpi/settings.py):
a malformed value is a SettingsError naming the variable and the value,
never a silent default (the C++ side used to read ADCME_MPI_TIMEOUT with
atof, so "10s" or "ten" meant no watchdog at all)."""

import os
import subprocess
import sys
import tempfile

import pytest

from adcme_mpi import settings


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("ADCME_MPI_TIMEOUT", "10s", "must be a number of seconds >= 0"),
        ("ADCME_MPI_TIMEOUT", "ten", "must be a number of seconds >= 0"),
        ("ADCME_MPI_TIMEOUT", "-5", "must be a number of seconds >= 0"),
        ("ADCME_MPI_CHECK", "off", "must be 0 or 1"),
        ("ADCME_MPI_THREAD", "yes", "must be 0 or 1"),
        ("ADCME_MPI_NO_ABORT", "2", "must be 0 or 1"),
        ("ADCME_MPI_OVERSUBSCRIBED", "", "must be 0 or 1"),
        ("ADCME_MPI_SPARSE_LIBRARY", "", "is set but empty"),
    ],
)
def test_a_malformed_value_names_the_variable_and_the_value(name, value, expected):
    with pytest.raises(settings.SettingsError) as caught:
        settings.read({name: value})
    assert name in str(caught.value) and expected in str(caught.value)
    if value:
        assert repr(value) in str(caught.value)


def test_well_formed_values():
    s = settings.read(
        {
            "ADCME_MPI_TIMEOUT": "2.5",
            "ADCME_MPI_CHECK": "0",
            "ADCME_MPI_THREAD": "1",
            "ADCME_MPI_OVERSUBSCRIBED": "0",
            "ADCME_MPI_SPARSE_LIBRARY": "/x/libadcme_mpi_sparse.so",
        }
    )
    assert (s.timeout, s.check, s.thread, s.oversubscribed) == (2.5, False, True, False)
    assert s.sparse_library == "/x/libadcme_mpi_sparse.so"
    defaults = settings.read({})
    assert (defaults.timeout, defaults.check, defaults.thread) == (0.0, True, False)


def test_the_launchers_local_rank_count_decides_oversubscription():
    cores = os.cpu_count()
    assert settings.read({"MPI_LOCALNRANKS": str(cores + 1)}).oversubscribed
    assert not settings.read({"MPI_LOCALNRANKS": "1"}).oversubscribed
    assert settings.read({}).oversubscribed  # unknown counts as oversubscribed


def test_a_malformed_timeout_stops_the_import():
    env = {**os.environ, "ADCME_MPI_TIMEOUT": "10s", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", "import adcme_mpi"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    assert proc.returncode != 0, proc
    assert (
        "adcme_mpi.settings.SettingsError: adcme_mpi: environment variable "
        "ADCME_MPI_TIMEOUT='10s' must be a number of seconds >= 0" in proc.stderr
    ), proc.stderr
