/* The sanitizer stage's canary (tools/sanitize.sh): one undefined-behaviour
 * error and one heap overflow, built with the same flags as the op libraries
 * and called through ctypes from the same Python, LD_PRELOAD and options. The
 * stage expects exactly these two reports in its log folder before it runs
 * the tests, so "zero reports" afterwards means zero, not "logs went
 * elsewhere". */
#include <stdlib.h>

int canary_signed_overflow(int x) { return x + 1; /* called with INT_MAX */ }

int canary_heap_overflow(int n) {
  volatile int* p = malloc(n * sizeof(int));
  int v = p[n]; /* one past the end */
  free((void*)p);
  return v;
}
