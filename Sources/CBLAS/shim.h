#pragma once
// OpenBLAS's cblas.h (also declares openblas_set_num_threads) and netlib LAPACKE.
// On Debian both resolve to the same libopenblas.so.0, so there is one thread pool.
#include <cblas.h>
#include <lapacke.h>
