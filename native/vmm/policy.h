// The network policy msb-vmm's supervisor holds QEMU's sockets to (policy.c): rules parsed from
// --net-policy's grammar, the verdict for an address, and the addresses DNS answers gave.
#ifndef MSB_POLICY_H
#define MSB_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns.h"

#define POLICY_MAX_RULES 256  // src/vm/netpolicy.ts keeps a policy well within it
#define POLICY_TOKEN_MAX 271  // a rule token must fit Refusal.rule (proto/vmm.options)
#define POLICY_MAX_NAMES 8    // Redirect.names

typedef struct policy policy;

// The rules in `text` (space-separated tokens), or NULL with `err` saying which token is wrong.
policy *policy_parse(const char *text, char *err, size_t n);
void policy_free(policy *p);

typedef struct {
  bool admit;
  bool intercept;    // admitted, and a "~" rule covers the address
  const char *rule;  // the deciding token ("" when none matched)
} verdict;

// The first rule matching `addr` (family AF_INET or AF_INET6, IPv4-mapped already unmapped).
verdict policy_judge(const policy *p, int family, const uint8_t addr[16], unsigned port);
// "!tunnel": every admitted TCP connection goes to the proxy, UDP only to the DNS servers.
bool policy_tunnel(const policy *p);
// "!https": refused TCP connections to port 443 go to the proxy too, not only those to port 80.
bool policy_https(const policy *p);
// Whether addr:port is a DNS server of the policy (a "+ADDRESS@53" rule for just that address).
bool policy_dns_server(const policy *p, int family, const uint8_t addr[16], unsigned port);

// Reads a DNS answer received from a DNS server of the policy and remembers its addresses for
// their TTL (at least a minute, at most a day).
void policy_learn(const uint8_t *msg, size_t len);
// The names DNS gave `addr` for, newest first; their number (at most max).
size_t policy_names(int family, const uint8_t addr[16], const char **out, size_t max);

// An internet address and port from `sa` (IPv4-mapped IPv6 as IPv4); false for anything else.
bool policy_inet(const struct sockaddr *sa, socklen_t len, int *family, uint8_t addr[16], unsigned *port);

#endif
