// Bringing up a VM: as the guest's PID 1 (QEMU boots the agent from the initramfs) mount the
// kernel filesystems, load the modules of a kernel that has them (ours has none), assemble the
// root (the read-only image + a tmpfs upper through overlayfs), switch into it, mount volumes and
// bring up networking; under libkrun's own init, only the root. What to bring up comes from the
// host's BootConfig (proto/agent.proto), read from a file in the first root before anything else.
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <sys/wait.h>
#include <signal.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>

#include "agent.h"

microsandbox_agent_BootConfig g_boot_config;

// Writes to the console (PID 1's stdout); the host keeps it as the console log.
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "msb-agent: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

static void sleep_ms(long ms);

// Volumes are unmounted before the power goes: a filesystem left with a dirty journal could not
// be mounted read-only next time (recovery needs a writable disk). Their users are gone first.
static void unmount_volumes(void) {
  if (!g_boot_config.volumes_count) return;
  kill(-1, SIGKILL);
  for (int waited = 0; waited < 2000; waited += 10) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) break;
    sleep_ms(10);
  }
  for (pb_size_t i = 0; i < g_boot_config.volumes_count; i++) {
    const microsandbox_agent_Volume *v = &g_boot_config.volumes[i];
    if (umount2(v->path, 0) < 0 && errno != EINVAL) say("volume %s: unmount %s: %s", v->serial, v->path, strerror(errno));
  }
}

_Noreturn void init_poweroff(void) {
  sync();
  unmount_volumes();
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();  // reboot() does not return for PID 1; keep the kernel from panicking
}

_Noreturn static void fatal(const char *what) {
  say("fatal: %s: %s", what, strerror(errno));
  init_poweroff();
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

// A string field of the BootConfig: set, and at most `max` bytes.
static bool boot_string(const char *v, size_t max) { return v && *v && strlen(v) <= max; }

bool boot_config_read(void) {
  int fd = open(BOOT_CONFIG_PATH, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    fatal(BOOT_CONFIG_PATH);
  }
  static uint8_t buf[microsandbox_agent_Limit_MAX_BOOT_CONFIG_BYTES + 1];
  size_t len = 0;
  for (ssize_t n; len < sizeof buf && (n = read(fd, buf + len, sizeof buf - len)) != 0; len += (size_t)n)
    if (n < 0) fatal(BOOT_CONFIG_PATH);
  close(fd);
  errno = EINVAL;
  if (len == sizeof buf) fatal(BOOT_CONFIG_PATH " is larger than MAX_BOOT_CONFIG_BYTES");
  pb_istream_t in = pb_istream_from_buffer(buf, len);
  if (!pb_decode(&in, microsandbox_agent_BootConfig_fields, &g_boot_config)) {
    say("%s: %s", BOOT_CONFIG_PATH, PB_GET_ERROR(&in));
    fatal("decoding the boot config");
  }
  const microsandbox_agent_BootConfig *b = &g_boot_config;
  bool ok = (b->which_channel == microsandbox_agent_BootConfig_virtio_port_tag ? boot_string(b->channel.virtio_port, 63)
                                                                               : b->which_channel == microsandbox_agent_BootConfig_vsock_port_tag) &&
            (b->which_image == microsandbox_agent_BootConfig_disk_tag
                 ? boot_string(b->image.disk, 63) && b->image.disk[0] == '/'
                 : b->which_image == microsandbox_agent_BootConfig_virtiofs_tag && boot_string(b->image.virtiofs, 63)) &&
            b->max_processes > 0 && b->volumes_count <= microsandbox_agent_Limit_MAX_VOLUMES;
  // The host allows shorter paths (src/sandbox/volumes.ts); these bounds are the agent's own.
  for (pb_size_t i = 0; ok && i < b->volumes_count; i++)
    ok = boot_string(b->volumes[i].serial, 20) && boot_string(b->volumes[i].path, 255) && b->volumes[i].path[0] == '/';
  if (!ok) fatal("the boot config lacks a channel, an image or a process limit, or has a bad volume");
  return true;
}

// The virtio disk whose serial is `serial` (/sys/block/vdX/serial), as /dev/vdX in `dev`.
static bool find_disk(const char *serial, char *dev, size_t len) {
  DIR *d = opendir("/sys/block");
  if (!d) return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(d));) {
    if (strncmp(e->d_name, "vd", 2) != 0) continue;
    char path[300], got[64] = "";
    snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    got[n > 0 ? n : 0] = 0;
    got[strcspn(got, "\n")] = 0;
    if (strcmp(got, serial) == 0) {
      snprintf(dev, len, "/dev/%s", e->d_name);
      found = true;
    }
  }
  closedir(d);
  return found;
}

// Mounts the volumes (nosuid, nodev) at their paths in the assembled root. One that cannot be
// mounted is said on the console and missing: the host checks /proc/mounts and names it.
static void mount_volumes(void) {
  for (pb_size_t i = 0; i < g_boot_config.volumes_count; i++) {
    const microsandbox_agent_Volume *v = &g_boot_config.volumes[i];
    char dev[300];
    bool found = false;
    for (int waited = 0; !(found = find_disk(v->serial, dev, sizeof dev)) && waited < 5000; waited += 10) sleep_ms(10);
    if (!found) {
      say("volume %s: no disk with that serial", v->serial);
      continue;
    }
    if (mkdir_parents(v->path, 0755) < 0 && errno != EEXIST) say("volume %s: mkdir %s: %s", v->serial, v->path, strerror(errno));
    unsigned long flags = MS_NOSUID | MS_NODEV | (v->read_only ? MS_RDONLY : 0);
    if (mount(dev, v->path, "ext4", flags, NULL) == 0) continue;
    // A read-only disk cannot replay the journal of a VM that died: read it as it was written.
    if (v->read_only && mount(dev, v->path, "ext4", flags, "norecovery") == 0) {
      say("volume %s: its journal needs recovery (its last writer died); mounted without replaying it", v->serial);
      continue;
    }
    say("volume %s: mount %s at %s: %s", v->serial, dev, v->path, strerror(errno));
  }
}

// The agent makes every mount point it mounts on: neither the initramfs nor libkrun's root has them.
static void mount_or_die(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  mkdir_parents(dst, 0755);
  if (mount(src, dst, type, flags, data) < 0) fatal(dst);
}

// Loads the modules listed in `list`, in that order (dependencies first). False when there is no
// list: a kernel with everything built in, like ours.
static bool load_modules(const char *list) {
  FILE *f = fopen(list, "re");
  if (!f) return false;
  char name[256], path[300];
  while (fgets(name, sizeof name, f)) {
    name[strcspn(name, "\n")] = 0;
    if (!*name) continue;
    snprintf(path, sizeof path, "/modules/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fatal(path);
    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST) say("cannot load %s: %s", name, strerror(errno));
    close(fd);
  }
  fclose(f);
  return true;
}

static void wait_for(const char *path, int timeout_ms) {
  if (path[0] != '/') return;  // a virtio-fs tag, not a device node
  for (int waited = 0; access(path, F_OK) < 0; waited += 5) {
    if (waited >= timeout_ms) {
      errno = ENOENT;
      fatal(path);
    }
    sleep_ms(5);
  }
}

// The image disk read-only below, a tmpfs above, overlayfs joining them at /newroot; then the
// kernel filesystems and the tmpfs move along and /newroot becomes / (initramfs cannot be
// pivot_root'ed).
static void assemble_root(void) {
  bool disk = g_boot_config.which_image == microsandbox_agent_BootConfig_disk_tag;
  const char *image = disk ? g_boot_config.image.disk : g_boot_config.image.virtiofs;
  wait_for(image, 10000);
  mount_or_die(image, "/run/lower", disk ? "ext4" : "virtiofs", MS_RDONLY, NULL);
  mount_or_die("rw", "/run/rw", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  mkdir("/run/rw/upper", 0755);
  mkdir("/run/rw/work", 0755);
  mount_or_die("overlay", "/newroot", "overlay", 0, "lowerdir=/run/lower,upperdir=/run/rw/upper,workdir=/run/rw/work");
  boot_event("root_mounted");
  const char *moves[] = {"/dev", "/proc", "/sys"};
  char dst[64];
  for (size_t i = 0; i < 3; i++) {
    snprintf(dst, sizeof dst, "/newroot%s", moves[i]);
    mkdir_parents(dst, 0755);
    if (mount(moves[i], dst, NULL, MS_MOVE, NULL) < 0) fatal(dst);
  }
  // The writable layer stays reachable, for root, at /run/microsandbox/rw: a files-only pause
  // reads the sandbox's changes from its upper directory there.
  mkdir("/newroot/run", 0755);
  mount_or_die("run", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  mkdir("/newroot/run/microsandbox", 0755);
  mkdir("/newroot/run/microsandbox/rw", 0700);
  if (mount("/run/rw", "/newroot/run/microsandbox/rw", NULL, MS_MOVE, NULL) < 0) fatal("/newroot/run/microsandbox/rw");
  if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) fatal("switching to the new root");
  mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
  mount_or_die("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mount_or_die("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

static void if_config(int s, const char *ifname, const char *addr, const char *mask) {
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  if (addr) {
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0) say("%s address: %s", ifname, strerror(errno));
    inet_pton(AF_INET, mask, &sin->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) say("%s netmask: %s", ifname, strerror(errno));
  }
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) say("%s up: %s", ifname, strerror(errno));
  }
}

// Loopback always; with a network, eth0 on QEMU user networking's fixed addresses.
static void setup_network(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return say("socket: %s", strerror(errno));
  if_config(s, "lo", NULL, NULL);
  if (g_boot_config.network) {
    wait_for("/sys/class/net/eth0", 5000);
    if_config(s, "eth0", "10.0.2.15", "255.255.255.0");
    struct rtentry rt = {0};
    struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway, *dst = (struct sockaddr_in *)&rt.rt_dst, *mask = (struct sockaddr_in *)&rt.rt_genmask;
    gw->sin_family = dst->sin_family = mask->sin_family = AF_INET;
    inet_pton(AF_INET, "10.0.2.2", &gw->sin_addr);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = "eth0";
    if (ioctl(s, SIOCADDRT, &rt) < 0) say("default route: %s", strerror(errno));
    int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      static const char conf[] = "nameserver 10.0.2.3\n";
      if (write(fd, conf, sizeof conf - 1) < 0) say("resolv.conf: %s", strerror(errno));
      close(fd);
    }
  }
  close(s);
}

static void mount_if_missing(const char *src, const char *dst, const char *type, unsigned long flags) {
  mkdir_parents(dst, 0755);
  if (mount(src, dst, type, flags, NULL) < 0 && errno != EBUSY) say("mount %s: %s", dst, strerror(errno));
}

// Under libkrun, whose own init is PID 1 and has set up /proc, /sys, /dev and networking (TSI):
// only the root is ours to assemble, from the image shared read-only.
void init_root_only(void) {
  mount_if_missing("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
  mount_if_missing("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
  mount_if_missing("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
  assemble_root();
  if (!cgroup_setup(g_boot_config.max_processes)) say("no per-command cgroups: %s", strerror(errno));
  boot_event("init_done");
}

void init_guest(void) {
  mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  if (load_modules("/modules/order")) {
    if (g_boot_config.network) load_modules("/modules/order.net");
    boot_event("modules_loaded");
  }
  assemble_root();
  mount_volumes();
  if (!cgroup_setup(g_boot_config.max_processes)) say("no per-command cgroups: %s", strerror(errno));
  sethostname("sandbox", 7);
  setup_network();
  boot_event("init_done");
}
