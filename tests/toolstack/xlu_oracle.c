/*
 * Oracle for tests/toolstack/test_xlcfg_oracle.py: Debian's real libxlutil
 * 4.17 (libxen-dev) parsing the same input as xenpci.toolstack.xlcfg.
 *
 * Protocol: one request per stdin line, one JSON object per stdout line.
 *   spec HEX              xlu_pci_parse_spec_string on a fresh libxl_device_pci
 *   bdf HEX               xlu_pci_parse_bdf
 *   rdm HEX               xlu_rdm_parse (rdm pre-set to INVALID/-1 sentinels)
 *   cfg KEYSHEX HEX       xlu_cfg_readdata, then for each comma-separated key
 *                         get_string/get_long/get_list; then the pci part of
 *                         xl's parse_config_data (tools/xl/xl_parse.c 4.17):
 *                         the pci_* globals through xlu_cfg_get_long into an
 *                         int, rdm= through xlu_rdm_parse, each pci= list
 *                         string through xlu_pci_parse_spec_string with those
 *                         defaults, stopping at the first non-string item as
 *                         xl's loop does.
 * HEX is the input's bytes in hex, so any byte can be sent.  Strings in the
 * output are hex too ("s" fields), so no JSON escaping is needed here.  The
 * report stream (libxlutil's warnings) is captured and returned as hex.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

static char *unhex(const char *h, size_t *len)
{
    size_t n = h[0] == '-' ? 0 : strlen(h) / 2, i; /* "-": empty */
    char *out = malloc(n + 1);
    for (i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[n] = 0;
    *len = n;
    return out;
}

static void puthex(const char *s, size_t n)
{
    size_t i;
    putchar('"');
    for (i = 0; i < n; i++)
        printf("%02x", (unsigned char)s[i]);
    putchar('"');
}

static void putstr(const char *s)
{
    if (s)
        puthex(s, strlen(s));
    else
        fputs("null", stdout);
}

static void put_pci(const libxl_device_pci *p)
{
    printf("\"domain\":%d,\"bus\":%u,\"dev\":%u,\"func\":%u,\"vdevfn\":%u,"
           "\"vfunc_mask\":%u,\"msitranslate\":%d,\"power_mgmt\":%d,"
           "\"permissive\":%d,\"seize\":%d,\"rdm_policy\":%d,\"name\":",
           p->domain, p->bus, p->dev, p->func, p->vdevfn, p->vfunc_mask,
           p->msitranslate, p->power_mgmt, p->permissive, p->seize,
           (int)p->rdm_policy);
    putstr(p->name);
}

/* A report stream whose text is returned with the answer. */
static char *rep_buf;
static size_t rep_len;

static FILE *report_open(void)
{
    rep_buf = NULL;
    rep_len = 0;
    return open_memstream(&rep_buf, &rep_len);
}

static void report_close(FILE *f)
{
    fclose(f);
    fputs(",\"report\":", stdout);
    puthex(rep_buf ? rep_buf : "", rep_len);
    free(rep_buf);
}

static void do_spec(const char *s, int bdf_only)
{
    FILE *rep = report_open();
    XLU_Config *cfg = xlu_cfg_init(rep, "command line");
    libxl_device_pci pci;
    int rc;

    libxl_device_pci_init(&pci);
    rc = bdf_only ? xlu_pci_parse_bdf(cfg, &pci, s)
                  : xlu_pci_parse_spec_string(cfg, &pci, s);
    printf("{\"rc\":%d,", rc);
    put_pci(&pci);
    libxl_device_pci_dispose(&pci);
    xlu_cfg_destroy(cfg);
    report_close(rep);
    puts("}");
}

static void do_rdm(const char *s)
{
    FILE *rep = report_open();
    XLU_Config *cfg = xlu_cfg_init(rep, "command line");
    libxl_rdm_reserve rdm;
    int rc;

    rdm.strategy = -1;
    rdm.policy = LIBXL_RDM_RESERVE_POLICY_INVALID;
    rc = xlu_rdm_parse(cfg, &rdm, s);
    printf("{\"rc\":%d,\"strategy\":%d,\"policy\":%d", rc, (int)rdm.strategy,
           (int)rdm.policy);
    xlu_cfg_destroy(cfg);
    report_close(rep);
    puts("}");
}

static void put_value(const XLU_Config *cfg, XLU_ConfigValue *v)
{
    if (xlu_cfg_value_type(v) == XLU_STRING) {
        char *s;
        xlu_cfg_value_get_string(cfg, v, &s, 1);
        putstr(s);
    } else {
        XLU_ConfigList *l;
        XLU_ConfigValue *item;
        int i;
        xlu_cfg_value_get_list(cfg, v, &l, 1);
        putchar('[');
        for (i = 0; (item = xlu_cfg_get_listitem2(l, i)) != NULL; i++) {
            if (i)
                putchar(',');
            put_value(cfg, item);
        }
        putchar(']');
    }
}

static void put_key(const XLU_Config *cfg, const char *key)
{
    const char *s = NULL;
    long l = 0;
    XLU_ConfigList *list = NULL;
    XLU_ConfigValue *item;
    int entries = 0, rc, i;

    putstr(key);
    rc = xlu_cfg_get_string(cfg, key, &s, 1);
    printf(":{\"string_rc\":%d,\"string\":", rc);
    putstr(rc ? NULL : s);
    rc = xlu_cfg_get_long(cfg, key, &l, 1);
    printf(",\"long_rc\":%d,\"long\":%ld", rc, rc ? 0 : l);
    rc = xlu_cfg_get_list(cfg, key, &list, &entries, 1);
    printf(",\"list_rc\":%d,\"list\":", rc);
    if (rc) {
        fputs("null", stdout);
    } else {
        putchar('[');
        for (i = 0; (item = xlu_cfg_get_listitem2(list, i)) != NULL; i++) {
            if (i)
                putchar(',');
            put_value(cfg, item);
        }
        putchar(']');
    }
    putchar('}');
}

/* The pci part of xl_parse.c's parse_config_data, in its order. */
static void xl_pci(XLU_Config *cfg)
{
    long l;
    const char *buf;
    XLU_ConfigList *pcis;
    int pci_msitranslate = 0, pci_power_mgmt = 0, pci_permissive = 0,
        pci_seize = 0, i, e, rdm_rc = -999;
    libxl_rdm_reserve_policy global_policy = LIBXL_RDM_RESERVE_POLICY_INVALID;

    if (!xlu_cfg_get_long(cfg, "pci_msitranslate", &l, 0))
        pci_msitranslate = l;
    if (!xlu_cfg_get_long(cfg, "pci_power_mgmt", &l, 0))
        pci_power_mgmt = l;
    if (!xlu_cfg_get_long(cfg, "pci_permissive", &l, 0))
        pci_permissive = l;
    if (!xlu_cfg_get_long(cfg, "pci_seize", &l, 0))
        pci_seize = l;
    if (!xlu_cfg_get_string(cfg, "rdm", &buf, 0)) {
        libxl_rdm_reserve rdm;
        /* xl leaves rdm uninitialised; a sentinel keeps the oracle defined */
        rdm.strategy = -1;
        rdm.policy = LIBXL_RDM_RESERVE_POLICY_INVALID;
        rdm_rc = xlu_rdm_parse(cfg, &rdm, buf);
        if (!rdm_rc)
            global_policy = rdm.policy;
    }
    printf(",\"rdm_rc\":%d,\"global_rdm_policy\":%d", rdm_rc, (int)global_policy);
    fputs(",\"pci_rc\":", stdout);
    if (xlu_cfg_get_list(cfg, "pci", &pcis, 0, 0)) {
        fputs("1,\"pci\":null", stdout);
        return;
    }
    fputs("0,\"pci\":[", stdout);
    for (i = 0; (buf = xlu_cfg_get_listitem(pcis, i)) != NULL; i++) {
        libxl_device_pci pci;
        libxl_device_pci_init(&pci);
        pci.msitranslate = pci_msitranslate;
        pci.power_mgmt = pci_power_mgmt;
        pci.permissive = pci_permissive;
        pci.seize = pci_seize;
        pci.rdm_policy = global_policy;
        e = xlu_pci_parse_spec_string(cfg, &pci, buf);
        printf("%s{\"spec\":", i ? "," : "");
        putstr(buf);
        printf(",\"rc\":%d,", e);
        put_pci(&pci);
        putchar('}');
        libxl_device_pci_dispose(&pci);
        if (e)
            break; /* xl exits here */
    }
    putchar(']');
}

static void do_cfg(const char *keys, const char *data, size_t len)
{
    FILE *rep = report_open();
    XLU_Config *cfg = xlu_cfg_init(rep, "test.cfg");
    int rc = xlu_cfg_readdata(cfg, data, (int)len);

    printf("{\"rc\":%d", rc);
    if (!rc) {
        char *k = strdup(keys), *save = NULL, *tok;
        int first = 1;
        fputs(",\"keys\":{", stdout);
        for (tok = strtok_r(k, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (!first)
                putchar(',');
            first = 0;
            put_key(cfg, tok);
        }
        putchar('}');
        free(k);
        xl_pci(cfg);
    }
    xlu_cfg_destroy(cfg);
    report_close(rep);
    puts("}");
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    while ((n = getline(&line, &cap, stdin)) > 0) {
        char *mode = strtok(line, " \n"), *a = strtok(NULL, " \n"),
             *b = strtok(NULL, " \n");
        size_t alen, blen;
        char *x, *y;

        if (!mode)
            continue;
        x = unhex(a ? a : "", &alen);
        if (!strcmp(mode, "spec"))
            do_spec(x, 0);
        else if (!strcmp(mode, "bdf"))
            do_spec(x, 1);
        else if (!strcmp(mode, "rdm"))
            do_rdm(x);
        else if (!strcmp(mode, "cfg")) {
            y = unhex(b ? b : "", &blen);
            do_cfg(x, y, blen);
            free(y);
        } else
            puts("{\"error\":\"unknown mode\"}");
        free(x);
        fflush(stdout);
    }
    free(line);
    return 0;
}
