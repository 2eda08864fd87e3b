// The network supervisor: QEMU runs under a seccomp filter that hands its socket calls that name
// a destination (connect, sendto/sendmsg with an address, recvfrom with a source) to msb-vmm as
// user notifications. msb-vmm makes each call itself, on a duplicate of QEMU's socket
// (pidfd_getfd), with its own copy of the address and data read from QEMU's memory, and answers
// with the result: a QEMU the guest took over, making raw syscalls, reaches nothing the policy
// refuses, and cannot change an address between the check and its use. The filter never lets a
// call continue on a decision that read QEMU's memory.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pb_decode.h>

#include "policy.h"
#include "vmm.h"

#if defined(__x86_64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_AARCH64
#else
#error "the network supervisor knows x86_64 and aarch64"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the filter reads the low word of 64-bit arguments first (little-endian)"
#endif

#define MAX_IOV 1024         // the kernel's own UIO_MAXIOV
#define MAX_DATA (1u << 20)  // bytes copied per sendmsg/sendto
#define MAX_REDIRECTED 1024  // open connections through the proxy that a new policy can judge
#define MAX_RECV 65536

// ---------------------------------------------------------------- the filter (QEMU's side)

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HI(i) (offsetof(struct seccomp_data, args) + 8 * (i) + 4)
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
#define JEQ(k, t, f) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f))

int seccomp_install(int *listener, char *why, size_t n) {
  // Offsets are counted by hand: each jump skips to the labelled block below.
  struct sock_filter f[] = {
      /* 0 */ LD(offsetof(struct seccomp_data, arch)),
      /* 1 */ JEQ(AUDIT_ARCH_SELF, 1, 0),
      /* 2 */ RET(SECCOMP_RET_KILL_PROCESS),
      /* 3 */ LD(offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
      // x32 syscalls share the arch value: another way to every call.
      /* 4 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x40000000, 0, 1),
      /* 5 */ RET(SECCOMP_RET_KILL_PROCESS),
#else
      JEQ(0xffffffff, 0, 0),  // keeps the offsets below the same
      RET(SECCOMP_RET_KILL_PROCESS),
#endif
      // setsockopt: no IP options or IPv6 extension headers (a source route would send what the
      // supervisor judged for one address to another first).
      /* 6 */ JEQ(__NR_setsockopt, 35, 0),
      /* 7 */ JEQ(__NR_connect, 8, 0),
      /* 8 */ JEQ(__NR_sendmsg, 7, 0),
      /* 9 */ JEQ(__NR_sendmmsg, 6, 0),
      /* 10 */ JEQ(__NR_sendto, 6, 0),
      /* 11 */ JEQ(__NR_recvfrom, 5, 0),
      // io_uring's own connect and sendmsg are not system calls the filter sees.
      /* 12 */ JEQ(__NR_io_uring_setup, 10, 0),
      /* 13 */ JEQ(__NR_socket, 10, 0),
      /* 14 */ JEQ(__NR_socketpair, 9, 0),
      /* 15 */ RET(SECCOMP_RET_ALLOW),
      /* 16 */ RET(SECCOMP_RET_USER_NOTIF),
      // sendto's dest_addr and recvfrom's src_addr (arg 4): notified only when not NULL.
      /* 17 */ LD(ARG_LO(4)),
      /* 18 */ JEQ(0, 0, 2),
      /* 19 */ LD(ARG_HI(4)),
      /* 20 */ JEQ(0, 1, 0),
      /* 21 */ RET(SECCOMP_RET_USER_NOTIF),
      /* 22 */ RET(SECCOMP_RET_ALLOW),
      /* 23 */ RET(SECCOMP_RET_ERRNO | ENOSYS),
      // socket and socketpair: unix and internet only (no packet, netlink, vsock... sockets), and
      // for internet ones stream or datagram sockets of TCP, UDP or ICMP (no raw sockets, no
      // SCTP, whose setsockopt connects).
      /* 24 */ LD(ARG_LO(0)),
      /* 25 */ JEQ(AF_UNIX, 10, 0),
      /* 26 */ JEQ(AF_INET, 1, 0),
      /* 27 */ JEQ(AF_INET6, 0, 9),
      /* 28 */ LD(ARG_LO(1)),
      /* 29 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf),  // the type without SOCK_NONBLOCK, SOCK_CLOEXEC
      /* 30 */ JEQ(SOCK_STREAM, 1, 0),
      /* 31 */ JEQ(SOCK_DGRAM, 0, 9),
      /* 32 */ LD(ARG_LO(2)),
      /* 33 */ JEQ(0, 2, 0),
      /* 34 */ JEQ(IPPROTO_TCP, 1, 0),
      /* 35 */ JEQ(IPPROTO_UDP, 0, 2),
      /* 36 */ RET(SECCOMP_RET_ALLOW),
      /* 37 */ RET(SECCOMP_RET_ERRNO | EAFNOSUPPORT),
      /* 38 */ JEQ(IPPROTO_ICMP, 1, 0),
      /* 39 */ JEQ(IPPROTO_ICMPV6, 0, 1),
      /* 40 */ RET(SECCOMP_RET_ALLOW),
      /* 41 */ RET(SECCOMP_RET_ERRNO | EPROTONOSUPPORT),
      // setsockopt (level, optname): IP_OPTIONS and IPv6's extension headers refused.
      /* 42 */ LD(ARG_LO(1)),
      /* 43 */ JEQ(IPPROTO_IP, 0, 3),
      /* 44 */ LD(ARG_LO(2)),
      /* 45 */ JEQ(IP_OPTIONS, 12, 0),
      /* 46 */ RET(SECCOMP_RET_ALLOW),
      /* 47 */ JEQ(IPPROTO_IPV6, 0, 9),
      /* 48 */ LD(ARG_LO(2)),
      /* 49 */ JEQ(IPV6_RTHDR, 8, 0),
      /* 50 */ JEQ(IPV6_HOPOPTS, 7, 0),
      /* 51 */ JEQ(IPV6_DSTOPTS, 6, 0),
      /* 52 */ JEQ(IPV6_RTHDRDSTOPTS, 5, 0),
      /* 53 */ JEQ(IPV6_2292HOPOPTS, 4, 0),
      /* 54 */ JEQ(IPV6_2292DSTOPTS, 3, 0),
      /* 55 */ JEQ(IPV6_2292RTHDR, 2, 0),
      /* 56 */ JEQ(IPV6_2292PKTOPTIONS, 1, 0),
      /* 57 */ RET(SECCOMP_RET_ALLOW),
      /* 58 */ RET(SECCOMP_RET_ERRNO | EPERM),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof *f, .filter = f};
  int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0) {
    snprintf(why, n, "seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER): %s", strerror(errno));
    return errno;
  }
  *listener = fd;
  return 0;
}

// ---------------------------------------------------------------- the supervisor (msb-vmm's side)

static struct {
  pid_t qemu;
  int pidfd, listener, control;
  bool reading;  // the host may still send commands
  // --control-listen: a host connecting here takes the control channel over (-1: none).
  int accepting;
  policy *policy;
  char rundir[PATH_MAX];
  unsigned proxy;  // 0: none
  // Reused for every call: QEMU's agent channel writes through sendmsg.
  uint8_t *data;
  struct iovec iov[MAX_IOV];
  uint8_t *in;  // control channel input
  size_t in_len;
  // Where the connections handed to the proxy were going, by their local port: a new policy is
  // judged against that, not against the proxy's address. A ring; a reused port overwrites.
  struct {
    unsigned lport, port;
    int family;
    uint8_t addr[16];
  } redirected[MAX_REDIRECTED];
  unsigned next_redirected;
} S;

static volatile sig_atomic_t g_qemu_pid;

static void forward(int sig) {
  if (g_qemu_pid > 0) kill((pid_t)g_qemu_pid, sig);
}

static void event(microsandbox_vmm_VmmEvent *e) {
  // The host going away changes nothing: the VM keeps its last policy. With no host connected
  // (--control-listen), what happens meanwhile is not kept for the next one.
  if (S.control >= 0) vmm_write_frame(S.control, microsandbox_vmm_VmmEvent_fields, e);
}

static void text_of(int family, const uint8_t *addr, char *out, size_t n) {
  if (!inet_ntop(family, addr, out, (socklen_t)n)) snprintf(out, n, "?");
}

static void refusal(const char *address, unsigned port, const char *protocol, const char *rule) {
  microsandbox_vmm_VmmEvent e = microsandbox_vmm_VmmEvent_init_zero;
  e.which_event = microsandbox_vmm_VmmEvent_refusal_tag;
  microsandbox_vmm_Refusal *r = &e.event.refusal;
  snprintf(r->address, sizeof r->address, "%s", address);
  r->port = port;
  snprintf(r->protocol, sizeof r->protocol, "%s", protocol);
  snprintf(r->rule, sizeof r->rule, "%s", rule);
  event(&e);
}

// Reads n bytes at QEMU's address `remote` into `local`. 0 or an errno.
static int peek(pid_t pid, void *local, uint64_t remote, size_t n) {
  if (n == 0) return 0;
  struct iovec l = {local, n}, r = {(void *)(uintptr_t)remote, n};
  ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
  return got == (ssize_t)n ? 0 : EFAULT;
}

static int poke(pid_t pid, uint64_t remote, const void *local, size_t n) {
  if (n == 0) return 0;
  struct iovec l = {(void *)local, n}, r = {(void *)(uintptr_t)remote, n};
  ssize_t put = process_vm_writev(pid, &l, 1, &r, 1, 0);
  return put == (ssize_t)n ? 0 : EFAULT;
}

static bool still_waiting(uint64_t id) { return ioctl(S.listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0; }

static int sock_int(int fd, int level, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  return getsockopt(fd, level, opt, &v, &len) == 0 ? v : -1;
}

// A unix address QEMU may use: a file directly in the jail's runtime dir that is a socket, reached
// through a descriptor of it (no link QEMU places there leads elsewhere: it owns that directory).
// The address to use instead, in `out`, and its descriptor in *held (to close), or an errno.
static int unix_target(const struct sockaddr_un *sun, socklen_t len, struct sockaddr_un *out, socklen_t *out_len, int *held) {
  *held = -1;
  size_t path_len = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
  if (path_len == 0 || sun->sun_path[0] == 0 || !S.rundir[0]) return EACCES;  // unnamed or abstract
  char path[sizeof sun->sun_path + 1];
  memcpy(path, sun->sun_path, path_len < sizeof sun->sun_path ? path_len : sizeof sun->sun_path);
  path[path_len < sizeof sun->sun_path ? path_len : sizeof sun->sun_path] = 0;
  size_t dl = strlen(S.rundir);
  const char *name = path + dl + 1;
  if (strncmp(path, S.rundir, dl) != 0 || path[dl] != '/' || !*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return EACCES;
  int dir = open(S.rundir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return EACCES;
  int fd = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;
  close(dir);
  if (err) return err == ELOOP ? EACCES : err;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
    close(fd);
    return S_ISSOCK(st.st_mode) ? EACCES : ECONNREFUSED;
  }
  memset(out, 0, sizeof *out);
  out->sun_family = AF_UNIX;
  snprintf(out->sun_path, sizeof out->sun_path, "/proc/self/fd/%d", fd);
  *out_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(out->sun_path) + 1);
  *held = fd;
  return 0;
}

static void unix_refusal(const struct sockaddr_un *sun, socklen_t len) {
  char shown[48] = "@";
  size_t off = offsetof(struct sockaddr_un, sun_path);
  if (len > off && sun->sun_path[0]) snprintf(shown, sizeof shown, "%.*s", (int)(len - off), sun->sun_path);
  refusal(shown, 0, "unix", "");
}

static const char *protocol_of(int type) { return type == SOCK_STREAM ? "tcp" : "udp"; }

// Connects `fd` (QEMU's socket of `family`) to the egress proxy and writes the Redirect event
// before QEMU learns of it. The connect's result: 0 or -errno.
static long redirect(int fd, int family, const char *address, unsigned port, int kind, const char *rule, int afam, const uint8_t *addr) {
  struct sockaddr_storage ss = {0};
  socklen_t len;
  if (family == AF_INET6) {
    struct sockaddr_in6 *in6 = (void *)&ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)S.proxy);
    in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
    in6->sin6_addr.s6_addr[12] = 127, in6->sin6_addr.s6_addr[15] = 1;
    len = sizeof *in6;
  } else {
    struct sockaddr_in *in = (void *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)S.proxy);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *in;
  }
  long rc = connect(fd, (void *)&ss, len) == 0 ? 0 : -errno;
  if (rc != 0 && rc != -EINPROGRESS) return rc;
  microsandbox_vmm_VmmEvent e = microsandbox_vmm_VmmEvent_init_zero;
  e.which_event = microsandbox_vmm_VmmEvent_redirect_tag;
  microsandbox_vmm_Redirect *r = &e.event.redirect;
  struct sockaddr_storage local;
  socklen_t ll = sizeof local;
  if (getsockname(fd, (void *)&local, &ll) == 0)
    r->local_port = ntohs(local.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&local)->sin6_port : ((struct sockaddr_in *)&local)->sin_port);
  if (kind != microsandbox_vmm_Redirect_Kind_REFUSED && r->local_port) {
    unsigned at = S.next_redirected++ % MAX_REDIRECTED;
    S.redirected[at].lport = r->local_port, S.redirected[at].port = port, S.redirected[at].family = afam;
    memcpy(S.redirected[at].addr, addr, sizeof S.redirected[at].addr);
  }
  snprintf(r->address, sizeof r->address, "%s", address);
  r->port = port;
  r->kind = (microsandbox_vmm_Redirect_Kind)kind;
  snprintf(r->rule, sizeof r->rule, "%s", rule);
  const char *names[POLICY_MAX_NAMES];
  r->names_count = (pb_size_t)policy_names(afam, addr, names, POLICY_MAX_NAMES);
  for (pb_size_t i = 0; i < r->names_count; i++) snprintf(r->names[i], sizeof r->names[i], "%s", names[i]);
  event(&e);
  return rc;
}

// connect(2) on QEMU's behalf. The answer: 0, or -errno.
static long do_connect(int fd, const struct seccomp_notif *req) {
  struct sockaddr_storage ss;
  uint64_t len = req->data.args[2];
  if (len > sizeof ss) return -EINVAL;
  memset(&ss, 0, sizeof ss);
  if (len < sizeof(sa_family_t)) return -EINVAL;
  if (peek((pid_t)req->pid, &ss, req->data.args[1], len)) return -EFAULT;
  if (!still_waiting(req->id)) return -ENOENT;
  socklen_t sl = (socklen_t)len;
  if (ss.ss_family == AF_UNIX) {
    struct sockaddr_un via;
    socklen_t via_len;
    int held, err = unix_target((void *)&ss, sl, &via, &via_len, &held);
    if (err) {
      if (err == EACCES) unix_refusal((void *)&ss, sl);
      return -err;
    }
    long rc = connect(fd, (void *)&via, via_len) == 0 ? 0 : -errno;
    close(held);
    return rc;
  }
  if (ss.ss_family == AF_UNSPEC) return connect(fd, (void *)&ss, sl) == 0 ? 0 : -errno;
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return -EAFNOSUPPORT;
  int family;
  uint8_t addr[16];
  unsigned port;
  if (!policy_inet((void *)&ss, sl, &family, addr, &port)) return -EINVAL;
  int type = sock_int(fd, SOL_SOCKET, SO_TYPE), domain = sock_int(fd, SOL_SOCKET, SO_DOMAIN);
  bool stream = type == SOCK_STREAM;
  char text[INET6_ADDRSTRLEN];
  text_of(family, addr, text, sizeof text);
  verdict v = policy_judge(S.policy, family, addr, port);
  bool tunnel = policy_tunnel(S.policy);
  bool web = port == 80 || port == 443;
  if (v.admit && !stream && tunnel && !policy_dns_server(S.policy, family, addr, port)) v.admit = false, v.rule = "!tunnel";
  if (!v.admit) {
    refusal(text, port, protocol_of(type), v.rule);
    // A readable refusal where the proxy can give one: plain HTTP, and HTTPS once it has a CA.
    if (stream && (port == 80 || (port == 443 && policy_https(S.policy))) && S.proxy)
      return redirect(fd, domain, text, port, microsandbox_vmm_Redirect_Kind_REFUSED, v.rule, family, addr);
    return -ECONNREFUSED;
  }
  if (stream && tunnel) {
    if (!S.proxy) {
      refusal(text, port, "tcp", "!tunnel");  // nowhere to tunnel to
      return -ECONNREFUSED;
    }
    return redirect(fd, domain, text, port, microsandbox_vmm_Redirect_Kind_TUNNEL, "", family, addr);
  }
  if (stream && web && v.intercept && S.proxy) return redirect(fd, domain, text, port, microsandbox_vmm_Redirect_Kind_INTERCEPT, "", family, addr);
  return connect(fd, (void *)&ss, sl) == 0 ? 0 : -errno;
}

// Judges a datagram's (or fast-open's) destination `ss`; replaces a unix one by the address to
// use. 0 or -errno; *held a descriptor to close.
static long judge_destination(int fd, struct sockaddr_storage *ss, socklen_t *sl, int *held) {
  *held = -1;
  if (ss->ss_family == AF_UNIX) {
    struct sockaddr_un via;
    int err = unix_target((void *)ss, *sl, &via, sl, held);
    if (err) {
      if (err == EACCES) unix_refusal((void *)ss, *sl);
      return -err;
    }
    memcpy(ss, &via, sizeof via);
    return 0;
  }
  // Any other family on an internet socket is not safe to pass on: the kernel reads an AF_UNSPEC
  // destination of a UDP socket as IPv4. QEMU names its destinations properly.
  if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) return -EAFNOSUPPORT;
  int family;
  uint8_t addr[16];
  unsigned port;
  if (!policy_inet((void *)ss, *sl, &family, addr, &port)) return -EINVAL;
  int type = sock_int(fd, SOL_SOCKET, SO_TYPE);
  verdict v = policy_judge(S.policy, family, addr, port);
  if (v.admit && policy_tunnel(S.policy) && !policy_dns_server(S.policy, family, addr, port)) v.admit = false, v.rule = "!tunnel";
  if (v.admit) return 0;
  char text[INET6_ADDRSTRLEN];
  text_of(family, addr, text, sizeof text);
  refusal(text, port, protocol_of(type), v.rule);
  // A refused datagram: "permission denied", as a local firewall's refusal reads.
  return type == SOCK_STREAM ? -ECONNREFUSED : -EACCES;
}

// The bytes of QEMU's `niov` iovecs into S.data, at most MAX_DATA (a stream socket sends what
// fits; a datagram over it is EMSGSIZE). The count, or -errno.
static long gather(pid_t pid, const struct iovec *remote, size_t niov, bool stream) {
  size_t total = 0;
  for (size_t i = 0; i < niov; i++) {
    if (remote[i].iov_len > MAX_DATA - total) {
      if (!stream) return -EMSGSIZE;
      S.iov[i].iov_len = MAX_DATA - total;
      S.iov[i].iov_base = remote[i].iov_base;
      total = MAX_DATA;
      niov = i + 1;
      break;
    }
    S.iov[i] = remote[i];
    total += remote[i].iov_len;
  }
  if (total == 0) return 0;
  struct iovec local = {S.data, total};
  // process_vm_readv takes at most IOV_MAX remote iovecs: MAX_IOV is that.
  ssize_t got = process_vm_readv(pid, &local, 1, S.iov, niov, 0);
  return got == (ssize_t)total ? (long)total : -EFAULT;
}

static long do_sendto(int fd, const struct seccomp_notif *req, long *count) {
  int flags = (int)req->data.args[3];
  if (flags & MSG_FASTOPEN) return -EOPNOTSUPP;  // a connect the supervisor would not see as one
  struct sockaddr_storage ss = {0};
  uint64_t alen = req->data.args[5];
  if (alen > sizeof ss || alen < sizeof(sa_family_t)) return -EINVAL;
  if (peek((pid_t)req->pid, &ss, req->data.args[4], alen)) return -EFAULT;
  bool stream = sock_int(fd, SOL_SOCKET, SO_TYPE) == SOCK_STREAM;
  struct iovec remote = {(void *)(uintptr_t)req->data.args[1], (size_t)req->data.args[2]};
  long n = gather((pid_t)req->pid, &remote, 1, stream);
  if (n < 0) return n;
  if (!still_waiting(req->id)) return -ENOENT;
  socklen_t sl = (socklen_t)alen;
  int held;
  long rc = judge_destination(fd, &ss, &sl, &held);
  if (rc == 0) {
    *count = sendto(fd, S.data, (size_t)n, flags | MSG_DONTWAIT | MSG_NOSIGNAL, (void *)&ss, sl);
    if (*count < 0) rc = -errno;
  }
  if (held >= 0) close(held);
  return rc;
}

static long do_sendmsg(int fd, const struct seccomp_notif *req, long *count) {
  pid_t pid = (pid_t)req->pid;
  int flags = (int)req->data.args[2];
  if (flags & MSG_FASTOPEN) return -EOPNOTSUPP;
  struct msghdr m;
  if (peek(pid, &m, req->data.args[1], sizeof m)) return -EFAULT;
  if (m.msg_iovlen > MAX_IOV) return -EMSGSIZE;
  struct iovec remote[MAX_IOV];
  if (peek(pid, remote, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen * sizeof *remote)) return -EFAULT;
  struct sockaddr_storage ss;
  socklen_t sl = 0;
  if (m.msg_name && m.msg_namelen) {
    if (m.msg_namelen > sizeof ss || m.msg_namelen < sizeof(sa_family_t)) return -EINVAL;
    memset(&ss, 0, sizeof ss);
    if (peek(pid, &ss, (uint64_t)(uintptr_t)m.msg_name, m.msg_namelen)) return -EFAULT;
    sl = m.msg_namelen;
  }
  // No control data at all: sent by the supervisor, descriptors and credentials would be its own
  // (root's), and IP options it may set (a source route) QEMU may not. QEMU's sends carry none.
  if (m.msg_control && m.msg_controllen) return -EPERM;
  bool stream = sock_int(fd, SOL_SOCKET, SO_TYPE) == SOCK_STREAM;
  long n = gather(pid, remote, m.msg_iovlen, stream);
  if (n < 0) return n;
  if (!still_waiting(req->id)) return -ENOENT;
  int held = -1;
  if (sl) {
    long rc = judge_destination(fd, &ss, &sl, &held);
    if (rc) return rc;
  }
  struct iovec one = {S.data, (size_t)n};
  struct msghdr mine = {.msg_name = sl ? &ss : NULL, .msg_namelen = sl, .msg_iov = &one, .msg_iovlen = 1, .msg_control = NULL, .msg_controllen = 0};
  ssize_t sent = sendmsg(fd, &mine, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
  long rc = sent >= 0 ? 0 : -errno;
  if (held >= 0) close(held);
  *count = sent;
  return rc;
}

static long do_recvfrom(int fd, const struct seccomp_notif *req, long *count) {
  pid_t pid = (pid_t)req->pid;
  int flags = (int)req->data.args[3];
  socklen_t their_len = 0;
  if (req->data.args[5] && peek(pid, &their_len, req->data.args[5], sizeof their_len)) return -EFAULT;
  if (!still_waiting(req->id)) return -ENOENT;
  size_t want = req->data.args[2] < MAX_RECV ? (size_t)req->data.args[2] : MAX_RECV;
  struct sockaddr_storage ss = {0};
  socklen_t sl = sizeof ss;
  // Never wait here: one QEMU thread's blocking receive would stall every other call.
  ssize_t got = recvfrom(fd, S.data, want, flags | MSG_DONTWAIT, (void *)&ss, &sl);
  if (got < 0) return -errno;
  size_t copied = (size_t)got < want ? (size_t)got : want;
  if (poke(pid, req->data.args[1], S.data, copied)) return -EFAULT;
  if (req->data.args[5]) {
    if (poke(pid, req->data.args[4], &ss, sl < their_len ? sl : their_len) || poke(pid, req->data.args[5], &sl, sizeof sl)) return -EFAULT;
  }
  int family;
  uint8_t addr[16];
  unsigned port;
  // Only answers the supervisor itself received teach the domain rules.
  if (!(flags & MSG_PEEK) && got > 0 && policy_inet((void *)&ss, sl, &family, addr, &port) && policy_dns_server(S.policy, family, addr, port))
    policy_learn(S.data, copied);
  *count = got;
  return 0;
}

static void answer(uint64_t id, long rc, long count) {
  struct seccomp_notif_resp resp = {.id = id, .val = rc < 0 ? -1 : count, .error = rc < 0 ? (int)rc : 0, .flags = 0};
  // ENOENT: QEMU's thread is gone (killed while waiting); nothing to answer.
  ioctl(S.listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static void notified(void) {
  struct seccomp_notif req;
  memset(&req, 0, sizeof req);
  if (ioctl(S.listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) return;
  int nr = req.data.nr;
  if (nr == __NR_sendmmsg) return answer(req.id, -ENOSYS, 0);  // QEMU's network never batches
  int fd = (int)syscall(SYS_pidfd_getfd, S.pidfd, (int)req.data.args[0], 0);
  if (fd < 0) return answer(req.id, errno == EBADF ? -EBADF : -ENOTSOCK, 0);
  long rc, count = 0;
  switch (nr) {
    case __NR_connect: rc = do_connect(fd, &req); break;
    case __NR_sendto: rc = do_sendto(fd, &req, &count); break;
    case __NR_sendmsg: rc = do_sendmsg(fd, &req, &count); break;
    case __NR_recvfrom: rc = do_recvfrom(fd, &req, &count); break;
    default: rc = -ENOSYS;
  }
  close(fd);
  answer(req.id, rc, count);
}

// Where the connection handed to the proxy from local port `lport` was going; false if unknown.
static bool redirected_to(unsigned lport, int *family, uint8_t *addr, unsigned *port) {
  for (unsigned n = 0; n < MAX_REDIRECTED; n++) {  // newest first: a reused port's last use counts
    unsigned i = (S.next_redirected - 1 - n) % MAX_REDIRECTED;
    if (S.redirected[i].lport != lport) continue;
    *family = S.redirected[i].family, *port = S.redirected[i].port;
    memcpy(addr, S.redirected[i].addr, sizeof S.redirected[i].addr);
    return true;
  }
  return false;
}

// Shuts down QEMU's open TCP connections whose peer the policy in force refuses: the number.
// Accepted ones (a published port's) are inbound, and stay.
static unsigned close_refused(void) {
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)S.qemu);
  unsigned closed = 0;
  enum { MAX_LISTEN = 64 };
  unsigned listening[MAX_LISTEN], nlisten = 0;
  for (int pass = 0; pass < 2; pass++) {
    DIR *d = opendir(dir);
    if (!d) return closed;
    for (struct dirent *e; (e = readdir(d));) {
      if (e->d_name[0] == '.') continue;
      int fd = (int)syscall(SYS_pidfd_getfd, S.pidfd, atoi(e->d_name), 0);
      if (fd < 0) continue;
      struct stat st;
      struct sockaddr_storage local, peer;
      socklen_t ll = sizeof local, pl = sizeof peer;
      int family, lf;
      uint8_t addr[16], la[16];
      unsigned port, lport;
      bool inet = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && sock_int(fd, SOL_SOCKET, SO_TYPE) == SOCK_STREAM &&
                  getsockname(fd, (void *)&local, &ll) == 0 && policy_inet((void *)&local, ll, &lf, la, &lport);
      if (inet && pass == 0 && sock_int(fd, SOL_SOCKET, SO_ACCEPTCONN) == 1 && nlisten < MAX_LISTEN) listening[nlisten++] = lport;
      if (inet && pass == 1 && getpeername(fd, (void *)&peer, &pl) == 0 && policy_inet((void *)&peer, pl, &family, addr, &port)) {
        bool inbound = false;
        for (unsigned i = 0; i < nlisten; i++) inbound |= listening[i] == lport;
        bool proxy = S.proxy && family == AF_INET && port == S.proxy && addr[0] == 127 && addr[1] == 0 && addr[2] == 0 && addr[3] == 1;
        // One handed to the proxy is judged by where it was going (a refusal's 403 is not listed).
        bool judged = !inbound && (!proxy || redirected_to(lport, &family, addr, &port));
        if (judged && !policy_judge(S.policy, family, addr, port).admit && shutdown(fd, SHUT_RDWR) == 0) closed++;
      }
      close(fd);
    }
    closedir(d);
  }
  return closed;
}

static void set_policy(const microsandbox_vmm_SetPolicy *sp) {
  microsandbox_vmm_VmmEvent e = microsandbox_vmm_VmmEvent_init_zero;
  e.which_event = microsandbox_vmm_VmmEvent_policy_applied_tag;
  microsandbox_vmm_PolicyApplied *a = &e.event.policy_applied;
  a->generation = sp->generation;
  policy *p = policy_parse(sp->rules ? sp->rules : "", a->error, sizeof a->error);
  if (p) {
    policy_free(S.policy);
    S.policy = p;
    a->closed = close_refused();
  }
  event(&e);
}

// Reads what the host sent; handles each whole frame. false at end-of-file or on a bad frame
// (the channel is then ignored: the VM keeps its policy).
static bool control_readable(void) {
  if (S.in_len == 4 + VMM_FRAME_MAX) return false;
  ssize_t n = read(S.control, S.in + S.in_len, 4 + VMM_FRAME_MAX - S.in_len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;
  S.in_len += (size_t)n;
  while (S.in_len >= 4) {
    size_t len = (size_t)S.in[0] << 24 | (size_t)S.in[1] << 16 | (size_t)S.in[2] << 8 | S.in[3];
    if (len > VMM_FRAME_MAX) return false;
    if (S.in_len < 4 + len) break;
    microsandbox_vmm_VmmCommand cmd = microsandbox_vmm_VmmCommand_init_zero;
    pb_istream_t is = pb_istream_from_buffer(S.in + 4, len);
    bool ok = pb_decode(&is, microsandbox_vmm_VmmCommand_fields, &cmd);
    if (ok && cmd.which_command == microsandbox_vmm_VmmCommand_set_policy_tag) set_policy(&cmd.command.set_policy);
    pb_release(microsandbox_vmm_VmmCommand_fields, &cmd);
    if (!ok) return false;
    memmove(S.in, S.in + 4 + len, S.in_len - 4 - len);
    S.in_len -= 4 + len;
  }
  return true;
}

// A host connected to the control socket: it replaces the channel there was (one host at a time;
// the kernel's backlog of one holds the next).
static void control_accepted(void) {
  int fd = accept4(S.accepting, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) return;
  if (S.control >= 0) close(S.control);
  S.control = fd;
  S.in_len = 0;
  S.reading = true;
}

// The host's end of the channel closed, or it sent a bad frame: commands are no longer read. A
// channel that a later host may replace is closed now, and events are dropped until then.
static void control_ended(void) {
  S.reading = false;
  if (S.accepting < 0) return;
  close(S.control);
  S.control = -1;
}

// QEMU's exit status as ours: its code, or its signal raised on ourselves.
static int exit_like(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    return 128 + sig;  // a signal whose default is to ignore
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int supervise(pid_t qemu, int pidfd, int listener, int control, int accepting, const char *accept_path, policy *p, const char *rundir, unsigned proxy) {
  S.qemu = qemu, S.pidfd = pidfd, S.listener = listener, S.control = control, S.policy = p, S.proxy = proxy, S.reading = control >= 0;
  S.accepting = accepting;
  snprintf(S.rundir, sizeof S.rundir, "%s", rundir ? rundir : "");
  // The runtime dir as QEMU names it: without a trailing slash.
  for (size_t l = strlen(S.rundir); l > 1 && S.rundir[l - 1] == '/'; l--) S.rundir[l - 1] = 0;
  S.data = malloc(MAX_DATA);
  bool commands = control >= 0 || accepting >= 0;
  S.in = commands ? malloc(4 + VMM_FRAME_MAX) : NULL;
  if (!S.data || (commands && !S.in)) {
    fprintf(stderr, "msb-vmm: out of memory for the network supervisor\n");
    kill(qemu, SIGKILL);
  }
  g_qemu_pid = qemu;
  // Not Linux 6.6's synchronous wake-up (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP): it does apply to
  // this poll() loop, but its answer wakes QEMU's thread on the supervisor's CPU, where the
  // connect has just woken the peer (a local listener) too; QEMU then waits out the peer's run
  // while the other CPU idles (perf sched). The scheduler's own choice was faster.
  struct sigaction fwd = {.sa_handler = forward}, ign = {.sa_handler = SIG_IGN};
  sigaction(SIGTERM, &fwd, NULL);
  sigaction(SIGINT, &fwd, NULL);
  sigaction(SIGHUP, &fwd, NULL);
  sigaction(SIGPIPE, &ign, NULL);  // a send on a closed socket is EPIPE for QEMU, not our death
  for (;;) {
    struct pollfd fds[4] = {{pidfd, POLLIN, 0}, {S.listener, POLLIN, 0}, {S.reading ? S.control : -1, POLLIN, 0}, {S.accepting, POLLIN, 0}};
    if (poll(fds, 4, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) break;
    if (fds[1].revents & POLLIN) notified();
    else if (fds[1].revents) S.listener = -1;  // the filter has no more users
    if (fds[2].revents && !control_readable()) control_ended();
    if (fds[3].revents) control_accepted();
  }
  if (accepting >= 0) unlink(accept_path);  // the VM is gone: nothing to connect to
  int status;
  while (waitpid(qemu, &status, 0) < 0)
    if (errno != EINTR) return 1;
  return exit_like(status);
}
