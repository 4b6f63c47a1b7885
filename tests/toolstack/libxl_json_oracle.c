/* The oracle for `xl list -l`: Debian's libxenlight 4.17 writes a PV domain's
 * libxl_domain_config as JSON (libxl_domain_config_to_json, the function
 * printf_info_one_json's JSON comes from), built from the command line:
 *
 *   libxl_json_oracle NAME DOMID VCPUS MEMKB [SEG:BUS:DEV.FN,VDEVFN,MSITRANSLATE,
 *                     POWER_MGMT,PERMISSIVE,RDM_POLICY(0 strict|1 relaxed),NAME|-]...
 *
 * Only the fields xenpci models are set; everything else stays at libxl's
 * init values (which the generated *_gen_json leaves out). The ctx argument is
 * only used to log a failure, so none is created (that needs a hypervisor).
 */
#include <libxl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    libxl_domain_config c;
    int i, n;

    if (argc < 5) {
        fprintf(stderr, "usage: %s NAME DOMID VCPUS MEMKB [PCI...]\n", argv[0]);
        return 2;
    }
    libxl_domain_config_init(&c);
    c.c_info.type = LIBXL_DOMAIN_TYPE_PV;
    c.c_info.name = argv[1];
    c.c_info.domid = (uint32_t)strtoul(argv[2], NULL, 0);
    libxl_domain_build_info_init_type(&c.b_info, LIBXL_DOMAIN_TYPE_PV);
    c.b_info.max_vcpus = atoi(argv[3]);
    /* avail_vcpus: the first max_vcpus bits set (libxl_bitmap, as xl fills it) */
    c.b_info.avail_vcpus.size = (c.b_info.max_vcpus + 7) / 8;
    c.b_info.avail_vcpus.map = calloc(c.b_info.avail_vcpus.size, 1);
    for (i = 0; i < c.b_info.max_vcpus; i++)
        c.b_info.avail_vcpus.map[i / 8] |= 1 << (i % 8);
    c.b_info.max_memkb = c.b_info.target_memkb = strtoull(argv[4], NULL, 0);

    n = argc - 5;
    c.num_pcidevs = n;
    c.pcidevs = calloc(n ? n : 1, sizeof(*c.pcidevs));
    for (i = 0; i < n; i++) {
        libxl_device_pci *p = &c.pcidevs[i];
        unsigned seg, bus, dev, fn, vdevfn;
        int msi, pm, perm, rdm;
        char name[128];

        libxl_device_pci_init(p);
        if (sscanf(argv[5 + i], "%x:%x:%x.%x,%x,%d,%d,%d,%d,%127s", &seg, &bus, &dev, &fn,
                   &vdevfn, &msi, &pm, &perm, &rdm, name) != 10) {
            fprintf(stderr, "bad pci argument %s\n", argv[5 + i]);
            return 2;
        }
        p->domain = seg; p->bus = bus; p->dev = dev; p->func = fn; p->vdevfn = vdevfn;
        p->msitranslate = msi; p->power_mgmt = pm; p->permissive = perm;
        p->rdm_policy = rdm ? LIBXL_RDM_RESERVE_POLICY_RELAXED : LIBXL_RDM_RESERVE_POLICY_STRICT;
        p->name = strcmp(name, "-") ? strdup(name) : NULL;
    }
    char *s = libxl_domain_config_to_json(NULL, &c);
    if (!s)
        return 1;
    puts(s);
    return 0;
}
