"""Imported first by every example: TensorFlow without its start-up lines.

TensorFlow's own examples set TF_CPP_MIN_LOG_LEVEL before importing it; TF
2.21 still writes two lines per process to stderr while it loads, before it
reads that variable (absl's "All log messages before absl::InitializeLog()"
and oneDNN's notice), so with 4 ranks the answer came after a screen of
them. This imports TensorFlow once with stderr pointed at /dev/null (an
import error still shows: Python prints it after stderr is back)."""

import os

if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):  # unset or empty: warnings and errors only
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
_saved = os.dup(2)
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 2)
try:
    import tensorflow  # noqa: F401
finally:
    os.dup2(_saved, 2)
    os.close(_saved)
    os.close(_null)
