// libFuzzer harness: a stream of bytes from the host, cut into frames and decoded exactly as the
// agent does it (native/agent/frame.c), every decoded message released. Built and run by
// scripts/fuzz.sh with AddressSanitizer and UndefinedBehaviorSanitizer.
#include <stddef.h>
#include <stdint.h>

#include <pb_decode.h>

#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t off = 0;
  for (;;) {
    uint32_t len;
    long whole = frame_next(data + off, size - off, &len);
    if (whole <= 0) break;
    microsandbox_agent_HostMessage m = microsandbox_agent_HostMessage_init_zero;
    const char *why = "";
    (void)frame_decode(data + off + 4, len, &m, &why);
    pb_release(microsandbox_agent_HostMessage_fields, &m);
    off += (size_t)whole;
  }
  return 0;
}
