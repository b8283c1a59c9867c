# FindOpsPETSc: the PETSc the sparse ops (ops/sparse.cc) are built against.
# Optional: without it the rest of the package builds, and the sparse ops
# raise an error that says how to enable them.
#
# Candidates, first accepted wins:
# 1. PETSC_DIR (and PETSC_ARCH), environment or -D: a cluster's own PETSc,
#    PETSc's own way of naming an install.
# 2. PyPI's `petsc` package in the Python environment being installed into
#    (`pip install petsc`, see README "Sparse matrices"). An isolated build
#    runs the target environment's interpreter, whose sysconfig still names
#    that environment's site-packages.
# 3. pkg-config's PETSc (for example Debian's libpetsc-real-dev).
# A candidate is accepted only if its headers compile against the ops' own
# mpi.h: PETSc's headers refuse another MPI (or another Open MPI version) at
# compile time, so a PETSc built against a different MPI is skipped here,
# not found broken at run time.
#
# ADCME_MPI_PETSC (environment or -D): OFF skips the search; ON makes a
# missing PETSc an error. Default: AUTO.
#
# Defines the imported target OpsPETSc::PETSc, OpsPETSc_LIBRARY (the shared
# object to preload at run time), OpsPETSc_SOURCE and OpsPETSc_REASON (why
# none was accepted).
include(CheckCXXSourceCompiles)

if(NOT DEFINED ADCME_MPI_PETSC)
  if(DEFINED ENV{ADCME_MPI_PETSC} AND NOT "$ENV{ADCME_MPI_PETSC}" STREQUAL "")
    set(ADCME_MPI_PETSC "$ENV{ADCME_MPI_PETSC}")
  else()
    set(ADCME_MPI_PETSC AUTO)
  endif()
endif()
string(TOUPPER "${ADCME_MPI_PETSC}" ADCME_MPI_PETSC)
foreach(var PETSC_DIR PETSC_ARCH)
  if(NOT ${var} AND DEFINED ENV{${var}} AND NOT "$ENV{${var}}" STREQUAL "")
    set(${var} "$ENV{${var}}")
  endif()
endforeach()

set(OpsPETSc_FOUND FALSE)
set(OpsPETSc_REASON "")
set(_petsc_candidates "")  # entries "source|include dirs (;-separated as ,)|library"

function(_petsc_library_in dir out)
  foreach(name libpetsc.so libpetsc_real.so)
    file(GLOB _found "${dir}/${name}.[0-9]*")
    list(FILTER _found EXCLUDE REGEX "\\.[0-9]+\\.[0-9]+\\.[0-9]+$")  # the soname, not the full version
    if(_found)
      list(GET _found 0 _lib)
      set(${out} "${_lib}" PARENT_SCOPE)
      return()
    endif()
    if(EXISTS "${dir}/${name}")
      set(${out} "${dir}/${name}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

function(_petsc_add_candidate source prefix arch)
  set(_incs "${prefix}/include")
  set(_libdir "${prefix}/lib")
  if(arch)
    list(APPEND _incs "${prefix}/${arch}/include")
    set(_libdir "${prefix}/${arch}/lib")
  endif()
  _petsc_library_in("${_libdir}" _lib)
  if(_lib)
    string(REPLACE ";" "," _incs "${_incs}")
    list(APPEND _petsc_candidates "${source}|${_incs}|${_lib}")
    set(_petsc_candidates "${_petsc_candidates}" PARENT_SCOPE)
  else()
    set(OpsPETSc_REASON "${OpsPETSc_REASON} ${source}: no libpetsc in ${_libdir};" PARENT_SCOPE)
  endif()
endfunction()

if(NOT ADCME_MPI_PETSC STREQUAL "OFF")
  if(PETSC_DIR)
    _petsc_add_candidate("PETSC_DIR" "${PETSC_DIR}" "${PETSC_ARCH}")
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
"import os, sysconfig
for key in ('purelib', 'platlib'):
    p = os.path.join(sysconfig.get_paths()[key], 'petsc')
    if os.path.exists(os.path.join(p, 'include', 'petsc.h')):
        print(p); break"
    OUTPUT_VARIABLE _env_petsc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_env_petsc)
    _petsc_add_candidate("the environment's petsc package" "${_env_petsc}" "")
  endif()
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(_pc_petsc QUIET PETSc)
    if(_pc_petsc_FOUND)
      pkg_get_variable(_pc_prefix PETSc prefix)
      _petsc_add_candidate("pkg-config PETSc" "${_pc_prefix}" "")
    endif()
  endif()

  get_target_property(_mpi_incs OpsMPI::MPI INTERFACE_INCLUDE_DIRECTORIES)
  set(_n 0)
  foreach(candidate IN LISTS _petsc_candidates)
    string(REPLACE "|" ";" _parts "${candidate}")
    list(GET _parts 0 _source)
    list(GET _parts 1 _incs)
    list(GET _parts 2 _lib)
    string(REPLACE "," ";" _incs "${_incs}")
    math(EXPR _n "${_n} + 1")
    set(CMAKE_REQUIRED_INCLUDES ${_incs} ${_mpi_incs})
    set(CMAKE_REQUIRED_QUIET ON)
    # PETSc's headers check that they see the MPI PETSc was configured with
    check_cxx_source_compiles("#include <petscksp.h>\nint main() { return 0; }" _petsc_compiles_${_n})
    unset(CMAKE_REQUIRED_INCLUDES)
    if(_petsc_compiles_${_n})
      set(OpsPETSc_FOUND TRUE)
      set(OpsPETSc_SOURCE "${_source}")
      set(OpsPETSc_LIBRARY "${_lib}")
      set(OpsPETSc_INCLUDE_DIRS "${_incs}")
      break()
    endif()
    set(OpsPETSc_REASON "${OpsPETSc_REASON} ${_source} (${_lib}): its headers do not compile against the ops' MPI (${_mpi_incs}), it was built against another MPI;")
  endforeach()
  if(NOT _petsc_candidates AND NOT OpsPETSc_REASON)
    set(OpsPETSc_REASON " no PETSC_DIR, no petsc package in this Python environment, no pkg-config PETSc;")
  endif()
else()
  set(OpsPETSc_REASON " ADCME_MPI_PETSC=OFF;")
endif()

string(STRIP "${OpsPETSc_REASON}" OpsPETSc_REASON)
if(OpsPETSc_FOUND)
  if(NOT TARGET OpsPETSc::PETSc)
    add_library(OpsPETSc::PETSc INTERFACE IMPORTED)
    set_target_properties(OpsPETSc::PETSc PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${OpsPETSc_INCLUDE_DIRS}"
      INTERFACE_LINK_LIBRARIES "${OpsPETSc_LIBRARY}")
  endif()
  message(STATUS "PETSc (${OpsPETSc_SOURCE}): ${OpsPETSc_LIBRARY}")
elseif(ADCME_MPI_PETSC STREQUAL "ON")
  message(FATAL_ERROR "ADCME_MPI_PETSC=ON but no usable PETSc:${OpsPETSc_REASON}")
else()
  message(STATUS "PETSc not used, the sparse ops are left out: ${OpsPETSc_REASON}")
endif()
