/*
 * xsshim: an LD_PRELOAD shim that lets Debian's xen-utils-4.17 xenstored (C)
 * and oxenstored (OCaml) run on a plain Linux box with no hypervisor, so the
 * test suite can use them as oracles.
 *
 * What it replaces (facts from tools/xenstore/xenstored_{core,domain,posix}.c
 * and tools/ocaml/xenstored/{xenstored,domains}.ml of Xen 4.17):
 *   - libxenctrl: xc_interface_open hands out a dummy handle; xc_domain_getinfo
 *     and xc_domain_getinfolist report the domids listed in $XSSHIM_DIR/domains
 *     (one per line, optionally followed by "dying", "shutdown" or "crashed");
 *     xc_map_foreign_range (oxenstored's way to map a guest ring) maps
 *     $XSSHIM_DIR/ring-<domid>.
 *   - libxengnttab: xengnttab_map_grant_ref (C's map_interface) maps the same
 *     per-domain 4 KiB file, MAP_SHARED, so the test harness sees the page.
 *   - libxenevtchn: the event fd is a datagram Unix socket bound at
 *     $XSSHIM_DIR/evtchn.sock. A peer kicks the daemon by sending an 8-byte
 *     {uint32 kind, uint32 value} datagram: kind 0 = "domain <value> notified
 *     its ring", kind 1 = "VIRQ_DOM_EXC" (the domains file is re-read first).
 *     xenevtchn_notify(port) sends {port, domid} to $XSSHIM_DIR/guest-<domid>.sock
 *     when a harness listens there (nothing happens otherwise, like an event
 *     nobody waits on).
 *   - Paths: $XSSHIM_REDIRECT is "from=to;from=to;..."; any path given to
 *     open/fopen/stat/unlink/mkdir/bind/... that starts with "from" is
 *     rewritten to start with "to". It serves /proc/xen/xsd_{port,kva} from
 *     files and moves oxenstored's compiled-in run/log/config paths.
 *   - setrlimit(RLIMIT_NOFILE) is clamped to the hard limit (oxenstored asks
 *     for more than an unprivileged process may have).
 *
 * Deliberate differences from a real host: there are no grant references or
 * machine frames (a domain's ring is its file, whatever gfn INTRODUCE names),
 * and event channels are not masked between pending and unmask.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <dirent.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define MAX_DOMS 1024
#define MAX_PORTS 4096
#define RING_BYTES 4096

/* ---------------------------------------------------------------- paths -- */

struct redirect { char *from; size_t from_len; char *to; };
static struct redirect redirects[16];
static int n_redirects = -1;

static void load_redirects(void)
{
    const char *spec = getenv("XSSHIM_REDIRECT");
    char *copy, *item, *save = NULL;

    n_redirects = 0;
    if (!spec)
        return;
    copy = strdup(spec);
    for (item = strtok_r(copy, ";", &save); item && n_redirects < 16;
         item = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            continue;
        *eq = '\0';
        redirects[n_redirects].from = item;
        redirects[n_redirects].from_len = strlen(item);
        redirects[n_redirects].to = eq + 1;
        n_redirects++;
    }
}

/* Rewrite path into buf if a prefix matches; return the path to use. */
static const char *redirect(const char *path, char *buf, size_t len)
{
    int i;

    if (!path)
        return path;
    if (n_redirects < 0)
        load_redirects();
    for (i = 0; i < n_redirects; i++) {
        const struct redirect *r = &redirects[i];
        if (strncmp(path, r->from, r->from_len) == 0 &&
            (path[r->from_len] == '\0' || path[r->from_len] == '/')) {
            snprintf(buf, len, "%s%s", r->to, path + r->from_len);
            return buf;
        }
    }
    return path;
}

#define REAL(name) \
    static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static int open_mode_needed(int flags)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

int open(const char *path, int flags, ...)
{
    char buf[PATH_MAX];
    mode_t mode = 0;
    REAL(open);
    if (open_mode_needed(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return real_open(redirect(path, buf, sizeof(buf)), flags, mode);
}

int open64(const char *path, int flags, ...)
{
    char buf[PATH_MAX];
    mode_t mode = 0;
    REAL(open64);
    if (open_mode_needed(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return real_open64(redirect(path, buf, sizeof(buf)), flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    char buf[PATH_MAX];
    mode_t mode = 0;
    REAL(openat);
    if (open_mode_needed(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return real_openat(dirfd, redirect(path, buf, sizeof(buf)), flags, mode);
}

FILE *fopen(const char *path, const char *mode)
{
    char buf[PATH_MAX];
    REAL(fopen);
    return real_fopen(redirect(path, buf, sizeof(buf)), mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    char buf[PATH_MAX];
    REAL(fopen64);
    return real_fopen64(redirect(path, buf, sizeof(buf)), mode);
}

int unlink(const char *path)
{
    char buf[PATH_MAX];
    REAL(unlink);
    return real_unlink(redirect(path, buf, sizeof(buf)));
}

int mkdir(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    REAL(mkdir);
    return real_mkdir(redirect(path, buf, sizeof(buf)), mode);
}

int chmod(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    REAL(chmod);
    return real_chmod(redirect(path, buf, sizeof(buf)), mode);
}

int access(const char *path, int mode)
{
    char buf[PATH_MAX];
    REAL(access);
    return real_access(redirect(path, buf, sizeof(buf)), mode);
}

int stat(const char *path, struct stat *st)
{
    char buf[PATH_MAX];
    REAL(stat);
    return real_stat(redirect(path, buf, sizeof(buf)), st);
}

int lstat(const char *path, struct stat *st)
{
    char buf[PATH_MAX];
    REAL(lstat);
    return real_lstat(redirect(path, buf, sizeof(buf)), st);
}

int rename(const char *from, const char *to)
{
    char b1[PATH_MAX], b2[PATH_MAX];
    REAL(rename);
    return real_rename(redirect(from, b1, sizeof(b1)), redirect(to, b2, sizeof(b2)));
}

DIR *opendir(const char *path)
{
    char buf[PATH_MAX];
    REAL(opendir);
    return real_opendir(redirect(path, buf, sizeof(buf)));
}

/* AF_UNIX socket paths: the daemons bind (and unlink) their socket path. */
static const struct sockaddr *redirect_sun(const struct sockaddr *addr, socklen_t *len,
                                           struct sockaddr_un *out)
{
    char buf[PATH_MAX];
    const struct sockaddr_un *sun = (const struct sockaddr_un *)addr;
    const char *p;

    if (!addr || addr->sa_family != AF_UNIX || sun->sun_path[0] == '\0')
        return addr;
    p = redirect(sun->sun_path, buf, sizeof(buf));
    if (p == sun->sun_path)
        return addr;
    memset(out, 0, sizeof(*out));
    out->sun_family = AF_UNIX;
    if (strlen(p) >= sizeof(out->sun_path)) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    strcpy(out->sun_path, p);
    *len = (socklen_t)sizeof(*out);
    return (const struct sockaddr *)out;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct sockaddr_un sun;
    const struct sockaddr *a;
    REAL(bind);
    a = redirect_sun(addr, &len, &sun);
    if (!a)
        return -1;
    return real_bind(fd, a, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct sockaddr_un sun;
    const struct sockaddr *a;
    REAL(connect);
    a = redirect_sun(addr, &len, &sun);
    if (!a)
        return -1;
    return real_connect(fd, a, len);
}

/* ------------------------------------------------------------- rlimits -- */

static void clamp_rlimit(int resource, struct rlimit *lim)
{
    struct rlimit cur;

    if (resource != RLIMIT_NOFILE || getrlimit(RLIMIT_NOFILE, &cur) != 0)
        return;
    if (lim->rlim_max > cur.rlim_max)
        lim->rlim_max = cur.rlim_max;
    if (lim->rlim_cur > lim->rlim_max)
        lim->rlim_cur = lim->rlim_max;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    struct rlimit lim = *rlim;
    REAL(setrlimit);
    clamp_rlimit(resource, &lim);
    return real_setrlimit(resource, &lim);
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *rlim)
{
    struct rlimit lim = { rlim->rlim_cur, rlim->rlim_max };
    struct rlimit64 lim64;
    REAL(setrlimit64);
    clamp_rlimit(resource, &lim);
    lim64.rlim_cur = lim.rlim_cur;
    lim64.rlim_max = lim.rlim_max;
    return real_setrlimit64(resource, &lim64);
}

/* ------------------------------------------------------------- domains -- */

struct dom { unsigned int domid; int dying, shutdown, crashed; };
static struct dom doms[MAX_DOMS];
static int n_doms = -1;

static const char *shim_dir(void)
{
    const char *d = getenv("XSSHIM_DIR");
    return d ? d : ".";
}

static int cmp_dom(const void *a, const void *b)
{
    const struct dom *x = a, *y = b;
    return (x->domid > y->domid) - (x->domid < y->domid);
}

/* Re-read $XSSHIM_DIR/domains: the set of running domains (VIRQ_DOM_EXC). */
static void load_domains(void)
{
    char path[PATH_MAX], line[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/domains", shim_dir());
    n_doms = 0;
    f = fopen(path, "r");
    if (!f) {
        doms[n_doms++] = (struct dom){ 0, 0, 0, 0 };
        return;
    }
    while (n_doms < MAX_DOMS && fgets(line, sizeof(line), f)) {
        struct dom d = { 0, 0, 0, 0 };
        char *end;
        unsigned long id = strtoul(line, &end, 10);
        if (end == line)
            continue;
        d.domid = (unsigned int)id;
        d.dying = strstr(end, "dying") != NULL;
        d.shutdown = strstr(end, "shutdown") != NULL;
        d.crashed = strstr(end, "crashed") != NULL;
        doms[n_doms++] = d;
    }
    fclose(f);
    qsort(doms, (size_t)n_doms, sizeof(doms[0]), cmp_dom);
}

static const struct dom *first_dom_from(uint32_t first)
{
    int i;
    if (n_doms < 0)
        load_domains();
    for (i = 0; i < n_doms; i++)
        if (doms[i].domid >= first)
            return &doms[i];
    return NULL;
}

static char dummy_xc;

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger, unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return (xc_interface *)&dummy_xc;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    unsigned int n = 0;
    const struct dom *d = first_dom_from(first_domid);
    (void)xch;
    for (; d && d < doms + n_doms && n < max_doms; d++, n++) {
        memset(&info[n], 0, sizeof(info[n]));
        info[n].domid = d->domid;
        info[n].dying = d->dying;
        info[n].shutdown = d->shutdown || d->crashed;
        info[n].crashed = d->crashed;
        info[n].running = !(d->dying || d->shutdown || d->crashed);
        info[n].nr_online_vcpus = 1;
        info[n].max_vcpu_id = 0;
    }
    return (int)n;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                          xc_domaininfo_t *info)
{
    unsigned int n = 0;
    const struct dom *d = first_dom_from(first_domain);
    (void)xch;
    for (; d && d < doms + n_doms && n < max_domains; d++, n++) {
        memset(&info[n], 0, sizeof(info[n]));
        info[n].domain = (domid_t)d->domid;
        info[n].flags = (d->dying ? XEN_DOMINF_dying : 0) |
                        (d->shutdown || d->crashed ? XEN_DOMINF_shutdown : 0) |
                        (d->crashed ? (SHUTDOWN_crash << XEN_DOMINF_shutdownshift) : 0) |
                        (d->dying || d->shutdown || d->crashed ? 0 : XEN_DOMINF_running);
        info[n].max_vcpu_id = 0;
        info[n].nr_online_vcpus = 1;
    }
    return (int)n;
}

static void *map_ring(uint32_t domid)
{
    char path[PATH_MAX];
    struct stat st;
    void *addr;
    int fd;

    snprintf(path, sizeof(path), "%s/ring-%u", shim_dir(), domid);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) == 0 && st.st_size < RING_BYTES && ftruncate(fd, RING_BYTES) != 0) {
        close(fd);
        return NULL;
    }
    addr = mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return addr == MAP_FAILED ? NULL : addr;
}

void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot,
                           unsigned long mfn)
{
    (void)xch; (void)prot; (void)mfn;
    if (size > RING_BYTES) {
        errno = EINVAL;
        return NULL;
    }
    return map_ring(dom);
}

/* ------------------------------------------------------------- gnttab -- */

static char dummy_xgt;

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger; (void)open_flags;
    return (xengnttab_handle *)&dummy_xgt;
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt; (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    (void)xgt; (void)ref; (void)prot;
    return map_ring(domid);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * RING_BYTES);
}

/* ------------------------------------------------------------- evtchn -- */

struct port { int used; int is_virq; uint32_t domid; };
static struct port ports[MAX_PORTS];
static int evt_fd = -1;
static int send_fd = -1;
static char dummy_xce;

struct kick { uint32_t kind; uint32_t value; };

static xenevtchn_handle *evtchn_setup(void)
{
    struct sockaddr_un sun;

    if (evt_fd >= 0)
        return (xenevtchn_handle *)&dummy_xce;
    evt_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    send_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (evt_fd < 0 || send_fd < 0)
        return NULL;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/evtchn.sock", shim_dir()) >=
        sizeof(sun.sun_path)) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    unlink(sun.sun_path);
    {
        REAL(bind);
        if (real_bind(evt_fd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
            return NULL;
    }
    return (xenevtchn_handle *)&dummy_xce;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger; (void)open_flags;
    return evtchn_setup();
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
    (void)logger; (void)fd; (void)open_flags;
    return evtchn_setup();
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    (void)xce;
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    (void)xce;
    return evt_fd;
}

static int alloc_port(int is_virq, uint32_t domid)
{
    int p;
    for (p = 1; p < MAX_PORTS; p++) {
        if (!ports[p].used) {
            ports[p] = (struct port){ 1, is_virq, domid };
            return p;
        }
    }
    errno = ENOSPC;
    return -1;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    (void)xce; (void)remote_port;
    return alloc_port(0, domid);
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce; (void)virq;
    return alloc_port(1, 0);
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid)
{
    (void)xce;
    return alloc_port(0, domid);
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    if (port == 0 || port >= MAX_PORTS || !ports[port].used) {
        errno = EINVAL;
        return -1;
    }
    ports[port].used = 0;
    return 0;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    struct sockaddr_un sun;
    struct kick k;
    (void)xce;
    if (port == 0 || port >= MAX_PORTS || !ports[port].used) {
        errno = EINVAL;
        return -1;
    }
    if (ports[port].is_virq)
        return 0;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/guest-%u.sock", shim_dir(),
             ports[port].domid);
    k.kind = port;
    k.value = ports[port].domid;
    /* Nobody listening (or a full queue: an event is already pending): fine. */
    (void)sendto(send_fd, &k, sizeof(k), MSG_DONTWAIT, (struct sockaddr *)&sun, sizeof(sun));
    return 0;
}

static int port_of_domain(uint32_t domid)
{
    int p, found = -1;
    for (p = 1; p < MAX_PORTS; p++)
        if (ports[p].used && !ports[p].is_virq && ports[p].domid == domid)
            found = p; /* the latest binding (INTRODUCE may rebind) */
    return found;
}

static int virq_port(void)
{
    int p;
    for (p = 1; p < MAX_PORTS; p++)
        if (ports[p].used && ports[p].is_virq)
            return p;
    return -1;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    struct kick k;
    ssize_t n;
    int p;
    (void)xce;

    for (;;) {
        n = recv(evt_fd, &k, sizeof(k), MSG_DONTWAIT);
        if (n == (ssize_t)sizeof(k))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return -1;
        /* Spurious wake-up or a short datagram: report the VIRQ, which makes
         * the daemon rescan its domains (harmless). */
        return virq_port();
    }
    if (k.kind == 1) {
        load_domains();
        return virq_port();
    }
    p = port_of_domain(k.value);
    return p >= 0 ? p : virq_port();
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}
