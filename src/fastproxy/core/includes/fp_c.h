/* Small C helpers the Cython core cannot express directly: atomics and a flexible
 * struct-size helper. Everything here is header-only and nogil-safe. */
#ifndef FASTPROXY_FP_C_H
#define FASTPROXY_FP_C_H
#include <stdint.h>
#include <pthread.h>
#include <assert.h>
#include <sys/ioctl.h>

static inline int fp_atomic_add_int(int *p, int v) {
    return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
}
static inline int64_t fp_atomic_add_i64(int64_t *p, int64_t v) {
    return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
}
static inline int64_t fp_atomic_load_i64(int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
/* Per-worker counters have a single writer; readers on the main thread only need
 * untorn 64-bit loads, which relaxed atomics give without a lock prefix. */
static inline uint64_t fp_load_u64(uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
/* A value one thread publishes for others to read, with what it wrote before it (a
 * listener's drain deadline, after its start and strategy). */
static inline void fp_store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint64_t fp_load_acquire_u64(uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline int fp_load_int(int *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fp_store_int(int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
/* A host's health flags (HostShared.health_flags): written by any thread with or /
 * and-not, read by whoever rebuilds the cluster's host set. */
static inline uint32_t fp_load_u32(uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint32_t fp_atomic_or_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL);
}
static inline uint32_t fp_atomic_and_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL);
}
/* Debug and ASan builds: abort if the kernel says a pipe still holds bytes (FIONREAD),
 * i.e. if the byte accounting that lets a pipe be reused is wrong. Release builds trust
 * the accounting and make no system call. */
static inline void fp_debug_assert_pipe_empty(int fd) {
#ifndef NDEBUG
    int n = -1;
    int r = ioctl(fd, FIONREAD, &n);
    assert(r == 0 && n == 0);
    (void)r;
    (void)n;
#else
    (void)fd;
#endif
}
#endif
