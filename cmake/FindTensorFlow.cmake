# FindTensorFlow: compile and link flags of the TensorFlow that the build's
# Python imports, read from tf.sysconfig (the custom-op way).
#
# Defines the imported target TensorFlow::TensorFlow and TensorFlow_VERSION.
# No RPATH is recorded: at run time libtensorflow_framework.so.2 is already
# loaded by `import tensorflow`, and a path into pip's temporary build
# environment would be wrong anyway.
find_package(Python COMPONENTS Interpreter REQUIRED)

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; import tensorflow as tf; print(tf.__version__); print('|'.join(tf.sysconfig.get_compile_flags())); print('|'.join(tf.sysconfig.get_link_flags()))"
  OUTPUT_VARIABLE _tf_out
  RESULT_VARIABLE _tf_rc
  ERROR_VARIABLE _tf_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _tf_rc EQUAL 0)
  message(FATAL_ERROR "FindTensorFlow: `import tensorflow` failed in ${Python_EXECUTABLE}:\n${_tf_err}")
endif()
string(REPLACE "\n" ";" _tf_lines "${_tf_out}")
list(GET _tf_lines 0 TensorFlow_VERSION)
list(GET _tf_lines 1 _tf_cflags)
list(GET _tf_lines 2 _tf_lflags)
string(REPLACE "|" ";" _tf_cflags "${_tf_cflags}")
string(REPLACE "|" ";" _tf_lflags "${_tf_lflags}")

set(_tf_includes "")
set(_tf_defs "")
foreach(flag IN LISTS _tf_cflags)
  if(flag MATCHES "^-I(.*)")
    list(APPEND _tf_includes "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-D(.*)")
    list(APPEND _tf_defs "${CMAKE_MATCH_1}")
  endif()  # --std=c++17 is set through CMAKE_CXX_STANDARD
endforeach()

set(_tf_libdir "")
set(_tf_libname "")
foreach(flag IN LISTS _tf_lflags)
  if(flag MATCHES "^-L(.*)")
    set(_tf_libdir "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-l:(.*)")
    set(_tf_libname "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-l(.*)")
    set(_tf_libname "lib${CMAKE_MATCH_1}.so")
  endif()
endforeach()
set(TensorFlow_FRAMEWORK_LIBRARY "${_tf_libdir}/${_tf_libname}")

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorFlow
  REQUIRED_VARS TensorFlow_FRAMEWORK_LIBRARY _tf_includes
  VERSION_VAR TensorFlow_VERSION)

if(TensorFlow_FOUND AND NOT TARGET TensorFlow::TensorFlow)
  add_library(TensorFlow::TensorFlow SHARED IMPORTED)
  set_target_properties(TensorFlow::TensorFlow PROPERTIES
    IMPORTED_LOCATION "${TensorFlow_FRAMEWORK_LIBRARY}"
    IMPORTED_NO_SONAME FALSE
    INTERFACE_INCLUDE_DIRECTORIES "${_tf_includes}"
    INTERFACE_COMPILE_DEFINITIONS "${_tf_defs}")
endif()
