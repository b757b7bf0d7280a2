/* fio's nbd engine opens URIs with libnbd's defaults, which refuse
 * `tls-psk-file=`; nbdinfo and nbdcopy allow it. This preload turns the same
 * switch on for every libnbd handle fio makes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>

struct nbd_handle;
extern int nbd_set_uri_allow_local_file(struct nbd_handle *h, bool allow);

struct nbd_handle *nbd_create(void) {
  static struct nbd_handle *(*real)(void);
  if (!real) real = (struct nbd_handle * (*)(void)) dlsym(RTLD_NEXT, "nbd_create");
  struct nbd_handle *h = real();
  if (h != NULL) nbd_set_uri_allow_local_file(h, true);
  return h;
}
