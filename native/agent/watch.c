// Watch sessions: a directory (and, recursively, those below it) watched with inotify, its changes
// sent as FsEvents. One inotify instance per session, read only while the session has output
// credit: a host that stops reading lets the kernel's queue fill, and its overflow becomes an
// OVERFLOW event instead of memory here. A rename within the tree pairs IN_MOVED_FROM with its
// IN_MOVED_TO by cookie; halves without a partner are a delete or a create.
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define MASK (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW | IN_EXCL_UNLINK | IN_ONLYDIR)
#define WATCH_WINDOW (256 * 1024)
#define BATCH_BYTES (256 * 1024)
#define EVENT_OVERHEAD 16
#define MOVE_WAIT_NS (20 * 1000000ull)

struct dir {
  int wd;
  char *path;
};

struct fswatch {
  bool recursive;
  int root_wd;
  struct dir *dirs;
  int ndirs, cap;
  // The batch being built.
  microsandbox_agent_FsEvent batch[LIMIT(MAX_DIR_BATCH)];
  int n;
  size_t bytes;
  // An IN_MOVED_FROM waiting for its IN_MOVED_TO.
  uint32_t cookie;
  char *moved;
  bool moved_dir;
  uint64_t move_deadline_ns;  // 0: none pending
};

static const char *dir_path(struct fswatch *f, int wd) {
  for (int i = 0; i < f->ndirs; i++)
    if (f->dirs[i].wd == wd) return f->dirs[i].path;
  return NULL;
}

static void add_dir(struct fswatch *f, int fd, const char *path) {
  int wd = inotify_add_watch(fd, path, MASK);
  if (wd < 0) return;  // gone already, or out of watches: its events are missed
  for (int i = 0; i < f->ndirs; i++)
    if (f->dirs[i].wd == wd) return;  // the same directory twice (a rename seen late)
  if (f->ndirs == f->cap) {
    int cap = f->cap ? f->cap * 2 : 16;
    struct dir *d = realloc(f->dirs, (size_t)cap * sizeof *d);
    if (!d) return;
    f->dirs = d, f->cap = cap;
  }
  char *copy = strdup(path);
  if (!copy) return;
  f->dirs[f->ndirs++] = (struct dir){wd, copy};
}

static void drop_dir(struct fswatch *f, int wd) {
  for (int i = 0; i < f->ndirs; i++) {
    if (f->dirs[i].wd != wd) continue;
    free(f->dirs[i].path);
    f->dirs[i] = f->dirs[--f->ndirs];
    return;
  }
}

// A directory renamed within the tree: the paths of it and everything below it follow.
static void rename_dirs(struct fswatch *f, const char *from, const char *to) {
  size_t len = strlen(from);
  for (int i = 0; i < f->ndirs; i++) {
    const char *p = f->dirs[i].path;
    if (strncmp(p, from, len) != 0 || (p[len] != 0 && p[len] != '/')) continue;
    char *moved = malloc(strlen(to) + strlen(p + len) + 1);
    if (!moved) continue;
    strcpy(moved, to);
    strcat(moved, p + len);
    free(f->dirs[i].path);
    f->dirs[i].path = moved;
  }
}

static void flush(struct session *s) {
  struct fswatch *f = s->fsw;
  if (!f->n) return;
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = s->id;
  m.which_body = microsandbox_agent_GuestMessage_fs_events_tag;
  m.body.fs_events.events = f->batch;
  m.body.fs_events.events_count = (pb_size_t)f->n;
  conn_send(s->conn, &m);
  s->unacked += (uint32_t)f->bytes;
  for (int i = 0; i < f->n; i++) free(f->batch[i].path), free(f->batch[i].from);
  f->n = 0;
  f->bytes = 0;
}

// Adds an event (taking `path` and `from`, heap strings or NULL) to the batch.
static void emit(struct session *s, microsandbox_agent_FsEvent_Kind kind, char *path, char *from, bool dir) {
  struct fswatch *f = s->fsw;
  // Consecutive writes to one file are one change.
  if (kind == microsandbox_agent_FsEvent_Kind_MODIFY && f->n && f->batch[f->n - 1].kind == kind && path && strcmp(f->batch[f->n - 1].path, path) == 0) {
    free(path);
    return;
  }
  if (f->n == LIMIT(MAX_DIR_BATCH) || f->bytes >= BATCH_BYTES) flush(s);
  f->batch[f->n++] = (microsandbox_agent_FsEvent){.kind = kind, .path = path, .from = from, .directory = dir};
  f->bytes += EVENT_OVERHEAD + (path ? strlen(path) : 0) + (from ? strlen(from) : 0);
}

static char *join(const char *dir, const char *name) {
  char *p = malloc(strlen(dir) + strlen(name) + 2);
  if (p) sprintf(p, "%s/%s", dir, name);
  return p;
}

// nftw takes no context: the session being scanned, whether to report what it finds, and how
// many more creates one scan may report (a tree of a million files moved in is an OVERFLOW, not
// a million events queued outside the credit window).
#define SCAN_REPORTS 4096
static struct session *g_scanning;
static bool g_report;
static int g_reports_left;

static int on_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st;
  if (type == FTW_D) add_dir(g_scanning->fsw, g_scanning->out.fd, path);
  if (!g_report || ftw->level == 0) return 0;
  if (g_reports_left-- > 0) emit(g_scanning, microsandbox_agent_FsEvent_Kind_CREATE, strdup(path), NULL, type == FTW_D);
  else if (g_reports_left == -1) emit(g_scanning, microsandbox_agent_FsEvent_Kind_OVERFLOW, NULL, NULL, false);
  return 0;
}

// Watches `path` and, when recursive, every directory below it; with `report`, what is there
// already is reported as created (a directory new to the tree may have filled before its watch).
static void watch_tree(struct session *s, const char *path, bool report) {
  if (!s->fsw->recursive) return add_dir(s->fsw, s->out.fd, path);
  g_scanning = s;
  g_report = report;
  g_reports_left = SCAN_REPORTS;
  nftw(path, on_entry, 16, FTW_PHYS);
}

// Watches with a rename's first half waiting for its second: watch_timers has work only then
// (it runs on every turn of the agent's loop).
static int g_waiting;

static void set_deadline(struct fswatch *f, uint64_t at) {
  g_waiting += (at != 0) - (f->move_deadline_ns != 0);
  f->move_deadline_ns = at;
}

// An IN_MOVED_FROM whose IN_MOVED_TO did not follow: moved out of the tree.
static void settle_move(struct session *s) {
  struct fswatch *f = s->fsw;
  set_deadline(f, 0);
  if (!f->moved) return;
  emit(s, microsandbox_agent_FsEvent_Kind_DELETE, f->moved, NULL, f->moved_dir);
  f->moved = NULL;
}

void fswatch_free(struct session *s) {
  struct fswatch *f = s->fsw;
  if (!f) return;
  set_deadline(f, 0);
  for (int i = 0; i < f->n; i++) free(f->batch[i].path), free(f->batch[i].from);
  for (int i = 0; i < f->ndirs; i++) free(f->dirs[i].path);
  free(f->dirs);
  free(f->moved);
  free(f);
  s->fsw = NULL;
}

void watch_update(struct session *s) { watch_set(&s->out, !conn_paused(s->conn) && s->unacked < s->window ? EPOLLIN : 0); }

void watch_start(struct conn *c, uint32_t id, const microsandbox_agent_Watch *req) {
  const char *path = req->path ? req->path : "";
  if (path[0] != '/') return send_error(c, id, ERR(BAD_REQUEST), 0, "watch path '%s' is not absolute", path);
  if (req->window > LIMIT(MAX_WINDOW_BYTES)) return send_error(c, id, ERR(BAD_REQUEST), 0, "window %u exceeds %u", req->window, LIMIT(MAX_WINDOW_BYTES));
  struct stat st;
  int err = stat(path, &st) < 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  if (err) return send_error(c, id, ERR(IO), err, "cannot watch '%s': %s", path, strerror(err));
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  struct fswatch *f = calloc(1, sizeof *f);
  struct session *s = fd >= 0 && f ? session_new(c, id, S_WATCH) : NULL;
  if (!s) {
    err = errno;
    if (fd >= 0) close(fd);
    free(f);
    return send_error(c, id, ERR(IO), err, "cannot watch '%s': %s", path, strerror(err));
  }
  f->recursive = req->recursive;
  s->fsw = f;
  s->out = (struct watch){.fd = fd, .type = W_INOTIFY, .owner = s};
  s->window = req->window ? req->window : WATCH_WINDOW;
  watch_tree(s, path, false);
  f->root_wd = f->ndirs ? f->dirs[0].wd : -1;
  if (f->root_wd < 0) {
    send_error(c, id, ERR(IO), errno, "cannot watch '%s': %s", path, strerror(errno));
    return session_free(s);
  }
  watch_update(s);
}

// Turns one read of inotify events into FsEvents; true when the watched directory went.
static bool take(struct session *s, const char *buf, ssize_t len) {
  struct fswatch *f = s->fsw;
  bool gone = false;
  for (const char *p = buf; p < buf + len;) {
    const struct inotify_event *e = (const void *)p;
    p += sizeof *e + e->len;
    if (e->mask & IN_Q_OVERFLOW) {
      settle_move(s);
      emit(s, microsandbox_agent_FsEvent_Kind_OVERFLOW, NULL, NULL, false);
      continue;
    }
    if (e->mask & IN_IGNORED) {
      if (e->wd == f->root_wd) gone = true;
      drop_dir(f, e->wd);
      continue;
    }
    if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
      if (e->wd == f->root_wd) gone = true;  // the watched directory itself went
      continue;
    }
    const char *dir = dir_path(f, e->wd);
    if (!dir || !e->len) continue;
    char *path = join(dir, e->name);
    if (!path) continue;
    bool isdir = e->mask & IN_ISDIR;
    if (f->moved && !((e->mask & IN_MOVED_TO) && e->cookie == f->cookie)) settle_move(s);
    set_deadline(f, 0);
    if (e->mask & IN_MOVED_FROM) {
      f->moved = path, f->cookie = e->cookie, f->moved_dir = isdir;
    } else if (e->mask & IN_MOVED_TO) {
      if (f->moved) {
        if (isdir) rename_dirs(f, f->moved, path);
        emit(s, microsandbox_agent_FsEvent_Kind_RENAME, path, f->moved, isdir);
        f->moved = NULL;
      } else {
        emit(s, microsandbox_agent_FsEvent_Kind_CREATE, path, NULL, isdir);
        if (isdir && f->recursive) watch_tree(s, path, true);
      }
    } else if (e->mask & IN_CREATE) {
      emit(s, microsandbox_agent_FsEvent_Kind_CREATE, path, NULL, isdir);
      if (isdir && f->recursive) watch_tree(s, path, true);
    } else if (e->mask & IN_DELETE) {
      emit(s, microsandbox_agent_FsEvent_Kind_DELETE, path, NULL, isdir);
    } else if (e->mask & IN_MODIFY) {
      emit(s, microsandbox_agent_FsEvent_Kind_MODIFY, path, NULL, isdir);
    } else {
      free(path);
    }
  }
  return gone;
}

void watch_on_event(struct watch *w) {
  struct session *s = w->owner;
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t len = read(w->fd, buf, sizeof buf);
  if (len <= 0) return;  // EAGAIN: woken for nothing
  bool gone = take(s, buf, len);
  // A rename queues its halves one after the other, and this wakeup may come between them: a
  // pending IN_MOVED_FROM waits MOVE_WAIT_NS for its partner before it counts as a move out.
  if (s->fsw->moved && !s->fsw->move_deadline_ns) set_deadline(s->fsw, now_ns() + MOVE_WAIT_NS);
  if (gone) settle_move(s);
  flush(s);
  if (gone) {
    send_done(s->conn, s->id, 0);
    return session_free(s);
  }
  watch_update(s);
}

void watch_timers(uint64_t now, int64_t *next_ms) {
  for (struct conn *c = g_conns; g_waiting && c; c = c->next) {
    for (struct session *s = c->sessions; s && !c->closed; s = s->next) {
      uint64_t at = s->kind == S_WATCH ? s->fsw->move_deadline_ns : 0;
      if (!at) continue;
      if (now >= at) {
        settle_move(s);
        flush(s);
        watch_update(s);
      } else {
        int64_t ms = (int64_t)((at - now + 999999) / 1000000);
        if (*next_ms < 0 || ms < *next_ms) *next_ms = ms;
      }
    }
  }
}
