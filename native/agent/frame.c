// Frames from the host: a 4-byte big-endian length, then a HostMessage. What the agent accepts
// from the host is decided here and only here, so that the fuzzer (native/agent/fuzz) runs the
// very code the agent does.
#include <pb_decode.h>

#include "agent.h"

long frame_next(const uint8_t *buf, size_t len, uint32_t *body_len) {
  if (len < 4) return 0;
  uint32_t n = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
  *body_len = n;
  if (n > LIMIT(MAX_FRAME_BYTES)) return -1;
  return len - 4 < n ? 0 : (long)(4 + n);
}

bool frame_decode(const uint8_t *body, size_t len, microsandbox_agent_HostMessage *m, const char **why) {
  pb_istream_t is = pb_istream_from_buffer(body, len);
  if (pb_decode(&is, microsandbox_agent_HostMessage_fields, m)) return true;
  *why = PB_GET_ERROR(&is);
  return false;
}
