/* LD_PRELOAD shim that lets Debian's real `xl` 4.17 run without a hypervisor, so
 * its own code (argument handling, find_domain, the spec/BDF parse, messages,
 * exit statuses, output formats) is the oracle for `xenpci xl`.
 *
 * Only what would reach Xen is replaced: the context (no privcmd here), the
 * version and CPU facts xl reads at start, and the host state a test sets:
 *   XL_SHIM_DOMAINS     "0:Domain-0,1:g"  domains that exist (domid:name), or with
 *                       what `xl list` shows: "domid:name:memkb:vcpus:flags:cpu_ns"
 *                       (flags as xl prints them, e.g. "-b----")
 *   XL_SHIM_ASSIGNABLE  "0000:03:00.0=nic0,0000:04:00.0="  pciback's pool
 *   XL_SHIM_PCI         "1=0000:03:00.0@28,..."  each domain's devices (vdevfn hex)
 * Nothing here decides what xl prints; xl does.
 */
#define _GNU_SOURCE
#include <libxl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char fake_ctx[65536];

int libxl_ctx_alloc(libxl_ctx **pctx, int version, unsigned flags, xentoollog_logger *lg)
{
    *pctx = (libxl_ctx *)fake_ctx;
    return 0;
}
int libxl_ctx_free(libxl_ctx *ctx) { return 0; }
void libxl_childproc_setmode(libxl_ctx *ctx, const libxl_childproc_hooks *h, void *u) {}

int libxl_read_file_contents(libxl_ctx *ctx, const char *f, void **data_r, int *len_r)
{
    *data_r = NULL; /* no /etc/xen/xl.conf: xl's defaults */
    *len_r = 0;
    return 0;
}

const libxl_version_info *libxl_get_version_info(libxl_ctx *ctx)
{
    static libxl_version_info v;
    v.xen_version_major = 4;
    v.xen_version_minor = 17;
    v.xen_version_extra = v.compiler = v.compile_by = v.compile_domain = "";
    v.compile_date = v.capabilities = v.changeset = v.commandline = v.build_id = "";
    v.pagesize = 4096;
    return &v;
}

int libxl_get_max_cpus(libxl_ctx *ctx) { return 8; }
int libxl_get_max_nodes(libxl_ctx *ctx) { return 1; }
int libxl_cpu_bitmap_alloc(libxl_ctx *ctx, libxl_bitmap *b, int max_cpus)
{
    b->size = 8;
    b->map = calloc(8, 1);
    return 0;
}
int libxl_node_bitmap_alloc(libxl_ctx *ctx, libxl_bitmap *b, int max_nodes)
{
    return libxl_cpu_bitmap_alloc(ctx, b, 0);
}

/* the domain table: "domid:name,..." */
static int find(const char *name, uint32_t domid, uint32_t *domid_r, char **name_r)
{
    const char *env = getenv("XL_SHIM_DOMAINS");
    char *copy = strdup(env ? env : "0:Domain-0"), *save = NULL, *tok;
    int found = 0;

    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        uint32_t id;
        if (!colon)
            continue;
        *colon = 0;
        id = strtoul(tok, NULL, 10);
        char *end = strchr(colon + 1, ':');
        if (end)
            *end = 0; /* the name ends where the `xl list` fields start */
        if ((name && !strcmp(colon + 1, name)) || (!name && id == domid)) {
            if (domid_r) *domid_r = id;
            if (name_r) *name_r = strdup(colon + 1);
            found = 1;
            break;
        }
    }
    free(copy);
    return found;
}

/* one domain of the table as libxl_dominfo (fields `xl list` prints) */
static int dominfo(const char *tok, libxl_dominfo *d)
{
    unsigned long long memkb = 0, cpu_ns = 0;
    int vcpus = 0;
    char name[256], flags[16] = "------";
    uint32_t id;

    if (sscanf(tok, "%u:%255[^:]:%llu:%d:%15[^:]:%llu", &id, name, &memkb, &vcpus, flags,
               &cpu_ns) < 2)
        return 0;
    libxl_dominfo_init(d);
    d->domid = id;
    d->current_memkb = memkb;
    d->outstanding_memkb = 0; /* no claims (init leaves it at LIBXL_MEMKB_DEFAULT) */
    d->vcpu_online = vcpus;
    d->running = flags[0] == 'r';
    d->blocked = flags[1] == 'b';
    d->paused = flags[2] == 'p';
    d->shutdown = flags[3] == 's';
    d->dying = flags[5] == 'd';
    d->cpu_time = cpu_ns;
    return 1;
}

libxl_dominfo *libxl_list_domain(libxl_ctx *ctx, int *nb)
{
    const char *env = getenv("XL_SHIM_DOMAINS");
    char *copy = strdup(env ? env : "0:Domain-0"), *save = NULL, *tok;
    libxl_dominfo *out = calloc(64, sizeof(*out));
    int n = 0;

    for (tok = strtok_r(copy, ",", &save); tok && n < 64; tok = strtok_r(NULL, ",", &save))
        n += dominfo(tok, &out[n]);
    free(copy);
    *nb = n;
    return out;
}

libxl_device_pci *libxl_device_pci_list(libxl_ctx *ctx, uint32_t domid, int *num)
{
    const char *env = getenv("XL_SHIM_PCI");
    char *copy = strdup(env ? env : ""), *save = NULL, *tok;
    libxl_device_pci *out = calloc(64, sizeof(*out));
    int n = 0;

    for (tok = strtok_r(copy, ",", &save); tok && n < 64; tok = strtok_r(NULL, ",", &save)) {
        unsigned id, seg, bus, dev, fn, vdevfn;
        if (sscanf(tok, "%u=%x:%x:%x.%x@%x", &id, &seg, &bus, &dev, &fn, &vdevfn) != 6 ||
            id != domid)
            continue;
        libxl_device_pci_init(&out[n]);
        out[n].domain = seg; out[n].bus = bus; out[n].dev = dev; out[n].func = fn;
        out[n].vdevfn = vdevfn;
        n++;
    }
    free(copy);
    *num = n;
    if (!n) {
        free(out);
        return NULL; /* as libxl: no backend, no list */
    }
    return out;
}

int libxl_name_to_domid(libxl_ctx *ctx, const char *name, uint32_t *domid)
{
    return find(name, 0, domid, NULL) ? 0 : ERROR_INVAL;
}
char *libxl_domid_to_name(libxl_ctx *ctx, uint32_t domid)
{
    char *name = NULL;
    return find(NULL, domid, NULL, &name) ? name : NULL;
}
int libxl_domain_info(libxl_ctx *ctx, libxl_dominfo *info_r, uint32_t domid)
{
    int nb, i, found = 0;
    libxl_dominfo *all = libxl_list_domain(ctx, &nb);

    for (i = 0; i < nb; i++) {
        if (all[i].domid == domid) {
            if (info_r)
                *info_r = all[i];
            found = 1;
        }
    }
    free(all);
    return found ? 0 : ERROR_DOMAIN_NOTFOUND;
}

libxl_device_pci *libxl_device_pci_assignable_list(libxl_ctx *ctx, int *num)
{
    const char *env = getenv("XL_SHIM_ASSIGNABLE");
    char *copy = strdup(env ? env : ""), *save = NULL, *tok;
    libxl_device_pci *out = calloc(64, sizeof(*out));
    int n = 0;

    for (tok = strtok_r(copy, ",", &save); tok && n < 64; tok = strtok_r(NULL, ",", &save)) {
        unsigned seg, bus, dev, fn;
        char *eq = strchr(tok, '=');
        libxl_device_pci_init(&out[n]);
        if (sscanf(tok, "%x:%x:%x.%x", &seg, &bus, &dev, &fn) != 4)
            continue;
        out[n].domain = seg; out[n].bus = bus; out[n].dev = dev; out[n].func = fn;
        out[n].name = eq && eq[1] ? strdup(eq + 1) : NULL;
        n++;
    }
    free(copy);
    *num = n;
    if (!n) {
        free(out);
        return NULL;
    }
    return out;
}

/* remove by name: the pool has names; anything else is not found (xl then parses a BDF) */
int libxl_device_pci_assignable_remove(libxl_ctx *ctx, libxl_device_pci *pci, int rebind)
{
    return ERROR_NOTFOUND;
}
