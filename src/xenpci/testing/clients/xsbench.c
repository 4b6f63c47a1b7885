/*
 * xsbench: the C client the XenStore benchmarks drive both daemons with
 * (Debian's C xenstored under the shim, and ours), so client overhead is the
 * same small constant on both sides. It speaks the raw xsd_sockmsg protocol of
 * xen/io/xs_wire.h over the daemon's Unix socket, one request in flight per
 * client, as libxenstore does.
 *
 * Usage: xsbench SOCKET MODE ARG [CLIENTS]
 *   setup 0           create /bench/r, /bench/dir/c0..c99
 *   read SECS         READ /bench/r in a loop
 *   write SECS        WRITE /bench/w/<client> (16-byte value)
 *   dir SECS          DIRECTORY /bench/dir (100 children)
 *   tx SECS           TRANSACTION_START, WRITE in it, TRANSACTION_END T
 *   fill N [FROM]     create nodes /fill/<k/100>/n<k%100>, k = FROM..FROM+N-1
 *                     (64 requests in flight, so the fill is quick)
 *   wlat N [PATH]     N WRITEs of existing node PATH (default /bench/r); prints
 *                     the mean in microseconds
 * Prints "ops=<total> secs=<elapsed>" (wlat: "us=<mean>"); for the timed
 * modes CLIENTS processes run the loop at once after a common start signal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xen/io/xs_wire.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || strlen(path) >= sizeof(sun.sun_path)) {
        perror("socket");
        exit(2);
    }
    strcpy(sun.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        perror("connect");
        exit(2);
    }
    return fd;
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("write");
            exit(2);
        }
        p += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "xsbench: daemon closed the connection\n");
            exit(2);
        }
        p += n;
        len -= (size_t)n;
    }
}

static char reply[XENSTORE_PAYLOAD_MAX + 1];

static void send_req(int fd, uint32_t type, uint32_t tx, const char *payload, uint32_t len)
{
    char buf[sizeof(struct xsd_sockmsg) + XENSTORE_PAYLOAD_MAX];
    struct xsd_sockmsg hdr = { .type = type, .req_id = 0, .tx_id = tx, .len = len };
    memcpy(buf, &hdr, sizeof(hdr));
    memcpy(buf + sizeof(hdr), payload, len);
    write_all(fd, buf, sizeof(hdr) + len);
}

/* Read replies until one that is not a watch event; return its type. */
static uint32_t recv_reply(int fd)
{
    struct xsd_sockmsg hdr;
    for (;;) {
        read_all(fd, &hdr, sizeof(hdr));
        if (hdr.len > XENSTORE_PAYLOAD_MAX) {
            fprintf(stderr, "xsbench: oversized reply\n");
            exit(2);
        }
        read_all(fd, reply, hdr.len);
        reply[hdr.len] = '\0';
        if (hdr.type != XS_WATCH_EVENT)
            return hdr.type;
    }
}

static void must(int fd, uint32_t type, uint32_t tx, const char *payload, uint32_t len)
{
    send_req(fd, type, tx, payload, len);
    if (recv_reply(fd) == XS_ERROR) {
        fprintf(stderr, "xsbench: request %u failed: %s\n", type, reply);
        exit(2);
    }
}

static long loop(int fd, const char *mode, double secs, int client)
{
    char path[64];
    int plen = snprintf(path, sizeof(path), "/bench/w/%d", client) + 1;
    char wreq[128];
    long n = 0;
    double deadline = now() + secs;

    memcpy(wreq, path, (size_t)plen);
    memset(wreq + plen, 'v', 16);
    while (now() < deadline) {
        /* 64 operations between clock reads: the clock is not free either. */
        for (int i = 0; i < 64; i++) {
            if (!strcmp(mode, "read")) {
                must(fd, XS_READ, 0, "/bench/r", 9);
            } else if (!strcmp(mode, "write")) {
                must(fd, XS_WRITE, 0, wreq, (uint32_t)plen + 16);
            } else if (!strcmp(mode, "dir")) {
                must(fd, XS_DIRECTORY, 0, "/bench/dir", 11);
            } else {
                uint32_t tx;
                must(fd, XS_TRANSACTION_START, 0, "", 1);
                tx = (uint32_t)strtoul(reply, NULL, 10);
                must(fd, XS_WRITE, tx, wreq, (uint32_t)plen + 16);
                must(fd, XS_TRANSACTION_END, tx, "T", 2);
            }
            n++;
        }
    }
    return n;
}

static void fill(int fd, long count, long next)
{
    const long window = 64;
    long sent = 0, got = 0;
    char buf[96];

    while (got < count) {
        while (sent < count && sent - got < window) {
            long k = next + sent;
            int len = snprintf(buf, sizeof(buf), "/fill/%ld/n%ld", k / 100, k % 100) + 1;
            memcpy(buf + len, "value", 5);
            send_req(fd, XS_WRITE, 0, buf, (uint32_t)len + 5);
            sent++;
        }
        if (recv_reply(fd) == XS_ERROR) {
            fprintf(stderr, "xsbench: fill failed: %s\n", reply);
            exit(2);
        }
        got++;
    }
}

int main(int argc, char **argv)
{
    const char *sock, *mode;
    int clients = 1, go[2], res[2];
    double arg, t0, t1;
    long total = 0;

    if (argc < 4) {
        fprintf(stderr, "usage: xsbench SOCKET MODE ARG [CLIENTS]\n");
        return 2;
    }
    sock = argv[1];
    mode = argv[2];
    arg = strtod(argv[3], NULL);
    if (argc > 4)
        clients = atoi(argv[4]);

    if (!strcmp(mode, "setup")) {
        int fd = connect_to(sock);
        char buf[64];
        must(fd, XS_WRITE, 0, "/bench/r\0value-of-r", 20);
        for (int i = 0; i < 100; i++) {
            int len = snprintf(buf, sizeof(buf), "/bench/dir/c%d", i) + 1;
            must(fd, XS_WRITE, 0, buf, (uint32_t)len);
        }
        return 0;
    }
    if (!strcmp(mode, "fill")) {
        int fd = connect_to(sock);
        t0 = now();
        fill(fd, (long)arg, argc > 4 ? atol(argv[4]) : 0);
        printf("ops=%ld secs=%.6f\n", (long)arg, now() - t0);
        return 0;
    }
    if (!strcmp(mode, "wlat")) {
        int fd = connect_to(sock);
        long n = (long)arg;
        const char *path = argc > 4 ? argv[4] : "/bench/r";
        char req[256];
        int len = snprintf(req, sizeof(req), "%s", path) + 1;
        if (len + 5 > (int)sizeof(req)) {
            fprintf(stderr, "xsbench: path too long\n");
            return 2;
        }
        memcpy(req + len, "value", 5);
        t0 = now();
        for (long i = 0; i < n; i++)
            must(fd, XS_WRITE, 0, req, (uint32_t)len + 5);
        printf("us=%.3f\n", (now() - t0) * 1e6 / (double)n);
        return 0;
    }
    if (pipe(go) || pipe(res)) {
        perror("pipe");
        return 2;
    }
    for (int c = 0; c < clients; c++) {
        if (fork() == 0) {
            int fd = connect_to(sock);
            char byte;
            long n;
            close(go[1]);
            read_all(go[0], &byte, 1); /* the common start */
            n = loop(fd, mode, arg, c);
            write_all(res[1], &n, sizeof(n));
            _exit(0);
        }
    }
    close(go[0]);
    close(res[1]);
    t0 = now();
    {
        char bytes[256] = { 0 };
        write_all(go[1], bytes, (size_t)clients);
    }
    for (int c = 0; c < clients; c++) {
        long n;
        read_all(res[0], &n, sizeof(n));
        total += n;
    }
    t1 = now();
    while (wait(NULL) > 0)
        ;
    printf("ops=%ld secs=%.6f\n", total, t1 - t0);
    return 0;
}
