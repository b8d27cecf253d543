/* The thread pool compiled kernels run their parallel loops on.
 *
 * needlec_parallel_for(fn, ctx, n, grain) runs fn(ctx, lo, hi) over chunks of [0, n) that cover
 * it exactly once, on the calling thread and the pool's workers, and returns when every chunk is
 * done. The chunks depend on n and grain only, never on the thread count, so results do not
 * either (the compiled code only parallelizes loops whose iterations write disjoint memory, and
 * a chunk that makes a library call, a GEMM's rows, makes the same call on any pool). Chunks are
 * claimed from one atomic ticket that holds the job's generation in its high 32 bits and the next
 * chunk in its low 32, so a worker that wakes late for a finished job can never claim a chunk of
 * the next one. The workers are created once; between jobs they spin briefly (a step's kernels
 * come in quick succession) and then sleep on a condition variable, so an idle pool costs
 * nothing. One job runs at a time: a call that finds the pool busy (another Python thread's
 * step) runs its chunks on its own thread.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "needlec_runtime.h"

#define MAX_THREADS 256
#define MAX_CHUNKS 64 /* a parallel loop is cut into at most this many chunks */
#define SPIN_NS 200000 /* how long an idle worker spins before it sleeps */
#define CLOSED 0xFFFFFFFFu /* a ticket's chunk index while its job is being set up */

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;  /* guards the condition variables */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;

static int n_threads = 1; /* the caller included */
static int n_workers = 0;
static pthread_t workers[MAX_THREADS];
static atomic_int stop;

static atomic_uint published; /* the generation of the current job */
static uint32_t generation;   /* written by the caller holding `busy` */
static _Atomic uint64_t ticket;
static atomic_long remaining;

/* the current job: written before `published`, read after claiming a chunk of it */
static needlec_task job_fn;
static void *job_ctx;
static int64_t job_n, job_chunk;
static uint32_t job_chunks;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Claim and run chunks of job `gen` until none is left. A claim is a compare-and-swap of the
 * whole ticket, so it succeeds only while the ticket still holds job `gen` open: the job's fields
 * were written before it opened and cannot change before this chunk is done. */
static void run_chunks(uint32_t gen) {
    for (;;) {
        uint64_t t = atomic_load(&ticket);
        if ((uint32_t)(t >> 32) != gen || (uint32_t)t >= job_chunks) return;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;
        /* the job cannot end before this chunk does: its fields are stable here */
        int64_t lo = (int64_t)(uint32_t)t * job_chunk;
        int64_t hi = lo + job_chunk < job_n ? lo + job_chunk : job_n;
        job_fn(job_ctx, lo, hi);
        if (atomic_fetch_sub(&remaining, 1) == 1) {
            pthread_mutex_lock(&lock);
            pthread_cond_broadcast(&done);
            pthread_mutex_unlock(&lock);
        }
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint32_t seen = atomic_load(&published);
    for (;;) {
        int64_t until = now_ns() + SPIN_NS;
        int spins = 0;
        while (atomic_load(&published) == seen && !atomic_load(&stop)) {
            cpu_relax();
            if (++spins % 256 == 0 && now_ns() > until) {
                pthread_mutex_lock(&lock);
                while (atomic_load(&published) == seen && !atomic_load(&stop))
                    pthread_cond_wait(&wake, &lock);
                pthread_mutex_unlock(&lock);
            }
        }
        if (atomic_load(&stop)) return NULL;
        seen = atomic_load(&published);
        run_chunks(seen);
    }
}

static void stop_workers(void) {
    atomic_store(&stop, 1);
    pthread_mutex_lock(&lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n_workers; i++) pthread_join(workers[i], NULL);
    n_workers = 0;
    atomic_store(&stop, 0);
}

int needlec_set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&busy);
    stop_workers();
    int started = 0;
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&workers[i], NULL, worker, NULL) != 0) break;
        started++;
    }
    n_workers = started;
    n_threads = started + 1;
    pthread_mutex_unlock(&busy);
    return n_threads;
}

int needlec_num_threads(void) { return n_threads; }

void needlec_parallel_for(needlec_task fn, void *ctx, int64_t n, int64_t grain) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    /* the partition: n and grain alone */
    int64_t chunk = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;
    if (chunk < grain) chunk = grain;
    int64_t chunks = (n + chunk - 1) / chunk;
    if (n_threads < 2 || chunks < 2 || pthread_mutex_trylock(&busy) != 0) {
        for (int64_t lo = 0; lo < n; lo += chunk) fn(ctx, lo, lo + chunk < n ? lo + chunk : n);
        return;
    }
    /* close the ticket under the new generation first: a worker still looking at the last job
     * can then never claim a chunk while the fields below change under it */
    uint32_t gen = ++generation;
    atomic_store(&ticket, (uint64_t)gen << 32 | CLOSED);
    job_fn = fn;
    job_ctx = ctx;
    job_n = n;
    job_chunk = chunk;
    job_chunks = (uint32_t)chunks;
    atomic_store(&remaining, (long)job_chunks);
    atomic_store(&ticket, (uint64_t)gen << 32); /* open: chunk 0 is next */
    atomic_store(&published, gen);
    pthread_mutex_lock(&lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    run_chunks(gen);
    for (int spins = 0; atomic_load(&remaining) != 0 && spins < 4096; spins++) cpu_relax();
    if (atomic_load(&remaining) != 0) {
        pthread_mutex_lock(&lock);
        while (atomic_load(&remaining) != 0) pthread_cond_wait(&done, &lock);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_unlock(&busy);
}

/* A forked child has none of the parent's threads: it starts over with a serial pool, and the
 * next needlec_set_num_threads (the Python side calls it after a fork) starts workers again. */
static void after_fork_in_child(void) {
    pthread_mutex_init(&busy, NULL);
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_cond_init(&done, NULL);
    n_workers = 0;
    n_threads = 1;
    atomic_store(&stop, 0);
}

__attribute__((constructor)) static void install_fork_handler(void) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
}
