// msb-agent: the guest agent. Opens its channel to the host (a unix socket for host-side tests,
// a virtio-serial port under QEMU, vsock under libkrun) and serves the protocol in one epoll loop.
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <poll.h>

#include <linux/vm_sockets.h>

#include "agent.h"

int g_epoll = -1;
bool g_shutdown;
uint64_t g_generation;
bool g_owns_machine;
bool g_keep_channel;
static bool g_running = true;
static struct watch g_listen, g_signals;

microsandbox_agent_BootEvent g_boot[16];
pb_size_t g_boot_count;

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void boot_event(const char *name) {
  if (g_boot_count >= sizeof g_boot / sizeof g_boot[0]) return;
  microsandbox_agent_BootEvent *e = &g_boot[g_boot_count++];
  snprintf(e->name, sizeof e->name, "%s", name);
  e->t_ns = now_ns();
}

// Registers, re-arms or (events == 0) unregisters a watch. Unregistering instead of arming with
// no events matters: epoll reports EPOLLHUP even for an empty mask, which would spin the loop.
void watch_set(struct watch *w, uint32_t events) {
  if (w->fd < 0) return;
  if (events == 0) {
    if (w->registered) epoll_ctl(g_epoll, EPOLL_CTL_DEL, w->fd, NULL);
    w->registered = false;
    w->events = 0;
    return;
  }
  if (w->registered && w->events == events) return;
  struct epoll_event ev = {.events = events, .data.ptr = w};
  epoll_ctl(g_epoll, w->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev);
  w->registered = true;
  w->events = events;
}

void watch_close(struct watch *w) {
  if (w->fd < 0) return;
  watch_set(w, 0);
  close(w->fd);
  w->fd = -1;
}

static void die(const char *what) {
  fprintf(stderr, "msb-agent: %s: %s\n", what, strerror(errno));
  if (getpid() == 1) init_poweroff();  // PID 1 must not exit: the kernel would panic
  exit(1);
}

static void usage(void) {
  fprintf(stderr,
          "usage: msb-agent --listen unix:PATH   serve connections on a unix socket (host-side tests)\n"
          "In a VM the agent takes no arguments: it boots as " BOOT_CONFIG_PATH " says.\n");
  exit(2);
}

static int listen_unix(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    errno = ENAMETOOLONG;
    die(path);
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  unlink(path);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die(path);
  if (listen(fd, 64) < 0) die("listen");
  return fd;
}

// Finds /dev/vportNpM whose /sys/class/virtio-ports/*/name is `name` (no udev in the guest).
static int open_virtio_port(const char *name) {
  glob_t g;
  int fd = -1;
  if (glob("/sys/class/virtio-ports/*/name", 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && fd < 0; i++) {
      char buf[256] = {0};
      FILE *f = fopen(g.gl_pathv[i], "re");
      if (!f) continue;
      if (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\n")] = 0;
        if (strcmp(buf, name) == 0) {
          char dev[300];
          const char *port = g.gl_pathv[i] + strlen("/sys/class/virtio-ports/");
          snprintf(dev, sizeof dev, "/dev/%.*s", (int)strcspn(port, "/"), port);
          fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        }
      }
      fclose(f);
    }
    globfree(&g);
  }
  if (fd < 0 && errno == 0) errno = ENOENT;
  return fd;
}

// Whether a host is on the other end of the port: without one it reads as hung up.
static bool port_has_host(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  return poll(&p, 1, 0) == 1 && !(p.revents & POLLHUP);
}

// Opens the port once the guest driver made it, then waits for the host end to be connected:
// until then a virtio port reads as hung up, which would look like a host that left.
static int open_virtio_port_when_ready(const char *name) {
  int fd = -1;
  for (int waited = 0; (fd = open_virtio_port(name)) < 0; waited += 5) {
    if (waited >= 10000) return -1;
    usleep(5000);
  }
  for (int waited = 0;; waited += 5) {
    if (port_has_host(fd)) return fd;
    if (waited >= 60000) {
      close(fd);
      errno = ENOTCONN;
      return -1;
    }
    usleep(5000);
  }
}

static int connect_vsock(unsigned port) {
  struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

// A VM's channel whose host was lost under linger (an orphan, conn.c) is taken up again once a host
// is back, instead of the VM powering off: the virtio port is polled until a host is on its other
// end; vsock is connected again, without blocking the loop (a connect under way is checked on the
// next turn). An agent on a host has no channel of its own: its orphans wait for a Resume on
// another connection.
#define REATTACH_PORT_MS 50
#define REATTACH_VSOCK_MS 100
static uint64_t g_reattach_at;
static int g_connecting = -1;

// A vsock connection to the host, or -1 while none is made (yet).
static int vsock_reconnect(unsigned port) {
  if (g_connecting >= 0) {
    struct pollfd p = {.fd = g_connecting, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&p, 1, 0) == 0) return -1;  // under way
    int fd = g_connecting;
    g_connecting = -1;
    if (!(p.revents & (POLLHUP | POLLERR)) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) return fd;
    close(fd);
    return -1;
  }
  struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
  if (errno == EINPROGRESS) g_connecting = fd;
  else close(fd);
  return -1;
}

static void reattach_timers(uint64_t now, int64_t *next_ms) {
  if (!g_owns_machine) return;
  for (struct conn *c = g_conns; c; c = c->next) {
    if (!c->orphan) continue;
    if (now >= g_reattach_at) {
      int fd = g_keep_channel ? (port_has_host(c->w.fd) ? c->w.fd : -1) : vsock_reconnect(g_boot_config.channel.vsock_port);
      if (fd >= 0) {
        conn_reattach(c, fd);
        continue;
      }
      g_reattach_at = now + (g_keep_channel ? REATTACH_PORT_MS : REATTACH_VSOCK_MS) * 1000000ull;
    }
    int64_t ms = (int64_t)((g_reattach_at - now + 999999) / 1000000);
    if (*next_ms < 0 || ms < *next_ms) *next_ms = ms;
  }
}

// Held back so that, out of descriptors, a pending connection can still be accepted and shut
// instead of leaving the listener readable forever (a busy loop).
static int g_spare_fd = -1;

static void on_listen(void) {
  for (;;) {
    int fd = accept4(g_listen.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      conn_new(fd);
      continue;
    }
    if ((errno == EMFILE || errno == ENFILE) && g_spare_fd >= 0) {
      close(g_spare_fd);
      fd = accept(g_listen.fd, NULL, NULL);
      if (fd >= 0) close(fd);
      g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      continue;
    }
    return;
  }
}

static void on_signal(void) {
  struct signalfd_siginfo si;
  while (read(g_signals.fd, &si, sizeof si) == sizeof si) {
    if (si.ssi_signo == SIGCHLD) exec_reap();
    else g_running = false;  // SIGTERM / SIGINT
  }
}

static void setup_signals(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);  // a vanished host must not kill the agent; children reset it
  g_signals.fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (g_signals.fd < 0) die("signalfd");
  g_signals.type = W_SIGNAL;
  watch_set(&g_signals, EPOLLIN);
}

int main(int argc, char **argv) {
  boot_event("agent_start");
  bool pid1 = getpid() == 1;
  // A VM's agent boots as its BootConfig says; without one it serves a socket on a host.
  bool vm = boot_config_read();
  const char *listen_at = NULL;
  if (!vm) {
    if (argc != 3 || strcmp(argv[1], "--listen") != 0 || strncmp(argv[2], "unix:", 5) != 0) usage();
    listen_at = argv[2] + 5;
  } else if (argc != 1) {
    usage();
  }
  if (vm && pid1) init_guest();
  else if (vm) init_root_only();
  else if (pid1) die(BOOT_CONFIG_PATH);
  g_owns_machine = vm;
  g_epoll = epoll_create1(EPOLL_CLOEXEC);
  if (g_epoll < 0) die("epoll_create1");
  setup_signals();
  // Orphaned grandchildren are re-parented to the agent and reaped by it, even when it is not
  // PID 1 (host tests, libkrun's own init), so a killed process tree leaves no zombies.
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  g_listen.fd = -1;
  if (vm) {
    bool virtio = g_boot_config.which_channel == microsandbox_agent_BootConfig_virtio_port_tag;
    g_keep_channel = virtio;
    int fd = virtio ? open_virtio_port_when_ready(g_boot_config.channel.virtio_port) : connect_vsock(g_boot_config.channel.vsock_port);
    if (fd < 0) die(virtio ? g_boot_config.channel.virtio_port : "vsock connect");
    boot_event("channel_open");
    conn_new(fd);
  } else {
    g_listen.fd = listen_unix(listen_at);
    g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    g_listen.type = W_LISTEN;
    watch_set(&g_listen, EPOLLIN);
  }

  struct epoll_event evs[64];
  while (g_running) {
    int64_t timeout = -1;
    exec_timers(now_ns(), &timeout);
    watch_timers(now_ns(), &timeout);
    reattach_timers(now_ns(), &timeout);
    int n = epoll_wait(g_epoll, evs, 64, (int)timeout);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      struct watch *w = evs[i].data.ptr;
      if (w->fd < 0) continue;  // closed by an earlier event of this batch
      switch (w->type) {
        case W_LISTEN: on_listen(); break;
        case W_SIGNAL: on_signal(); break;
        case W_CONN: conn_on_event(w->owner, evs[i].events); break;
        case W_INOTIFY: watch_on_event(w); break;
        default: exec_on_pipe(w, evs[i].events); break;
      }
    }
    graveyard_flush();
    // Without a listening socket the agent has nothing left to serve once its channel is gone.
    if ((g_shutdown || g_listen.fd < 0) && g_conns == NULL) g_running = false;
  }
  while (g_conns) conn_close(g_conns);
  if (pid1) {
    // The host shut us down or went away: nothing in the guest outlives the channel.
    kill(-1, SIGKILL);
    init_poweroff();
  }
  if (listen_at) unlink(listen_at);
  return 0;
}
