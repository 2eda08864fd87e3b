// The failure report: one framed KrunStatus on the status descriptor, read by the host.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
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
  uint8_t buf[4 + sizeof message + 256];
  pb_ostream_t os = pb_ostream_from_buffer(buf + 4, sizeof buf - 4);
  int sent = -1;
  if (pb_encode(&os, microsandbox_vmm_KrunStatus_fields, &st)) {
    size_t n = os.bytes_written;
    buf[0] = (uint8_t)(n >> 24), buf[1] = (uint8_t)(n >> 16), buf[2] = (uint8_t)(n >> 8), buf[3] = (uint8_t)n;
    // A host that stopped reading must not kill us with SIGPIPE before the stderr fallback.
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigaction(SIGPIPE, &ign, &old);
    sent = status_fd >= 0 ? write_all(status_fd, buf, 4 + n) : -1;
    sigaction(SIGPIPE, &old, NULL);
  }
  if (sent < 0) fprintf(stderr, "msb-vmm: %s: %s\n", step, message);
  return 1;
}
