// Framed messages on the helper's descriptors, and the failure report: one framed KrunStatus on
// the status descriptor, read by the host.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pb_encode.h>

#include "vmm.h"

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int vmm_write_frame(int fd, const pb_msgdesc_t *fields, const void *msg) {
  size_t n;
  if (fd < 0 || !pb_get_encoded_size(&n, fields, msg) || n > VMM_FRAME_MAX) return -1;
  uint8_t *buf = malloc(4 + n);
  if (buf == NULL) return -1;
  pb_ostream_t os = pb_ostream_from_buffer(buf + 4, n);
  int rc = -1;
  if (pb_encode(&os, fields, msg)) {
    buf[0] = (uint8_t)(n >> 24), buf[1] = (uint8_t)(n >> 16), buf[2] = (uint8_t)(n >> 8), buf[3] = (uint8_t)n;
    // A host that stopped reading must not kill us with SIGPIPE before a fallback.
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigaction(SIGPIPE, &ign, &old);
    rc = write_all(fd, buf, 4 + n);
    sigaction(SIGPIPE, &old, NULL);
  }
  free(buf);
  return rc;
}

int vmm_fail(int status_fd, const char *step, int errnum, const char *fmt, ...) {
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);

  microsandbox_vmm_KrunStatus st = microsandbox_vmm_KrunStatus_init_zero;
  st.step = (char *)step;
  st.errnum = errnum;
  st.message = message;
  if (vmm_write_frame(status_fd, microsandbox_vmm_KrunStatus_fields, &st) < 0) fprintf(stderr, "msb-vmm: %s: %s\n", step, message);
  return 1;
}
