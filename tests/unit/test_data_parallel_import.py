"""`import adcme_mpi` does not import adcme_mpi.keras (which imports Keras);
`import adcme_mpi.keras` works on its own, without mpiexec."""

import subprocess
import sys


def test_keras_module_is_separate():
    code = (
        "import sys, adcme_mpi as am\n"
        "assert 'adcme_mpi.keras' not in sys.modules\n"
        "assert hasattr(am, 'DistributedGradientTape') and hasattr(am, 'broadcast_variables')\n"
        "import adcme_mpi.keras as amk\n"
        "print(sorted(amk.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "BroadcastGlobalVariablesCallback" in proc.stdout
