// msb-netpolicy.so: preloaded into QEMU (LD_PRELOAD, set by msb-vmm) for a VM whose network has a
// policy. Its user-mode network stack (libslirp) makes every guest connection from QEMU's own
// sockets, so wrapping connect/sendto/sendmsg here holds the guest to the policy from outside it:
// root in the guest cannot change what QEMU's process may reach. A refused TCP connection fails
// with ECONNREFUSED, which slirp turns into a reset for the guest (fast, not a hang); each refusal
// is written to stderr as "msb-net: refused ADDRESS PORT", where the host counts them.
//
// The policy is MSB_NET_POLICY: space-separated rules, the first that matches decides, none
// matching refuses. A rule is "+" (admit) or "-" (refuse), then an IPv4 or IPv6 CIDR and
// optionally "@PORT", or "d:NAME" (the domain NAME) or "s:NAME" (any name below NAME).
// IPv4-mapped IPv6 addresses are judged as IPv4. A domain rule matches an address that a DNS
// server of the policy (a "+ADDRESS@53" rule) gave for a name it covers, in an answer read on
// its way to the guest (recvfrom: libslirp's UDP), for as long as the record's TTL (at least a
// minute, at most a day): what is checked at connect time is the address, so a name that later
// resolves elsewhere (rebinding) gains nothing its new address is not admitted for.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "dns.h"

#define MAX_RULES 256      // src/vm/netpolicy.ts keeps a policy well within it
#define MAX_RESOLVED 2048  // addresses remembered from DNS answers; the oldest make way

struct rule {
  bool admit;
  int family;  // AF_INET or AF_INET6; 0 for a domain rule
  uint8_t addr[16];
  unsigned prefix;  // bits
  unsigned port;    // 0: any
  bool suffix;      // a domain rule for the names below `domain`
  char domain[DNS_NAME_MAX + 1];
};

// An address a DNS server gave for `name`, until `expires` (CLOCK_MONOTONIC seconds).
struct resolved {
  int family;
  uint8_t addr[16];
  time_t expires;
  char name[DNS_NAME_MAX + 1];
};

static struct rule g_rules[MAX_RULES];
static int g_nrules;
static bool g_active;
static bool g_domains;  // any domain rule: DNS answers are read
static struct resolved g_resolved[MAX_RESOLVED];
static unsigned g_next;  // the ring's next slot
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);

static bool parse_rule(const char *tok, struct rule *r) {
  char buf[DNS_NAME_MAX + 8];
  if (strlen(tok) >= sizeof buf || (tok[0] != '+' && tok[0] != '-')) return false;
  strcpy(buf, tok + 1);
  r->admit = tok[0] == '+';
  r->port = 0;
  r->family = 0;
  if ((buf[0] == 'd' || buf[0] == 's') && buf[1] == ':') {
    if (!buf[2] || strlen(buf + 2) > DNS_NAME_MAX) return false;
    r->suffix = buf[0] == 's';
    strcpy(r->domain, buf + 2);
    g_domains = true;
    return true;
  }
  char *at = strchr(buf, '@');
  if (at) {
    *at = 0;
    char *end;
    unsigned long port = strtoul(at + 1, &end, 10);
    if (*end || port == 0 || port > 65535) return false;
    r->port = (unsigned)port;
  }
  char *slash = strchr(buf, '/');
  if (!slash) return false;
  *slash = 0;
  char *end;
  unsigned long prefix = strtoul(slash + 1, &end, 10);
  if (*end) return false;
  memset(r->addr, 0, sizeof r->addr);
  if (inet_pton(AF_INET, buf, r->addr) == 1) r->family = AF_INET;
  else if (inet_pton(AF_INET6, buf, r->addr) == 1) r->family = AF_INET6;
  else return false;
  if (prefix > (r->family == AF_INET ? 32u : 128u)) return false;
  r->prefix = (unsigned)prefix;
  return true;
}

__attribute__((constructor)) static void load_policy(void) {
  real_connect = dlsym(RTLD_NEXT, "connect");
  real_sendto = dlsym(RTLD_NEXT, "sendto");
  real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
  real_recvfrom = dlsym(RTLD_NEXT, "recvfrom");
  const char *policy = getenv("MSB_NET_POLICY");
  if (!policy) return;
  // Whatever QEMU runs later must not inherit it.
  char *copy = strdup(policy);
  unsetenv("MSB_NET_POLICY");
  unsetenv("LD_PRELOAD");
  g_active = true;  // an unreadable policy refuses everything
  if (!copy) return;
  for (char *save, *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    if (g_nrules == MAX_RULES || !parse_rule(tok, &g_rules[g_nrules])) {
      fprintf(stderr, "msb-net: rule %s is malformed or past the %d allowed: refusing everything\n", tok, MAX_RULES);
      g_nrules = 0;
      break;
    }
    g_nrules++;
  }
  free(copy);
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits) {
  unsigned whole = bits / 8, rest = bits % 8;
  if (memcmp(a, b, whole) != 0) return false;
  return rest == 0 || ((a[whole] ^ b[whole]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

static time_t now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec;
}

static bool covers(const struct rule *r, const char *name) {
  if (!r->suffix) return strcmp(name, r->domain) == 0;
  size_t n = strlen(name), d = strlen(r->domain);
  return n > d + 1 && name[n - d - 1] == '.' && strcmp(name + n - d, r->domain) == 0;
}

// Whether a DNS answer still in memory gave `addr` for a name `r` covers.
static bool resolved_for(const struct rule *r, int family, const uint8_t *addr) {
  time_t t = now();
  bool hit = false;
  pthread_mutex_lock(&g_lock);
  for (unsigned i = 0; i < MAX_RESOLVED && !hit; i++) {
    const struct resolved *e = &g_resolved[i];
    hit = e->family == family && e->expires > t && memcmp(e->addr, addr, family == AF_INET ? 4 : 16) == 0 && covers(r, e->name);
  }
  pthread_mutex_unlock(&g_lock);
  return hit;
}

static void remember(void *ctx, const char *name, int family, const uint8_t *addr, uint32_t ttl) {
  (void)ctx;
  // Covered by some domain rule, or not worth a slot.
  bool wanted = false;
  for (int i = 0; i < g_nrules && !wanted; i++) wanted = !g_rules[i].family && covers(&g_rules[i], name);
  if (!wanted) return;
  if (ttl < 60) ttl = 60;
  if (ttl > 86400) ttl = 86400;
  pthread_mutex_lock(&g_lock);
  struct resolved *e = &g_resolved[g_next++ % MAX_RESOLVED];
  e->family = family;
  memset(e->addr, 0, sizeof e->addr);
  memcpy(e->addr, addr, family == AF_INET ? 4 : 16);
  e->expires = now() + (time_t)ttl;
  strcpy(e->name, name);
  pthread_mutex_unlock(&g_lock);
}

// An internet address and port from `sa`, IPv4-mapped IPv6 as IPv4; false for anything else.
static bool inet_of(const struct sockaddr *sa, socklen_t len, int *family, uint8_t addr[16], unsigned *port) {
  if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const void *)sa;
    *family = AF_INET;
    memcpy(addr, &in->sin_addr, 4);
    *port = ntohs(in->sin_port);
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *in6 = (const void *)sa;
    *port = ntohs(in6->sin6_port);
    *family = IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) ? AF_INET : AF_INET6;
    memcpy(addr, in6->sin6_addr.s6_addr + (*family == AF_INET ? 12 : 0), *family == AF_INET ? 4 : 16);
    return true;
  }
  return false;
}

static bool cidr_match(const struct rule *r, int family, const uint8_t *addr, unsigned port) {
  return r->family == family && (!r->port || r->port == port) && prefix_match(addr, r->addr, r->prefix);
}

// Whether QEMU may send to `sa`: anything but an internet address (unix sockets: its own
// channels) is not the policy's business.
static bool admitted(const struct sockaddr *sa, socklen_t len) {
  if (!g_active || !sa) return true;
  int family;
  uint8_t addr[16] = {0};
  unsigned port;
  if (!inet_of(sa, len, &family, addr, &port)) return sa->sa_family != AF_INET && sa->sa_family != AF_INET6;
  for (int i = 0; i < g_nrules; i++) {
    const struct rule *r = &g_rules[i];
    if (r->family ? cidr_match(r, family, addr, port) : resolved_for(r, family, addr)) {
      if (r->admit) return true;
      break;
    }
  }
  char text[INET6_ADDRSTRLEN] = "?";
  inet_ntop(family, addr, text, sizeof text);
  fprintf(stderr, "msb-net: refused %s %u\n", text, port);
  return false;
}

int connect(int fd, const struct sockaddr *sa, socklen_t len) {
  if (!admitted(sa, len)) {
    errno = ECONNREFUSED;
    return -1;
  }
  return real_connect(fd, sa, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len) {
  if (!admitted(sa, len)) {
    errno = ECONNREFUSED;
    return -1;
  }
  return real_sendto(fd, buf, n, flags, sa, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  if (msg && !admitted(msg->msg_name, msg->msg_namelen)) {
    errno = ECONNREFUSED;
    return -1;
  }
  return real_sendmsg(fd, msg, flags);
}

// A DNS server of the policy: an address admitted on port 53 alone by a rule for just it.
static bool from_dns_server(const struct sockaddr *sa, socklen_t len) {
  int family;
  uint8_t addr[16] = {0};
  unsigned port;
  if (!sa || !inet_of(sa, len, &family, addr, &port) || port != 53) return false;
  for (int i = 0; i < g_nrules; i++) {
    const struct rule *r = &g_rules[i];
    if (r->admit && r->port == 53 && r->prefix == (family == AF_INET ? 32u : 128u) && cidr_match(r, family, addr, port)) return true;
  }
  return false;
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa, socklen_t *len) {
  ssize_t got = real_recvfrom(fd, buf, n, flags, sa, len);
  if (got > 0 && g_domains && !(flags & MSG_PEEK) && len && from_dns_server(sa, *len)) dns_answers(buf, (size_t)got, remember, NULL);
  return got;
}
