// msb-netpolicy.so: preloaded into QEMU (LD_PRELOAD, set by msb-vmm) for a VM whose network has a
// policy. Its user-mode network stack (libslirp) makes every guest connection from QEMU's own
// sockets, so wrapping connect/sendto/sendmsg here holds the guest to the policy from outside it:
// root in the guest cannot change what QEMU's process may reach. A refused TCP connection fails
// with ECONNREFUSED, which slirp turns into a reset for the guest (fast, not a hang); each refusal
// is written to stderr as "msb-net: refused ADDRESS PORT", where the host counts them.
//
// The policy is MSB_NET_POLICY: space-separated rules, the first that matches decides, none
// matching refuses. A rule is "+" (admit) or "-" (refuse), an IPv4 or IPv6 CIDR, and optionally
// "@PORT". IPv4-mapped IPv6 addresses are judged as IPv4.
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
#include <unistd.h>

#define MAX_RULES 256  // src/vm/netpolicy.ts keeps a policy well within it

struct rule {
  bool admit;
  int family;         // AF_INET or AF_INET6
  uint8_t addr[16];
  unsigned prefix;    // bits
  unsigned port;      // 0: any
};

static struct rule g_rules[MAX_RULES];
static int g_nrules;
static bool g_active;

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);

static bool parse_rule(const char *tok, struct rule *r) {
  char buf[80];
  if (strlen(tok) >= sizeof buf || (tok[0] != '+' && tok[0] != '-')) return false;
  strcpy(buf, tok + 1);
  r->admit = tok[0] == '+';
  r->port = 0;
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

// Whether QEMU may send to `sa`: anything but an internet address (unix sockets: its own
// channels) is not the policy's business.
static bool admitted(const struct sockaddr *sa, socklen_t len) {
  if (!g_active || !sa) return true;
  int family;
  uint8_t addr[16];
  unsigned port;
  if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const void *)sa;
    family = AF_INET;
    memcpy(addr, &in->sin_addr, 4);
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *in6 = (const void *)sa;
    port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      family = AF_INET;
      memcpy(addr, in6->sin6_addr.s6_addr + 12, 4);
    } else {
      family = AF_INET6;
      memcpy(addr, in6->sin6_addr.s6_addr, 16);
    }
  } else {
    return sa->sa_family != AF_INET && sa->sa_family != AF_INET6;
  }
  for (int i = 0; i < g_nrules; i++) {
    const struct rule *r = &g_rules[i];
    if (r->family == family && (!r->port || r->port == port) && prefix_match(addr, r->addr, r->prefix)) {
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
