# FindOpsMPI: the MPI the ops are compiled and linked against.
#
# 1. MPI_C_LIBRARIES and MPI_INCLUDE_PATH (environment or -D), ADCME's way:
#    point the build at a site or system MPI.
# 2. Otherwise the `mpich` wheel from PyPI installed for the build's Python
#    (pip's isolated build environment, or the active venv).
# 3. Otherwise CMake's FindMPI (mpicc on PATH, MPI_HOME, ...).
#
# Defines the imported target OpsMPI::MPI and OpsMPI_SOURCE (which case won).
find_package(Python COMPONENTS Interpreter REQUIRED)

foreach(var MPI_C_LIBRARIES MPI_INCLUDE_PATH)
  if(NOT ${var} AND DEFINED ENV{${var}} AND NOT "$ENV{${var}}" STREQUAL "")
    set(${var} "$ENV{${var}}")
  endif()
endforeach()

set(_ops_mpi_includes "")
set(_ops_mpi_libs "")
if(MPI_C_LIBRARIES AND MPI_INCLUDE_PATH)
  string(REPLACE " " ";" _ops_mpi_libs "${MPI_C_LIBRARIES}")
  string(REPLACE " " ";" _ops_mpi_includes "${MPI_INCLUDE_PATH}")
  set(OpsMPI_SOURCE "MPI_C_LIBRARIES/MPI_INCLUDE_PATH")
else()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
"import importlib.metadata as md, os
d = md.distribution('mpich')
inc = lib = None
for f in d.files or []:
    p = str(f).replace(os.sep, '/')
    if p.endswith('include/mpi.h'): inc = os.path.dirname(os.path.realpath(d.locate_file(f)))
    if p.endswith('/libmpi.so.12'): lib = os.path.realpath(d.locate_file(f))
print(inc); print(lib)"
    OUTPUT_VARIABLE _wheel_out
    RESULT_VARIABLE _wheel_rc
    ERROR_QUIET
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_wheel_rc EQUAL 0)
    string(REPLACE "\n" ";" _wheel_lines "${_wheel_out}")
    list(GET _wheel_lines 0 _wheel_inc)
    list(GET _wheel_lines 1 _wheel_lib)
    if(EXISTS "${_wheel_inc}/mpi.h" AND EXISTS "${_wheel_lib}")
      set(_ops_mpi_includes "${_wheel_inc}")
      set(_ops_mpi_libs "${_wheel_lib}")
      set(OpsMPI_SOURCE "mpich wheel")
    endif()
  endif()
  if(NOT _ops_mpi_libs)
    find_package(MPI COMPONENTS C)
    if(MPI_C_FOUND)
      set(_ops_mpi_includes "${MPI_C_INCLUDE_DIRS}")
      set(_ops_mpi_libs "${MPI_C_LIBRARIES}")
      set(OpsMPI_SOURCE "FindMPI")
    endif()
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpsMPI REQUIRED_VARS _ops_mpi_libs _ops_mpi_includes
  FAIL_MESSAGE "No MPI found: set MPI_C_LIBRARIES and MPI_INCLUDE_PATH, or `pip install mpich`")

if(OpsMPI_FOUND AND NOT TARGET OpsMPI::MPI)
  add_library(OpsMPI::MPI INTERFACE IMPORTED)
  set_target_properties(OpsMPI::MPI PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_ops_mpi_includes}"
    INTERFACE_LINK_LIBRARIES "${_ops_mpi_libs}"
    # The C++ bindings drag in symbols (_ZN3MPI8Datatype4FreeEv) that break dlopen.
    INTERFACE_COMPILE_DEFINITIONS "OMPI_SKIP_MPICXX=1;MPICH_SKIP_MPICXX=1")
  message(STATUS "Ops MPI (${OpsMPI_SOURCE}): ${_ops_mpi_libs} | ${_ops_mpi_includes}")
endif()
