# Debug lines from the workers: connection and stream events of proxied traffic, in the
# shape of Envoy's debug log (its conn_handler / http / router / pool / connection lines):
#
#   [2026-12-04 21:01:10.610][9615][debug][router] [Tags: "ConnectionId":"3","StreamId":"1"] cluster 'up' match for URL '/api/x'
#
# The workers run without the GIL, so they never go through Python's logging: a line is
# formatted on the worker's stack and handed to the kernel with one write(2) to the log's
# descriptor (stderr, or the fd of the `fastproxy` logger's stream handler), like the
# access log (core/access_log.pxi): lines of concurrent workers never interleave.
#
# Cost: each call site tests fp_log_level first (one integer compare) and does nothing else
# when the level is info or above, the default. At debug, a worker writes at most
# fp_log_rate lines per second (a token bucket per worker, burst of as many); the lines
# over that are counted and reported by the next line that passes ("N debug lines
# dropped"), so a flood cannot swamp the log nor stall the worker on a slow terminal.
#
# Python sets the level, the descriptor and the rate with set_core_log() (Engine.start
# reads them from the `fastproxy` logger: `fastproxy -l debug` turns the lines on).
#
# The workers write to a duplicate of the given descriptor that the core owns, never to
# the caller's: a log file the caller closes (or rotates) would otherwise leave the
# workers writing to whatever the process opens next under that number (a socket, a
# file). A new descriptor is put in place with dup2 onto the same duplicate, so a worker
# writing at that moment writes to the old file or the new one, never to a closed or
# reused number; the duplicate is closed when the last engine using it stops.

cdef extern from *:
    """
    #include <stdarg.h>
    #include <stdio.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    #include <sys/syscall.h>

    /* Python's level numbers: 5 trace, 10 debug, 20 info. The core writes debug lines. */
    static int fp_log_level = 20;
    static int fp_log_fd = 2;
    static unsigned fp_log_rate = 200;

    typedef struct {                    /* one per worker, each on its own cache lines */
        unsigned long long last_ms;
        unsigned tokens;
        unsigned dropped;
        long tid;
        char pad[40];
    } fp_log_bucket;
    #define FP_LOG_BUCKETS 1024         /* Engine's concurrency limit */
    static fp_log_bucket fp_log_buckets[FP_LOG_BUCKETS];

    static size_t fp_log_head(char* out, size_t cap, const struct timespec* ts, long tid,
                              const char* component) {
        struct tm tm;
        time_t secs = ts->tv_sec;
        size_t n;
        int k;
        localtime_r(&secs, &tm);
        n = strftime(out, cap, "[%Y-%m-%d %H:%M:%S", &tm);
        k = snprintf(out + n, cap - n, ".%03ld][%ld][debug][%s] ", ts->tv_nsec / 1000000L, tid,
                     component);
        return k < 0 ? n : (n + (size_t)k < cap ? n + (size_t)k : cap - 1);
    }

    /* conn: the ConnectionId tag (0: none); stream: the StreamId tag (0: none) */
    static void fp_log(int worker, const char* component, unsigned long long conn,
                       unsigned stream, const char* fmt, ...) {
        char buf[1024];
        struct timespec ts;
        unsigned long long now_ms, add;
        fp_log_bucket* b = &fp_log_buckets[(unsigned)worker % FP_LOG_BUCKETS];
        size_t n;
        int k;
        va_list ap;
        clock_gettime(CLOCK_REALTIME, &ts);
        now_ms = (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
        if (b->tid == 0) {
            b->tid = (long)syscall(SYS_gettid);
            b->last_ms = now_ms;
            b->tokens = fp_log_rate;
        } else if (now_ms > b->last_ms) {
            add = (now_ms - b->last_ms) * fp_log_rate / 1000ULL;
            if (add) {
                b->tokens = b->tokens + add >= fp_log_rate ? fp_log_rate : b->tokens + (unsigned)add;
                b->last_ms = now_ms;
            }
        }
        if (b->tokens == 0) {
            b->dropped++;
            return;
        }
        b->tokens--;
        if (b->dropped) {
            n = fp_log_head(buf, sizeof(buf), &ts, b->tid, "misc");
            k = snprintf(buf + n, sizeof(buf) - n,
                         "%u debug lines dropped (more than %u a second on this worker)\\n",
                         b->dropped, fp_log_rate);
            if (k > 0)
                (void)!write(fp_log_fd, buf, n + (size_t)k < sizeof(buf) ? n + (size_t)k : sizeof(buf) - 1);
            b->dropped = 0;
        }
        n = fp_log_head(buf, sizeof(buf), &ts, b->tid, component);
        if (conn && stream)
            k = snprintf(buf + n, sizeof(buf) - n, "[Tags: \\"ConnectionId\\":\\"%llu\\",\\"StreamId\\":\\"%u\\"] ",
                         conn, stream);
        else if (conn)
            k = snprintf(buf + n, sizeof(buf) - n, "[Tags: \\"ConnectionId\\":\\"%llu\\"] ", conn);
        else
            k = 0;
        if (k > 0)
            n += (size_t)k;             /* (well inside buf: the head and tags are short) */
        va_start(ap, fmt);
        k = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
        va_end(ap);
        if (k < 0)
            k = 0;
        if (n + (size_t)k > sizeof(buf) - 2)
            k = (int)(sizeof(buf) - 2 - n);     /* a cut line still ends with its newline */
        buf[n + (size_t)k] = '\\n';
        (void)!write(fp_log_fd, buf, n + (size_t)k + 1);
    }
    """
    int fp_log_level
    int fp_log_fd
    unsigned int fp_log_rate
    void fp_log(int worker, const char* component, unsigned long long conn, unsigned int stream,
                const char* fmt, ...) nogil


DEF LOG_DEBUG = 10                  # Python's logging.DEBUG; fp_log_level <= it: lines on


cdef int _log_own_fd = -1           # the core's duplicate of the log's descriptor; -1: none
cdef int _log_engines = 0           # started engines whose workers write to it


def set_core_log(int level, int fd=-1, unsigned int rate=0):
    """The workers' debug lines: on when level <= logging.DEBUG; fd: where they go (-1:
    keep; the core writes to a duplicate of its own, so the caller may close fd);
    rate: lines per second per worker (0: keep; default 200)."""
    global fp_log_level, fp_log_fd, fp_log_rate, _log_own_fd
    import os
    if fd >= 0 and fd != _log_own_fd:
        if _log_own_fd < 0:
            _log_own_fd = os.dup(fd)                    # close-on-exec, as Python makes it
        else:
            os.dup2(fd, _log_own_fd, inheritable=False)  # atomic: no moment without a file
        fp_log_fd = _log_own_fd
    if rate:
        fp_log_rate = rate
    fp_log_level = level


def core_log_settings():
    """(level, fd, rate) in force."""
    return fp_log_level, fp_log_fd, fp_log_rate


def _core_log_from_logging():
    """Set the core's log from the `fastproxy` logger: its level, and the descriptor of its
    first handler that writes to a file or a terminal (stderr otherwise). Called by
    Engine.start, paired with _core_log_release() in Engine.stop."""
    import logging
    logger = logging.getLogger("fastproxy")
    fd = -1
    lg = logger
    while lg is not None and fd < 0:
        for handler in lg.handlers:
            try:
                fd = handler.stream.fileno()
                break
            except Exception:       # no stream, or one without a descriptor (StringIO)
                continue
        lg = lg.parent if lg.propagate else None
    global _log_engines
    set_core_log(logger.getEffectiveLevel(), fd if fd >= 0 else 2)
    _log_engines += 1


def _core_log_release():
    """An engine's workers have stopped: when no started engine is left, close the core's
    duplicate (stderr until the next set_core_log)."""
    global _log_engines, _log_own_fd, fp_log_fd
    import os
    if _log_engines > 0:
        _log_engines -= 1
    if _log_engines == 0 and _log_own_fd >= 0:
        fp_log_fd = 2
        os.close(_log_own_fd)
        _log_own_fd = -1
