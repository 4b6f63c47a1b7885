/*
 * A blkif frontend built on libxen-dev's real io/ring.h macros, driving the
 * xenpci blkback over a shared ring page (an mmap'd file).
 *
 * Usage: blkfront_ring RING_FILE START_IDX SECTORS GREF_SRC... -- GREF_DST...
 * Notifications: this program writes 'n' to stdout when
 * RING_PUSH_REQUESTS_AND_CHECK_NOTIFY says the backend must be notified, and
 * reads one byte from stdin for each notification from the backend. At the
 * end it writes 'e' and then one line per fact for the test to check.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
/* ring.h's xen_mb()/xen_wmb()/xen_rmb() expand to the environment's barriers. */
#define mb() __sync_synchronize()
#define rmb() __sync_synchronize()
#define wmb() __sync_synchronize()
#include <xen/io/blkif.h>

static struct blkif_front_ring fr;
static int notifies, waits;
static char results[1 << 16];
static size_t rlen;

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rlen += vsnprintf(results + rlen, sizeof(results) - rlen, fmt, ap);
    va_end(ap);
}

static void push(void)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&fr, notify);
    if (notify) {
        notifies++;
        if (write(1, "n", 1) != 1)
            exit(3);
    }
}

static blkif_request_t *next_req(uint8_t op, uint64_t id, uint64_t sector)
{
    blkif_request_t *req = RING_GET_REQUEST(&fr, fr.req_prod_pvt);
    memset(req, 0, sizeof(*req));
    req->operation = op;
    req->id = id;
    req->sector_number = sector;
    fr.req_prod_pvt++;
    return req;
}

/* Wait for `n` responses, consuming with RING_FINAL_CHECK_FOR_RESPONSES. */
static void collect(int n)
{
    while (n > 0) {
        int more;
        char c;
        RING_FINAL_CHECK_FOR_RESPONSES(&fr, more);
        if (!more) {
            waits++;
            if (read(0, &c, 1) != 1)
                exit(4);
            continue;
        }
        while (RING_HAS_UNCONSUMED_RESPONSES(&fr)) {
            blkif_response_t rsp;
            RING_COPY_RESPONSE(&fr, fr.rsp_cons, &rsp);
            fr.rsp_cons++;
            out("rsp %llu %u %d\n", (unsigned long long)rsp.id, rsp.operation, rsp.status);
            n--;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0)
        return 2;
    struct blkif_sring *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED)
        return 2;
    RING_IDX start = (RING_IDX)strtoul(argv[2], NULL, 0);
    uint64_t sectors = strtoull(argv[3], NULL, 0);
    grant_ref_t src[64], dst[64];
    int nsrc = 0, ndst = 0, i = 4;
    for (; i < argc && strcmp(argv[i], "--"); i++)
        src[nsrc++] = (grant_ref_t)strtoul(argv[i], NULL, 0);
    for (i++; i < argc; i++)
        dst[ndst++] = (grant_ref_t)strtoul(argv[i], NULL, 0);

    SHARED_RING_INIT(s);
    /* Free-running indices start near 2**32 so they wrap during the run. */
    s->req_prod = s->rsp_prod = start;
    s->req_event = s->rsp_event = start + 1;
    FRONT_RING_ATTACH(&fr, s, start, 4096);
    out("ring_size %u\n", RING_SIZE(&fr));

    /* 1. One batch of writes: each source page to its own 8 sectors. */
    for (int k = 0; k < nsrc; k++) {
        blkif_request_t *req = next_req(BLKIF_OP_WRITE, 100 + k, 8 * k);
        req->nr_segments = 1;
        req->seg[0].gref = src[k];
        req->seg[0].first_sect = 0;
        req->seg[0].last_sect = 7;
    }
    push();
    collect(nsrc);

    /* 2. Reads back, several segments per request, one request per batch,
     * more requests in total than the ring has slots (the indices wrap). */
    for (int round = 0; round < 40; round++) {
        int k = round % ndst;
        blkif_request_t *req = next_req(BLKIF_OP_READ, 200 + round, 8 * (k % nsrc));
        req->nr_segments = 1;
        req->seg[0].gref = dst[k];
        req->seg[0].first_sect = 0;
        req->seg[0].last_sect = 7;
        push();
        collect(1);
    }

    /* 3. Malformed requests, in one batch. */
    blkif_request_t *req;
    req = next_req(BLKIF_OP_WRITE, 300, 0);
    req->nr_segments = 0;
    req = next_req(BLKIF_OP_WRITE, 301, 0);
    req->nr_segments = BLKIF_MAX_SEGMENTS_PER_REQUEST + 1;
    req = next_req(BLKIF_OP_READ, 302, sectors - 1);
    req->nr_segments = 1;
    req->seg[0].gref = dst[0];
    req->seg[0].last_sect = 7;
    req = next_req(BLKIF_OP_READ, 303, 0);
    req->nr_segments = 1;
    req->seg[0].gref = 0xdead;
    req->seg[0].last_sect = 7;
    req = next_req(BLKIF_OP_RESERVED_1, 304, 0);
    req = next_req(BLKIF_OP_FLUSH_DISKCACHE, 305, 0);
    push();
    collect(6);

    out("notifies %d\n", notifies);
    out("waits %d\n", waits);
    out("req_prod %u\n", s->req_prod);
    out("rsp_prod %u\n", s->rsp_prod);
    out("req_event %u\n", s->req_event);
    out("rsp_event %u\n", s->rsp_event);
    if (write(1, "e", 1) != 1 || write(1, results, rlen) != (ssize_t)rlen)
        return 3;
    return 0;
}
