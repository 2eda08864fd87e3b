// Small helpers: mkdir -p.
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "agent.h"

int mkdir_parents(const char *path, mode_t mode) {
  char buf[PATH_MAX];
  size_t len = strlen(path);
  if (len >= sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(buf, path, len + 1);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != 0) continue;
    char saved = *p;
    *p = 0;
    struct stat st;
    if (mkdir(buf, mode) < 0 && (errno != EEXIST || stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))) {
      if (errno == EEXIST) errno = ENOTDIR;
      return -1;
    }
    *p = saved;
    if (!saved) return 0;
  }
}
