// msb-openfd.so: preloaded into QEMU (LD_PRELOAD, set by msb-vmm) when msb-vmm opened some of its
// files before the jail. QEMU opens guest RAM's file by path, and asks for it read-write even when
// it maps it privately (a clone of a snapshot template): here such an open returns a duplicate of
// msb-vmm's descriptor instead, so the file needs no place in the jail, and a template opened
// read-only stays read-only to a QEMU the guest took over (a private mapping of a read-only
// descriptor is writable in memory, never on disk).
//
// MSB_OPEN_FDS holds lines of "FD PATH"; an open of exactly PATH gets a duplicate of FD, with
// O_CLOEXEC as asked. Every other open goes to the C library unchanged.
// This file defines open() and open64() itself: neither may be redirected to the other.
#undef _FORTIFY_SOURCE
#undef _FILE_OFFSET_BITS
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILES 16

static struct {
  int fd;
  const char *path;
} g_files[MAX_FILES];
static int g_nfiles;

__attribute__((constructor)) static void load(void) {
  const char *env = getenv("MSB_OPEN_FDS");
  static char buf[8192];
  if (!env || strlen(env) >= sizeof buf) return;
  strcpy(buf, env);
  for (char *line = strtok(buf, "\n"); line && g_nfiles < MAX_FILES; line = strtok(NULL, "\n")) {
    char *end;
    long fd = strtol(line, &end, 10);
    if (end == line || *end != ' ' || fd < 0 || end[1] != '/') continue;
    g_files[g_nfiles].fd = (int)fd;
    g_files[g_nfiles++].path = end + 1;
  }
}

// The duplicate for `path`, or -2 when it is not one of ours (or is relative to a directory).
static int ours(int dirfd, const char *path, int flags) {
  if (!path || (path[0] != '/' && dirfd != AT_FDCWD)) return -2;
  for (int i = 0; i < g_nfiles; i++)
    if (strcmp(path, g_files[i].path) == 0) return fcntl(g_files[i].fd, flags & O_CLOEXEC ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
  return -2;
}

// The mode argument exists only with O_CREAT or O_TMPFILE.
#define MODE(flags)                      \
  mode_t mode = 0;                       \
  if ((flags) & (O_CREAT | O_TMPFILE)) { \
    va_list ap;                          \
    va_start(ap, flags);                 \
    mode = va_arg(ap, mode_t);           \
    va_end(ap);                          \
  }

#define WRAP_OPEN(name)                                                         \
  int name(const char *path, int flags, ...) {                                  \
    MODE(flags);                                                                \
    int fd = ours(AT_FDCWD, path, flags);                                       \
    if (fd != -2) return fd;                                                    \
    static int (*real)(const char *, int, ...);                                 \
    if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name); \
    return real(path, flags, mode);                                             \
  }
#define WRAP_OPENAT(name)                                                            \
  int name(int dirfd, const char *path, int flags, ...) {                            \
    MODE(flags);                                                                     \
    int fd = ours(dirfd, path, flags);                                               \
    if (fd != -2) return fd;                                                         \
    static int (*real)(int, const char *, int, ...);                                 \
    if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #name); \
    return real(dirfd, path, flags, mode);                                           \
  }
// The fortified forms (_FORTIFY_SOURCE) a caller with non-constant flags reaches.
#define WRAP_OPEN2(name)                                                   \
  int name(const char *path, int flags) {                                  \
    int fd = ours(AT_FDCWD, path, flags);                                  \
    if (fd != -2) return fd;                                               \
    static int (*real)(const char *, int);                                 \
    if (!real) real = (int (*)(const char *, int))dlsym(RTLD_NEXT, #name); \
    return real(path, flags);                                              \
  }
#define WRAP_OPENAT2(name)                                                      \
  int name(int dirfd, const char *path, int flags) {                            \
    int fd = ours(dirfd, path, flags);                                          \
    if (fd != -2) return fd;                                                    \
    static int (*real)(int, const char *, int);                                 \
    if (!real) real = (int (*)(int, const char *, int))dlsym(RTLD_NEXT, #name); \
    return real(dirfd, path, flags);                                            \
  }

WRAP_OPEN(open)
WRAP_OPEN(open64)
WRAP_OPENAT(openat)
WRAP_OPENAT(openat64)
WRAP_OPEN2(__open_2)
WRAP_OPEN2(__open64_2)
WRAP_OPENAT2(__openat_2)
WRAP_OPENAT2(__openat64_2)
