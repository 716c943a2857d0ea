# C declarations the data plane uses. Everything here is callable without the GIL.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.types cimport pid_t

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EINPROGRESS
        ECONNRESET
        EPIPE
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        ECONNABORTED
        ECONNREFUSED
        ETIMEDOUT
        EPERM

cdef extern from "<string.h>" nogil:
    char* strerror(int errnum)
    size_t strlen(const char* s)

cdef extern from "<stdio.h>" nogil:
    int snprintf(char* buf, size_t n, const char* fmt, ...)

cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    int close(int fd)
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
        CLOCK_MONOTONIC_COARSE
        CLOCK_REALTIME
    int clock_gettime(int clk, timespec* ts)
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
        int tm_wday
    tm* gmtime_r(const time_t* t, tm* out)
    time_t timegm(tm* t)
    size_t strftime(char* s, size_t max, const char* fmt, const tm* t)

cdef extern from "<sys/random.h>" nogil:
    ssize_t getrandom(void* buf, size_t n, unsigned int flags)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec* iov, int iovcnt)
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t "epoll_data":
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* evs, int maxevents, int timeout)

cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)

cdef extern from "<fcntl.h>" nogil:
    enum:
        O_NONBLOCK
        O_CLOEXEC
        F_SETPIPE_SZ
        F_GETPIPE_SZ
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        SPLICE_F_MORE
    int fcntl(int fd, int cmd, ...)
    int pipe2(int* fds, int flags)
    ssize_t splice(int fd_in, int64_t* off_in, int fd_out, int64_t* off_out, size_t len, unsigned int flags)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef uint32_t socklen_t
    ctypedef uint16_t sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct linger:
        int l_onoff
        int l_linger
    enum:
        AF_INET
        AF_INET6
        AF_UNSPEC
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_REUSEADDR
        SO_REUSEPORT
        SO_ERROR
        SO_LINGER
        SO_RCVBUF
        SO_SNDBUF
        SHUT_RD
        SHUT_WR
        SHUT_RDWR
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_MORE
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr* addr, socklen_t len)
    int listen(int fd, int backlog)
    int accept4(int fd, sockaddr* addr, socklen_t* len, int flags)
    int connect(int fd, const sockaddr* addr, socklen_t len)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* len)
    int getsockname(int fd, sockaddr* addr, socklen_t* len)
    int getpeername(int fd, sockaddr* addr, socklen_t* len)
    ssize_t send(int fd, const void* buf, size_t n, int flags)

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t v)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)
    int inet_pton(int af, const char* src, void* dst)
    uint16_t ntohs(uint16_t v)

cdef extern from "<ifaddrs.h>" nogil:
    struct ifaddrs:
        ifaddrs* ifa_next
        char* ifa_name
        unsigned int ifa_flags
        sockaddr* ifa_addr
    int getifaddrs(ifaddrs** out)
    void freeifaddrs(ifaddrs* ifa)

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_CONGESTION

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_mutex_init(pthread_mutex_t* m, void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_cond_init(pthread_cond_t* c, void* attr)
    int pthread_cond_destroy(pthread_cond_t* c)
    int pthread_cond_wait(pthread_cond_t* c, pthread_mutex_t* m)
    int pthread_cond_broadcast(pthread_cond_t* c)
    pthread_t pthread_self()
    int pthread_equal(pthread_t a, pthread_t b)

cdef extern from "fp_c.h" nogil:
    int fp_atomic_add_int(int* p, int v)
    int64_t fp_atomic_add_i64(int64_t* p, int64_t v)
    int64_t fp_atomic_load_i64(int64_t* p)
    uint64_t fp_load_u64(uint64_t* p)
    void fp_store_u64(uint64_t* p, uint64_t v)
    uint64_t fp_load_acquire_u64(uint64_t* p)
    int fp_load_int(int* p)
    void fp_store_int(int* p, int v)
    uint32_t fp_load_u32(uint32_t* p)
    uint32_t fp_atomic_or_u32(uint32_t* p, uint32_t v)    # the old value
    uint32_t fp_atomic_and_u32(uint32_t* p, uint32_t v)
    void fp_debug_assert_pipe_empty(int fd)
