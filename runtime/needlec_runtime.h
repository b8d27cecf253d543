/* The native runtime compiled kernels call (see pool.c). */
#ifndef NEEDLEC_RUNTIME_H
#define NEEDLEC_RUNTIME_H
#include <stdint.h>

/* A parallel loop's body: iterations [lo, hi) of the loop, with the kernel's pointers in ctx. */
typedef void (*needlec_task)(void *ctx, int64_t lo, int64_t hi);

/* Run fn over [0, n) in chunks of at least `grain` iterations on the pool; returns when done. */
void needlec_parallel_for(needlec_task fn, void *ctx, int64_t n, int64_t grain);

/* (Re)start the pool with n threads, the caller's included; returns the number running. */
int needlec_set_num_threads(int n);

int needlec_num_threads(void);
#endif
