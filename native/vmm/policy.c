// The network policy (policy.h). Space-separated tokens, the first admitting or refusing one that
// matches decides, none matching refuses: "+" admits, "-" refuses, then an IPv4 or IPv6 CIDR with
// an optional "@PORT", "d:NAME" (the addresses a DNS server of the policy gave for NAME) or
// "s:NAME" (for any name below NAME). "~" and a CIDR, "d:" or "s:" marks admitted connections to
// intercept (sent to the host's egress proxy); "!tunnel" sends every admitted one there; "!https":
// the proxy can answer a refused HTTPS connection too (it has a CA the guest trusts). What is
// checked is always the address, so a name that later resolves elsewhere (rebinding) gains
// nothing its new address is not admitted for.
#define _GNU_SOURCE
#include "policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_RESOLVED 2048  // addresses remembered from DNS answers; the oldest make way

enum kind { ADMIT, REFUSE, INTERCEPT };

struct rule {
  enum kind kind;
  int family;  // AF_INET or AF_INET6; 0 for a domain rule
  uint8_t addr[16];
  unsigned prefix;  // bits
  unsigned port;    // 0: any
  bool suffix;      // a domain rule for the names below `domain`
  char domain[DNS_NAME_MAX + 1];
  char token[POLICY_TOKEN_MAX + 1];
};

struct policy {
  int n;
  bool tunnel, https;
  struct rule rules[];
};

// An address a DNS server gave for `name`, until `expires` (CLOCK_MONOTONIC seconds).
struct resolved {
  int family;
  uint8_t addr[16];
  time_t expires;
  char name[DNS_NAME_MAX + 1];
};

// Kept across policy changes: a new domain rule covers names resolved before it came.
static struct resolved g_resolved[MAX_RESOLVED];
static unsigned g_next;  // the ring's next slot

static bool parse_rule(const char *tok, struct rule *r) {
  char buf[POLICY_TOKEN_MAX + 1];
  size_t len = strlen(tok);
  if (len > POLICY_TOKEN_MAX || len < 2) return false;
  memset(r, 0, sizeof *r);
  strcpy(r->token, tok);
  r->kind = tok[0] == '+' ? ADMIT : tok[0] == '-' ? REFUSE : tok[0] == '~' ? INTERCEPT : (enum kind) - 1;
  if ((int)r->kind < 0) return false;
  strcpy(buf, tok + 1);
  if ((buf[0] == 'd' || buf[0] == 's') && buf[1] == ':') {
    if (!buf[2] || strlen(buf + 2) > DNS_NAME_MAX) return false;
    r->suffix = buf[0] == 's';
    strcpy(r->domain, buf + 2);
    return true;
  }
  char *at = strchr(buf, '@');
  if (at) {
    *at = 0;
    char *end;
    unsigned long port = strtoul(at + 1, &end, 10);
    if (*end || !at[1] || port == 0 || port > 65535) return false;
    r->port = (unsigned)port;
  }
  char *slash = strchr(buf, '/');
  if (!slash) return false;
  *slash = 0;
  char *end;
  unsigned long prefix = strtoul(slash + 1, &end, 10);
  if (*end || !slash[1]) return false;
  if (inet_pton(AF_INET, buf, r->addr) == 1) r->family = AF_INET;
  else if (inet_pton(AF_INET6, buf, r->addr) == 1) r->family = AF_INET6;
  else return false;
  if (prefix > (r->family == AF_INET ? 32u : 128u)) return false;
  r->prefix = (unsigned)prefix;
  return true;
}

policy *policy_parse(const char *text, char *err, size_t n) {
  char *copy = strdup(text);
  policy *p = calloc(1, sizeof *p + POLICY_MAX_RULES * sizeof(struct rule));
  if (!copy || !p) {
    snprintf(err, n, "out of memory");
    goto fail;
  }
  for (char *save, *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    if (strcmp(tok, "!tunnel") == 0 || strcmp(tok, "!https") == 0) {
      *(tok[1] == 't' ? &p->tunnel : &p->https) = true;
      continue;
    }
    if (p->n == POLICY_MAX_RULES) {
      snprintf(err, n, "more than %d rules", POLICY_MAX_RULES);
      goto fail;
    }
    if (!parse_rule(tok, &p->rules[p->n])) {
      snprintf(err, n, "rule \"%.*s\" is malformed (at most %d characters: +, - or ~, then CIDR[@PORT], d:NAME or s:NAME; or !tunnel, !https)", 64, tok,
               POLICY_TOKEN_MAX);
      goto fail;
    }
    p->n++;
  }
  free(copy);
  return p;
fail:
  free(copy);
  free(p);
  return NULL;
}

void policy_free(policy *p) { free(p); }
bool policy_tunnel(const policy *p) { return p->tunnel; }
bool policy_https(const policy *p) { return p->https; }

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

static size_t addr_len(int family) { return family == AF_INET ? 4 : 16; }

// Whether a DNS answer still in memory gave `addr` for a name `r` covers.
static bool resolved_for(const struct rule *r, int family, const uint8_t *addr) {
  time_t t = now();
  for (unsigned i = 0; i < MAX_RESOLVED; i++) {
    const struct resolved *e = &g_resolved[i];
    if (e->family == family && e->expires > t && memcmp(e->addr, addr, addr_len(family)) == 0 && covers(r, e->name)) return true;
  }
  return false;
}

static bool matches(const struct rule *r, int family, const uint8_t *addr, unsigned port) {
  if (!r->family) return resolved_for(r, family, addr);
  return r->family == family && (!r->port || r->port == port) && prefix_match(addr, r->addr, r->prefix);
}

verdict policy_judge(const policy *p, int family, const uint8_t addr[16], unsigned port) {
  verdict v = {.admit = false, .intercept = false, .rule = ""};
  for (int i = 0; i < p->n; i++) {
    const struct rule *r = &p->rules[i];
    if (r->kind == INTERCEPT || !matches(r, family, addr, port)) continue;
    v.admit = r->kind == ADMIT;
    v.rule = r->token;
    break;
  }
  for (int i = 0; v.admit && i < p->n && !v.intercept; i++) v.intercept = p->rules[i].kind == INTERCEPT && matches(&p->rules[i], family, addr, port);
  return v;
}

bool policy_dns_server(const policy *p, int family, const uint8_t addr[16], unsigned port) {
  if (port != 53) return false;
  for (int i = 0; i < p->n; i++) {
    const struct rule *r = &p->rules[i];
    if (r->kind == ADMIT && r->port == 53 && r->prefix == (family == AF_INET ? 32u : 128u) && matches(r, family, addr, port)) return true;
  }
  return false;
}

static void remember(void *ctx, const char *name, int family, const uint8_t *addr, uint32_t ttl) {
  (void)ctx;
  if (ttl < 60) ttl = 60;
  if (ttl > 86400) ttl = 86400;
  // The same name and address again only refreshes its slot's expiry (and becomes the newest).
  for (unsigned i = 0; i < MAX_RESOLVED; i++) {
    struct resolved *e = &g_resolved[i];
    if (e->family == family && memcmp(e->addr, addr, addr_len(family)) == 0 && strcmp(e->name, name) == 0) e->family = 0;
  }
  struct resolved *e = &g_resolved[g_next++ % MAX_RESOLVED];
  e->family = family;
  memset(e->addr, 0, sizeof e->addr);
  memcpy(e->addr, addr, addr_len(family));
  e->expires = now() + (time_t)ttl;
  strcpy(e->name, name);
}

void policy_learn(const uint8_t *msg, size_t len) { dns_answers(msg, len, remember, NULL); }

size_t policy_names(int family, const uint8_t addr[16], const char **out, size_t max) {
  time_t t = now();
  size_t n = 0;
  for (unsigned k = 1; k <= MAX_RESOLVED && n < max; k++) {
    const struct resolved *e = &g_resolved[(g_next - k) % MAX_RESOLVED];
    if (e->family == family && e->expires > t && memcmp(e->addr, addr, addr_len(family)) == 0) out[n++] = e->name;
  }
  return n;
}

bool policy_inet(const struct sockaddr *sa, socklen_t len, int *family, uint8_t addr[16], unsigned *port) {
  memset(addr, 0, 16);
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
    memcpy(addr, in6->sin6_addr.s6_addr + (*family == AF_INET ? 12 : 0), addr_len(*family));
    return true;
  }
  return false;
}
