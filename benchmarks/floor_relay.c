/* floor_relay: the least work any HTTP/1.1 proxy can do per request, as a reference row.
 *
 * Each accepted connection gets its own upstream connection, and bytes are copied both
 * ways as they come: one read and one write per message and direction, no parsing, no
 * headers added, no pooling, no timeouts, no limits. It is NOT a proxy (it cannot route,
 * frame or reject anything); it only measures what the kernel charges a user-space relay
 * on this machine for the four socket system calls a keep-alive request needs (read the
 * request, write it upstream, read the response, write it back). Whatever an HTTP proxy
 * spends above this row is its own; what it spends up to this row is loopback TCP.
 *
 *     cc -O2 -o floor_relay benchmarks/floor_relay.c
 *     ./floor_relay 127.0.0.1 9000 127.0.0.1 8080
 *
 * One thread, level-triggered epoll. Written for the benchmark only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256

struct end {
    int fd;
    struct end *peer;
};

/* Close both ends. The pair is freed after the epoll batch: the other end may have an
   event later in the same batch. */
static struct end *dead_pairs[2 * MAX_EVENTS];
static int ndead;

static void close_pair(int ep, struct end *e)
{
    struct end *p = e->peer;
    epoll_ctl(ep, EPOLL_CTL_DEL, e->fd, NULL);
    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
    close(e->fd);
    close(p->fd);
    e->fd = p->fd = -1;
    dead_pairs[ndead++] = e < p ? e : p;    /* both ends live in one allocation */
}

/* Write all of buf to fd. The relay has no output buffering; on a full socket it waits
   for it (blocking), which a small-response benchmark never hits. */
static int write_all(int fd, const char *buf, ssize_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, (size_t)n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            fd_set set;
            FD_ZERO(&set);
            FD_SET(fd, &set);
            select(fd + 1, NULL, &set, NULL, NULL);
            continue;
        }
        if (w <= 0)
            return -1;
        buf += w;
        n -= w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s LISTEN_IP LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4]))};
    if (inet_pton(AF_INET, argv[1], &la.sin_addr) != 1 || inet_pton(AF_INET, argv[3], &ua.sin_addr) != 1) {
        fprintf(stderr, "floor_relay: bad address\n");
        return 2;
    }
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("floor_relay: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct end listen_end = {.fd = lfd};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_end};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[BUF_SIZE];
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 1;
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            if (e->fd < 0)
                continue;                   /* its pair closed earlier in this batch */
            if (e == &listen_end) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    /* A blocking connect keeps this short; wrk opens its connections
                       before it measures. The socket then goes non-blocking. */
                    int ufd = socket(AF_INET, SOCK_STREAM, 0);
                    if (ufd < 0 || connect(ufd, (struct sockaddr *)&ua, sizeof ua) < 0) {
                        if (ufd >= 0)
                            close(ufd);
                        close(cfd);
                        continue;
                    }
                    fcntl(ufd, F_SETFL, O_NONBLOCK);
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct end *pair = calloc(2, sizeof *pair);
                    if (pair == NULL) {
                        close(ufd);
                        close(cfd);
                        continue;
                    }
                    pair[0].fd = cfd;
                    pair[0].peer = &pair[1];
                    pair[1].fd = ufd;
                    pair[1].peer = &pair[0];
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &pair[0]};
                    struct epoll_event ue = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &pair[1]};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                    epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &ue);
                }
                continue;
            }
            ssize_t r = read(e->fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || write_all(e->peer->fd, buf, r) < 0)
                close_pair(ep, e);
        }
        while (ndead > 0)
            free(dead_pairs[--ndead]);
    }
}
