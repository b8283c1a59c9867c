"""The ctypes signatures of the op libraries' plain C entry points: the one
place they are written, in the order of ops/c_api.h (tests/unit/test_c_api.py
checks that the two agree)."""

import ctypes

_i64, _int, _dbl, _str = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_char_p

# name: (restype, argtypes)
OPS_LIBRARY = {
    "adcme_mpi_configure": (None, [_int, _int, _dbl, _int]),
    "adcme_mpi_tag_upper_bound": (_int, [_i64]),
    "adcme_mpi_register_comms": (None, [_i64, _i64, _i64]),
    "adcme_mpi_close": (None, [_str]),
    "adcme_mpi_forget_comms": (None, []),
    "adcme_mpi_libmpi_info": (_int, [_str, _int]),
    "adcme_mpi_watch_begin": (_i64, [_str, _str, _dbl]),
    "adcme_mpi_watch_end": (None, [_i64]),
    "adcme_mpi_complete_detached_sends": (_int, [_dbl, _str, _int]),
    "adcme_mpi_unwaited_requests": (_int, [_str, _int]),
    "adcme_mpi_end_of_program": (_int, [_i64, _str, _int]),
}

SPARSE_LIBRARY = {
    "adcme_mpi_petsc_info": (_int, [_str, _int]),
    "adcme_mpi_petsc_options": (_int, [_str, _str, _int]),
    "adcme_mpi_sparse_last_solve": (_i64, [ctypes.POINTER(_dbl), ctypes.POINTER(_i64)]),
    "adcme_mpi_petsc_finalize": (None, []),
}


def bind(path, signatures):
    """The library at `path` with `signatures` applied to its entry points."""
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def text_call(function, *args, size=8192):
    """Call an entry point whose last two arguments are (buffer, length);
    returns (its result, the buffer's text)."""
    buffer = ctypes.create_string_buffer(size)
    result = function(*args, buffer, size)
    return result, buffer.value.decode(errors="replace")
