/*
 * Parse each argument as one xl DISKSPEC with Debian's real libxlutil
 * (xlu_disk_parse) and print what it made of it, one line per spec.
 */
#include <stdio.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *null = fopen("/dev/null", "w");
        XLU_Config *cfg = xlu_cfg_init(null, "spec");
        libxl_device_disk d;
        libxl_device_disk_init(&d);
        const char *spec = argv[i];
        int rc = xlu_disk_parse(cfg, 1, &spec, &d);
        printf("rc=%d target=%s vdev=%s format=%d rw=%d cdrom=%d backend=%d\n", rc,
               d.pdev_path ? d.pdev_path : "", d.vdev ? d.vdev : "", (int)d.format, d.readwrite,
               d.is_cdrom, (int)d.backend);
        libxl_device_disk_dispose(&d);
        xlu_cfg_destroy(cfg);
        fclose(null);
    }
    return 0;
}
