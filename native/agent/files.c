// File operations: streamed reads and atomic streamed writes under credit, and the one-shot
// list / stat / mkdir / remove / rename.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

// Paths come from the host and must be absolute: the agent's own cwd means nothing to it.
static bool check_path(struct conn *c, uint32_t id, const char *path) {
  if (path && path[0] == '/') return true;
  send_error(c, id, ERR(BAD_REQUEST), 0, "path '%s' is not absolute", path ? path : "");
  return false;
}

static void io_error(struct conn *c, uint32_t id, const char *what, const char *path) {
  int e = errno;
  send_error(c, id, ERR(IO), e, "%s '%s': %s", what, path, strerror(e));
}

static microsandbox_agent_FileType file_type(mode_t m) {
  if (S_ISREG(m)) return microsandbox_agent_FileType_REGULAR;
  if (S_ISDIR(m)) return microsandbox_agent_FileType_DIRECTORY;
  if (S_ISLNK(m)) return microsandbox_agent_FileType_SYMLINK;
  if (S_ISCHR(m)) return microsandbox_agent_FileType_CHAR_DEVICE;
  if (S_ISBLK(m)) return microsandbox_agent_FileType_BLOCK_DEVICE;
  if (S_ISFIFO(m)) return microsandbox_agent_FileType_FIFO;
  if (S_ISSOCK(m)) return microsandbox_agent_FileType_SOCKET;
  return microsandbox_agent_FileType_UNKNOWN;
}

// Fills `r` from lstat of `name` relative to `dirfd`; name and link_target are malloc'd.
static bool fill_stat(int dirfd, const char *name, const char *display, microsandbox_agent_StatResult *r) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return false;
  r->name = strdup(display);
  r->type = file_type(st.st_mode);
  r->size = (uint64_t)st.st_size;
  r->mode = st.st_mode & 07777;
  r->uid = st.st_uid;
  r->gid = st.st_gid;
  r->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  if (S_ISLNK(st.st_mode)) {
    char buf[PATH_MAX];
    ssize_t n = readlinkat(dirfd, name, buf, sizeof buf - 1);
    if (n >= 0) {
      buf[n] = 0;
      r->link_target = strdup(buf);
    }
  }
  return true;
}

static void free_stat(microsandbox_agent_StatResult *r) {
  free(r->name);
  free(r->link_target);
}

// ------------------------------------------------------------------ read

void file_read_start(struct conn *c, uint32_t id, const microsandbox_agent_ReadFile *req) {
  if (!check_path(c, id, req->path)) return;
  if (req->window > LIMIT(MAX_WINDOW_BYTES)) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "window %u exceeds %u", req->window, LIMIT(MAX_WINDOW_BYTES));
    return;
  }
  // O_NONBLOCK: opening a FIFO without a writer must not freeze the agent's one loop. Only
  // files whose reads cannot block are streamed.
  int fd = open(req->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return io_error(c, id, "cannot open", req->path);
  struct stat st = {0};
  if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    int e = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    close(fd);
    errno = e;
    return io_error(c, id, e == EISDIR ? "cannot read" : "not a regular file:", req->path);
  }
  if (req->offset && lseek(fd, (off_t)req->offset, SEEK_SET) < 0) {
    close(fd);
    return io_error(c, id, "cannot seek in", req->path);
  }
  struct session *s = session_new(c, id, S_READ);
  if (!s) {
    close(fd);
    send_error(c, id, ERR(INTERNAL), ENOMEM, "out of memory");
    return;
  }
  s->fd = fd;
  s->remaining = req->length ? req->length : UINT64_MAX;
  if (req->window) s->window = req->window;
  s->final_path = strdup(req->path);
  file_read_pump(s);
}

// Sends chunks while credit lasts and the connection is not paused; credit or a drained
// queue calls it again.
void file_read_pump(struct session *s) {
  struct conn *c = s->conn;
  while (c->w.fd >= 0 && !conn_paused(c) && s->unacked < s->window) {
    size_t want = s->window - s->unacked;
    if (want > CHUNK_BYTES) want = CHUNK_BYTES;
    if (want > s->remaining) want = (size_t)s->remaining;
    ssize_t n = want ? read(s->fd, chunk_buf(), want) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      io_error(c, s->id, "cannot read", s->final_path ? s->final_path : "");
      session_free(s);
      return;
    }
    if (n == 0) {
      send_done(c, s->id, s->total);
      session_free(s);
      return;
    }
    s->unacked += (uint32_t)n;
    s->total += (uint64_t)n;
    s->remaining -= (uint64_t)n;
    send_chunk(c, s->id, microsandbox_agent_Output_Stream_FILE, (size_t)n);
  }
}

// ------------------------------------------------------------------ write

void file_write_start(struct conn *c, uint32_t id, const microsandbox_agent_WriteFile *req) {
  if (!check_path(c, id, req->path)) return;
  char *copy = strdup(req->path), *copy2 = strdup(req->path);
  char *tmp = NULL;
  if (!copy || !copy2) goto oom;
  const char *dir = dirname(copy), *base = basename(copy2);
  struct stat st;
  if (stat(req->path, &st) == 0 && S_ISDIR(st.st_mode)) {
    errno = EISDIR;
    io_error(c, id, "cannot write", req->path);
    goto out;
  }
  if (req->parents && mkdir_parents(dir, 0755) < 0) {
    io_error(c, id, "cannot create directory", dir);
    goto out;
  }
  if (asprintf(&tmp, "%s/.%s.msb-XXXXXX", strcmp(dir, "/") ? dir : "", base) < 0) goto oom;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    io_error(c, id, "cannot create a file in", dir);
    goto out;
  }
  fchmod(fd, req->mode ? (mode_t)req->mode & 07777 : 0644);
  struct session *s = session_new(c, id, S_WRITE);
  if (!s) {
    close(fd);
    unlink(tmp);
    goto oom;
  }
  s->fd = fd;
  s->tmp_path = tmp;
  s->final_path = strdup(req->path);
  free(copy);
  free(copy2);
  return;
oom:
  send_error(c, id, ERR(INTERNAL), ENOMEM, "out of memory");
out:
  free(tmp);
  free(copy);
  free(copy2);
}

void file_write_data(struct session *s, const microsandbox_agent_Data *d) {
  size_t len = d->data ? d->data->size : 0;
  const uint8_t *p = len ? d->data->bytes : NULL;
  for (size_t off = 0; off < len;) {
    ssize_t n = write(s->fd, p + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      io_error(s->conn, s->id, "cannot write", s->final_path);
      file_abort(s);
      session_free(s);
      return;
    }
    off += (size_t)n;
  }
  s->total += len;
  if (len) send_credit(s->conn, s->id, (uint32_t)len);
  if (!d->eof) return;
  int rc = close(s->fd);
  s->fd = -1;
  if (rc < 0 || rename(s->tmp_path, s->final_path) < 0) {
    io_error(s->conn, s->id, "cannot write", s->final_path);
    file_abort(s);
  } else {
    send_done(s->conn, s->id, s->total);
  }
  session_free(s);
}

// Ends a read or write that will not complete; an unfinished write leaves no temporary file.
void file_abort(struct session *s) {
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
  if (s->kind == S_WRITE && s->tmp_path) unlink(s->tmp_path);
}

// ------------------------------------------------------------------ one-shot operations

void file_list(struct conn *c, uint32_t id, const char *path) {
  if (!check_path(c, id, path)) return;
  DIR *d = opendir(path);
  if (!d) return io_error(c, id, "cannot list", path);
  microsandbox_agent_StatResult batch[LIMIT(MAX_DIR_BATCH)];
  pb_size_t n = 0;
  size_t bytes = 0, total = 0;
  struct dirent *e;
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = id;
  m.which_body = microsandbox_agent_GuestMessage_entries_tag;
  m.body.entries.entries = batch;
  int err = 0;
  for (;;) {
    errno = 0;
    e = readdir(d);
    if (!e) err = errno;  // before a send below can set errno
    bool flush = !e || n == LIMIT(MAX_DIR_BATCH) || bytes > LIMIT(MAX_FRAME_BYTES) / 2;
    if (flush && n) {
      m.body.entries.entries_count = n;
      conn_send(c, &m);
      while (n) free_stat(&batch[--n]);
      bytes = 0;
    }
    if (!e) break;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    memset(&batch[n], 0, sizeof batch[n]);
    // An entry that vanished between readdir and lstat is simply not listed.
    if (!fill_stat(dirfd(d), e->d_name, e->d_name, &batch[n])) continue;
    bytes += 64 + strlen(e->d_name) + (batch[n].link_target ? strlen(batch[n].link_target) : 0);
    n++;
    total++;
  }
  closedir(d);
  if (err) {
    errno = err;
    return io_error(c, id, "cannot list", path);
  }
  send_done(c, id, total);
}

void file_stat(struct conn *c, uint32_t id, const char *path) {
  if (!check_path(c, id, path)) return;
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = id;
  m.which_body = microsandbox_agent_GuestMessage_stat_tag;
  char *copy = strdup(path);
  if (!fill_stat(AT_FDCWD, path, copy ? basename(copy) : path, &m.body.stat)) {
    free(copy);
    return io_error(c, id, "cannot stat", path);
  }
  free(copy);
  conn_send(c, &m);
  free_stat(&m.body.stat);
}

void file_mkdir(struct conn *c, uint32_t id, const microsandbox_agent_Mkdir *req) {
  if (!check_path(c, id, req->path)) return;
  mode_t mode = req->mode ? (mode_t)req->mode & 07777 : 0755;
  int rc = req->parents ? mkdir_parents(req->path, mode) : mkdir(req->path, mode);
  if (rc < 0) return io_error(c, id, "cannot create directory", req->path);
  send_done(c, id, 0);
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

void file_remove(struct conn *c, uint32_t id, const microsandbox_agent_Remove *req) {
  if (!check_path(c, id, req->path)) return;
  struct stat st;
  if (lstat(req->path, &st) < 0) return io_error(c, id, "cannot remove", req->path);
  // No FTW_MOUNT: overlayfs reports other st_dev values for files than for directories, so
  // "stay on one filesystem" would skip files and leave directories that cannot be removed.
  int rc = req->recursive && S_ISDIR(st.st_mode) ? nftw(req->path, remove_entry, 32, FTW_DEPTH | FTW_PHYS) : remove(req->path);
  if (rc < 0) return io_error(c, id, "cannot remove", req->path);
  send_done(c, id, 0);
}

void file_rename(struct conn *c, uint32_t id, const char *from, const char *to) {
  if (!check_path(c, id, from) || !check_path(c, id, to)) return;
  if (rename(from, to) < 0) {
    int e = errno;
    send_error(c, id, ERR(IO), e, "cannot rename '%s' to '%s': %s", from, to, strerror(e));
    return;
  }
  send_done(c, id, 0);
}
