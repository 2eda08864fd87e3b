// Reading the addresses out of a DNS response (dns.c).
#ifndef MSB_DNS_H
#define MSB_DNS_H

#include <stddef.h>
#include <stdint.h>

#define DNS_NAME_MAX 253

// Called for each A or AAAA record of a response's answer section with the question's name
// (lowercase, without the final dot), the family (AF_INET or AF_INET6), the address and its TTL.
typedef void (*dns_found)(void *ctx, const char *qname, int family, const uint8_t *addr, uint32_t ttl);

// The number of addresses found in the response `msg`, or -1 when it is malformed (nothing
// after the malformed part is reported; what came before has been).
int dns_answers(const uint8_t *msg, size_t len, dns_found found, void *ctx);

#endif
