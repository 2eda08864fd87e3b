// The addresses in a DNS response, for the network policy's domain rules (policy.c). The response comes from the
// network on the guest's behalf, so it is read as hostile: every offset is checked against the
// message's length, compression pointers may only point backwards and are followed a bounded
// number of times, and names longer than DNS allows are refused.
#include "dns.h"

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_POINTERS 16

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

// A byte a host name's label may hold. Anything else (a NUL, a dot inside a label, binary) would
// let a question for "allowed.example\0.attacker.net", answered by the attacker's server, be
// remembered as "allowed.example".
static bool host_byte(uint8_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'; }

// Reads the name at *off into `out` (lowercase, dotted, no final dot) unless out is NULL, and
// moves *off past it. 0, or -1 when the name is malformed or, read into `out`, not a host name.
static int read_name(const uint8_t *msg, size_t len, size_t *off, char out[DNS_NAME_MAX + 1]) {
  size_t at = *off, used = 0, end = 0;
  int jumps = 0;
  for (;;) {
    if (at >= len) return -1;
    unsigned label = msg[at];
    if (label == 0) {
      if (!end) end = at + 1;
      break;
    }
    if ((label & 0xc0) == 0xc0) {
      if (at + 1 >= len || ++jumps > MAX_POINTERS) return -1;
      size_t to = (label & 0x3f) << 8 | msg[at + 1];
      if (to >= at) return -1;  // only backwards: no loops
      if (!end) end = at + 2;
      at = to;
      continue;
    }
    if (label & 0xc0 || at + 1 + label > len) return -1;
    if (used + label + (used ? 1 : 0) > DNS_NAME_MAX) return -1;
    if (out) {
      if (used) out[used++] = '.';
      for (unsigned i = 0; i < label; i++) {
        if (!host_byte(msg[at + 1 + i])) return -1;
        out[used++] = (char)tolower(msg[at + 1 + i]);
      }
    } else {
      used += label + (used ? 1 : 0);
    }
    at += 1 + label;
  }
  if (out) out[used] = 0;
  *off = end;
  return 0;
}

int dns_answers(const uint8_t *msg, size_t len, dns_found found, void *ctx) {
  if (len < 12 || !(msg[2] & 0x80)) return -1;  // a header, and a response
  unsigned qd = be16(msg + 4), an = be16(msg + 6);
  if (qd != 1) return -1;  // resolvers ask one question
  size_t off = 12;
  char qname[DNS_NAME_MAX + 1];
  if (read_name(msg, len, &off, qname) < 0 || off + 4 > len) return -1;
  off += 4;
  int n = 0;
  for (unsigned i = 0; i < an; i++) {
    if (read_name(msg, len, &off, NULL) < 0 || off + 10 > len) return -1;
    unsigned type = be16(msg + off), class = be16(msg + off + 2), rdlen = be16(msg + off + 8);
    uint32_t ttl = (uint32_t)msg[off + 4] << 24 | (uint32_t)msg[off + 5] << 16 | (uint32_t)msg[off + 6] << 8 | msg[off + 7];
    off += 10;
    if (off + rdlen > len) return -1;
    // Every address in the answer is the question's: a CNAME chain ends at them.
    if (class == 1 && ((type == 1 && rdlen == 4) || (type == 28 && rdlen == 16))) {
      found(ctx, qname, type == 1 ? AF_INET : AF_INET6, msg + off, ttl);
      n++;
    }
    off += rdlen;
  }
  return n;
}
