// libFuzzer harness for the network supervisor's DNS response reading (dns.c): any bytes, as a hostile
// or broken resolver's answer would be. Every name reported must fit DNS's limit, hold only a host
// name's bytes (lowercase letters, digits, '-', '_', and dots between labels: a NUL or a dot inside
// a label would let one name pass for another), and every address its family. Built and run by
// scripts/fuzz.sh dns.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns.h"

static void check(void *ctx, const char *qname, int family, const uint8_t *addr, uint32_t ttl) {
  (void)ctx, (void)ttl;
  volatile uint8_t sink = 0;
  size_t len = strlen(qname);
  if (len > DNS_NAME_MAX || (family != AF_INET && family != AF_INET6)) abort();
  for (size_t i = 0; i < len; i++)
    if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789-_.", qname[i])) abort();
  for (int i = 0; i < (family == AF_INET ? 4 : 16); i++) sink ^= addr[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dns_answers(data, size, check, NULL);
  return 0;
}
