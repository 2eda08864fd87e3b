// Exec sessions: spawn a process tree in its own session, pump its pipes (and its channel) under
// credit, feed its stdin, enforce its timeout, and report its exit once its output is drained.
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"

#define MAX_GROUPS 64
#define PIPE_BYTES (1 << 20)
// A process's channel (Exec.channel): this fd, named in its environment by this variable.
#define CHANNEL_FD 3
#define CHANNEL_VAR "MSB_CHANNEL_FD="
#define STR(x) #x
#define XSTR(x) STR(x)

// Steps of the child between fork and exec; the failing one travels back with its errno.
enum stage { ST_SETSID, ST_CGROUP, ST_DUP, ST_RLIMIT, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_CHDIR, ST_EXEC };
struct failure {
  int stage, err;
};

struct ids {
  bool set;
  uid_t uid;
  gid_t gid;
  int ngroups;
  gid_t groups[MAX_GROUPS];
};

static const int rlimit_ids[] = {
    [microsandbox_agent_Rlimit_Resource_CPU] = RLIMIT_CPU,         [microsandbox_agent_Rlimit_Resource_FSIZE] = RLIMIT_FSIZE,
    [microsandbox_agent_Rlimit_Resource_DATA] = RLIMIT_DATA,       [microsandbox_agent_Rlimit_Resource_STACK] = RLIMIT_STACK,
    [microsandbox_agent_Rlimit_Resource_CORE] = RLIMIT_CORE,       [microsandbox_agent_Rlimit_Resource_NOFILE] = RLIMIT_NOFILE,
    [microsandbox_agent_Rlimit_Resource_AS] = RLIMIT_AS,           [microsandbox_agent_Rlimit_Resource_NPROC] = RLIMIT_NPROC,
    [microsandbox_agent_Rlimit_Resource_MEMLOCK] = RLIMIT_MEMLOCK,
};
#define N_RLIMITS (sizeof rlimit_ids / sizeof rlimit_ids[0])

static rlim_t to_rlim(uint64_t v) { return v == UINT64_MAX ? RLIM_INFINITY : (rlim_t)v; }

static _Noreturn void child_fail(int fd, int stage) {
  struct failure f = {stage, errno};
  ssize_t unused = write(fd, &f, sizeof f);
  (void)unused;
  _exit(127);
}

// execve with the PATH of the new environment (execvp would search the agent's own PATH). The
// host always sends one (src/agent-client/process.ts has the default): without it a bare name
// is not found.
static void exec_search(char **argv, char **envp) {
  if (strchr(argv[0], '/')) {
    execve(argv[0], argv, envp);
    return;
  }
  const char *path = "";
  for (char **e = envp; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  bool denied = false;
  char buf[PATH_MAX];
  for (const char *p = path; *p;) {
    size_t len = strcspn(p, ":");
    int n = snprintf(buf, sizeof buf, "%.*s%s%s", (int)len, p, len ? "/" : "", argv[0]);
    if (n > 0 && (size_t)n < sizeof buf) {
      execve(buf, argv, envp);
      if (errno == EACCES) denied = true;
      else if (errno != ENOENT && errno != ENOTDIR) return;
    }
    p += len;
    if (*p == ':') p++;
  }
  errno = denied ? EACCES : ENOENT;
}

// Moves the calling process into the cgroup whose directory is `dir` (a kernel without clone3).
static bool join_cgroup(int dir) {
  int fd = openat(dir, "cgroup.procs", O_WRONLY | O_CLOEXEC);
  bool ok = fd >= 0 && write(fd, "0", 1) == 1;
  if (fd >= 0) close(fd);
  return ok;
}

// clone3's arguments up to `cgroup` (Linux 5.7), spelled out: musl has no header for them.
struct clone3_args {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

// fork(), with the child started in the cgroup `cgroup_fd` when it is one: moving a process after
// the fork costs a few ms more under emulation. *joined says whether that was done.
static pid_t fork_into(int cgroup_fd, bool *joined) {
  *joined = false;
  if (cgroup_fd >= 0) {
    // Like fork() without libc's bookkeeping, which a single-threaded parent does not need; the
    // child only makes plain system calls until it execs.
    struct clone3_args args = {.flags = CLONE_INTO_CGROUP_FLAG, .exit_signal = SIGCHLD, .cgroup = (uint64_t)cgroup_fd};
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid >= 0) {
      *joined = true;
      return pid;
    }
    // Older kernels; and the sandbox at its process limit, where a fork into the cgroup is
    // refused but a move is not: a command still starts beside a fork bomb's leftovers.
    if (errno != ENOSYS && errno != E2BIG && errno != EINVAL && errno != EAGAIN) return -1;
  }
  return fork();
}

// A new process's descriptors, indexed by the number they get in it (0 stdin, 1 stdout, 2 stderr,
// CHANNEL_FD its channel): `child` are its ends, `agent` the agent's (stdin's write end, the read
// ends of stdout and stderr, the other end of the channel), all close-on-exec; -1 where there is
// none. With a terminal the child opens its slave side `tty` itself, after setsid(), so that it
// becomes the new session's controlling terminal; "" with pipes.
#define N_STDIO (CHANNEL_FD + 1)
struct stdio {
  int child[N_STDIO], agent[N_STDIO];
  char tty[64];
};

static _Noreturn void child(const microsandbox_agent_Exec *req, char **argv, char **envp, struct stdio *st, const struct ids *ids, int cgroup_fd, int report) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);  // ignored dispositions survive exec; the agent ignores SIGPIPE
  if (setsid() < 0) child_fail(report, ST_SETSID);
  if (cgroup_fd >= 0 && !join_cgroup(cgroup_fd)) child_fail(report, ST_CGROUP);
  if (*st->tty) {
    int t = open(st->tty, O_RDWR);
    if (t < 0 || ioctl(t, TIOCSCTTY, 0) < 0) child_fail(report, ST_DUP);
    st->child[0] = st->child[1] = st->child[2] = t;
  }
  for (int i = 0; i < N_STDIO; i++) {
    if (st->child[i] < 0) continue;
    // Already in place (the agent had no such fd), dup2 would leave it close-on-exec.
    if (st->child[i] == i ? fcntl(i, F_SETFD, 0) < 0 : dup2(st->child[i], i) < 0) child_fail(report, ST_DUP);
  }
  for (pb_size_t i = 0; i < req->rlimits_count; i++) {
    struct rlimit rl = {to_rlim(req->rlimits[i].soft), to_rlim(req->rlimits[i].hard)};
    if (setrlimit(rlimit_ids[req->rlimits[i].resource], &rl) < 0) child_fail(report, ST_RLIMIT);
  }
  if (ids->set) {
    if (setgroups((size_t)ids->ngroups, ids->groups) < 0) child_fail(report, ST_SETGROUPS);
    if (setgid(ids->gid) < 0) child_fail(report, ST_SETGID);
    if (setuid(ids->uid) < 0) child_fail(report, ST_SETUID);
  }
  if (chdir(req->cwd && *req->cwd ? req->cwd : "/") < 0) child_fail(report, ST_CHDIR);
  exec_search(argv, envp);
  child_fail(report, ST_EXEC);
}

// Resolves `user` (a name or a number) and uid/gid into the ids the child switches to.
static bool resolve_ids(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req, struct ids *ids) {
  memset(ids, 0, sizeof *ids);
  if (req->user && *req->user) {
    char *end;
    unsigned long n = strtoul(req->user, &end, 10);
    struct passwd *pw = *end ? getpwnam(req->user) : getpwuid((uid_t)n);
    if (!pw && *end) {
      send_error(c, id, ERR(EXEC_FAILED), ENOENT, "user '%s' is not in the guest's /etc/passwd", req->user);
      return false;
    }
    ids->set = true;
    ids->uid = pw ? pw->pw_uid : (uid_t)n;
    ids->gid = pw ? pw->pw_gid : (gid_t)n;
    ids->ngroups = 1;
    ids->groups[0] = ids->gid;
    if (pw) {
      ids->ngroups = MAX_GROUPS;
      if (getgrouplist(pw->pw_name, pw->pw_gid, ids->groups, &ids->ngroups) < 0) ids->ngroups = MAX_GROUPS;
    }
  }
  if (req->has_uid || req->has_gid) {
    if (!ids->set) {
      ids->set = true;
      ids->uid = getuid();
      ids->gid = getgid();
    }
    if (req->has_uid) ids->uid = req->uid;
    if (req->has_gid) ids->gid = req->gid;
    ids->ngroups = 1;
    ids->groups[0] = ids->gid;
  }
  return true;
}

static void describe_failure(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req, const struct ids *ids, struct failure f) {
  const char *why = strerror(f.err);
  switch (f.stage) {
    case ST_CHDIR:
      send_error(c, id, ERR(EXEC_FAILED), f.err, "cannot change to working directory '%s': %s", req->cwd && *req->cwd ? req->cwd : "/", why);
      break;
    case ST_EXEC: send_error(c, id, ERR(EXEC_FAILED), f.err, "cannot execute '%s': %s", req->argv[0], why); break;
    case ST_SETUID:
    case ST_SETGID:
    case ST_SETGROUPS: send_error(c, id, ERR(EXEC_FAILED), f.err, "cannot switch to uid %u gid %u: %s", (unsigned)ids->uid, (unsigned)ids->gid, why); break;
    case ST_RLIMIT: send_error(c, id, ERR(EXEC_FAILED), f.err, "cannot apply resource limits: %s", why); break;
    default: send_error(c, id, ERR(EXEC_FAILED), f.err, "cannot set up the process: %s", why);
  }
}

// A new terminal of `size`: its master side (close-on-exec), and the slave's path in `tty`.
static int open_pty(const microsandbox_agent_Pty *size, char *tty, size_t len) {
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  struct winsize ws = {.ws_row = (unsigned short)size->rows, .ws_col = (unsigned short)size->cols};
  if (m < 0) return -1;
  if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, tty, len) != 0 || ioctl(m, TIOCSWINSZ, &ws) < 0) {
    close(m);
    return -1;
  }
  return m;
}

void exec_resize(struct session *s, uint32_t rows, uint32_t cols) {
  if (!s->pty) return send_error(s->conn, s->id, ERR(BAD_REQUEST), 0, "session %u has no terminal", s->id);
  if (!rows || !cols || rows > 1000 || cols > 1000)
    return send_error(s->conn, s->id, ERR(BAD_REQUEST), 0, "terminal size %ux%u is out of range (1 to 1000 each)", rows, cols);
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  if (s->out.fd >= 0) ioctl(s->out.fd, TIOCSWINSZ, &ws);
}

// NULL-terminated copy of a repeated string field, as execve wants.
static char **to_vector(char **items, pb_size_t n) {
  char **v = calloc((size_t)n + 1, sizeof *v);
  if (v && n) memcpy(v, items, n * sizeof *v);
  return v;
}

// The process's environment as execve wants it; with a channel, that names it (and only that).
static char **env_vector(const microsandbox_agent_Exec *req) {
  static char channel[] = CHANNEL_VAR XSTR(CHANNEL_FD);
  char **v = calloc((size_t)req->env_count + 2, sizeof *v);
  size_t n = 0;
  if (!v) return NULL;
  for (pb_size_t i = 0; i < req->env_count; i++)
    if (!req->channel || strncmp(req->env[i], CHANNEL_VAR, sizeof CHANNEL_VAR - 1) != 0) v[n++] = req->env[i];
  if (req->channel) v[n] = channel;
  return v;
}

static void close_fds(int *fds, int n) {
  for (int i = 0; i < n; i++) {
    if (fds[i] >= 0) close(fds[i]);
    fds[i] = -1;
  }
}

// Pipes for stdout and stderr, and for stdin when the host feeds it (else /dev/null); or a
// terminal, whose master side stands in for every pipe: the agent reads and writes it. And a
// socket pair for the channel.
static bool stdio_open(const microsandbox_agent_Exec *req, struct stdio *st) {
  if (req->has_pty) {
    return (st->agent[1] = open_pty(&req->pty, st->tty, sizeof st->tty)) >= 0 && (st->agent[0] = fcntl(st->agent[1], F_DUPFD_CLOEXEC, 0)) >= 0;
  }
  int p[2];
  for (int i = 1; i < 3; i++) {
    if (pipe2(p, O_CLOEXEC) < 0) return false;
    st->agent[i] = p[0], st->child[i] = p[1];
  }
  if (!req->open_stdin) {
    if ((st->child[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) return false;
  } else {
    if (pipe2(p, O_CLOEXEC) < 0) return false;
    st->child[0] = p[0], st->agent[0] = p[1];
  }
  if (req->channel) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) return false;
    st->agent[CHANNEL_FD] = p[0], st->child[CHANNEL_FD] = p[1];
  }
  return true;
}

// What can be refused before anything is started; false once the host was told why.
static bool exec_check(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req) {
  if (req->argv_count == 0 || !req->argv[0] || !*req->argv[0]) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "exec needs a program: argv is empty");
    return false;
  }
  if (req->window > LIMIT(MAX_WINDOW_BYTES)) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "window %u exceeds %u", req->window, LIMIT(MAX_WINDOW_BYTES));
    return false;
  }
  for (pb_size_t i = 0; i < req->rlimits_count; i++) {
    if ((unsigned)req->rlimits[i].resource >= N_RLIMITS) {
      send_error(c, id, ERR(BAD_REQUEST), 0, "unknown rlimit resource %d", (int)req->rlimits[i].resource);
      return false;
    }
  }
  if (req->has_pty && (!req->pty.rows || !req->pty.cols || req->pty.rows > 1000 || req->pty.cols > 1000)) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "terminal size %ux%u is out of range (1 to 1000 each)", req->pty.rows, req->pty.cols);
    return false;
  }
  if (req->has_pty && req->channel) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "a channel needs pipes, not a terminal: its order behind the output would not hold");
    return false;
  }
  return true;
}

// Forks the child into a cgroup of its own when there is one, and waits until it has exec'd:
// returns its pid and its start time, or -1 once the host was told why it did not start (then
// nothing of it is left open). The report pipe closes on a successful exec, or carries the failing
// step: the short blocking read keeps Started/Error in order without another state in the loop.
static pid_t exec_spawn(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req, const struct ids *ids, struct stdio *st, struct cgroup *cgroup,
                        uint64_t *start) {
  int report[2] = {-1, -1};
  *st = (struct stdio){.child = {-1, -1, -1, -1}, .agent = {-1, -1, -1, -1}};
  char **argv = to_vector(req->argv, req->argv_count);
  char **envp = env_vector(req);
  bool ok = argv && envp && pipe2(report, O_CLOEXEC) == 0 && stdio_open(req, st);
  int cgroup_fd = ok ? cgroup_open(cgroup) : -1;
  bool joined = false;
  pid_t pid = ok ? fork_into(cgroup_fd, &joined) : -1;
  if (pid == 0) {
    close(report[0]);
    child(req, argv, envp, st, ids, joined ? -1 : cgroup_fd, report[1]);
  }
  int saved = errno;
  // A fork into the cgroup refused at the sandbox's limit counts in the cgroup's own pids
  // events; that refusal was ours (the fallback started the process), not the command's.
  if (pid > 0 && cgroup_fd >= 0 && !joined) cgroup_rebase(cgroup);
  if (cgroup_fd >= 0) close(cgroup_fd);
  free(argv);
  free(envp);
  close_fds(st->child, N_STDIO);
  close_fds(&report[1], 1);
  if (pid > 0) {
    *start = now_ns();
    struct failure f;
    ssize_t n;
    do n = read(report[0], &f, sizeof f);
    while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n != sizeof f) return pid;
    waitpid(pid, NULL, 0);
    describe_failure(c, id, req, ids, f);
  } else {
    close_fds(&report[0], 1);
    send_error(c, id, ERR(EXEC_FAILED), saved, "cannot start a process: %s", strerror(saved));
  }
  struct tree_counters unused;
  cgroup_close(cgroup, &unused);
  close_fds(st->agent, N_STDIO);
  return -1;
}

// The session of a process that runs: its ends of the pipes, deadline and credit; then Started.
static void exec_session(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req, pid_t pid, const struct cgroup *cgroup, uint64_t start,
                         struct stdio *st) {
  struct session *s = session_new(c, id, S_EXEC);
  if (!s) {
    kill(pid, SIGKILL);
    close_fds(st->agent, N_STDIO);
    send_error(c, id, ERR(INTERNAL), ENOMEM, "out of memory");
    return;
  }
  s->pid = pid;
  s->cgroup = *cgroup;
  s->start_ns = start;
  // Capped at ~30 years so the nanosecond deadline cannot wrap.
  if (req->timeout_ms) s->deadline_ns = start + (req->timeout_ms < 1000000000000ull ? req->timeout_ms : 1000000000000ull) * 1000000ull;
  if (req->window) s->window = req->window;
  s->in.fd = st->agent[0];
  s->out.fd = st->agent[1];
  s->err.fd = st->agent[2];
  s->chan.fd = st->agent[CHANNEL_FD];
  s->pty = req->has_pty;
  for (int i = 0; i < N_STDIO; i++)
    if (st->agent[i] >= 0) fcntl(st->agent[i], F_SETFL, O_NONBLOCK);
  // A deeper pipe lets a fast writer run ahead instead of waking the agent every 64 KiB.
  if (!s->pty) {
    fcntl(s->out.fd, F_SETPIPE_SZ, PIPE_BYTES);
    fcntl(s->err.fd, F_SETPIPE_SZ, PIPE_BYTES);
  }
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = id;
  m.which_body = microsandbox_agent_GuestMessage_started_tag;
  m.body.started.pid = (uint32_t)pid;
  conn_send(c, &m);
  exec_update(s);
}

void exec_start(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req) {
  struct ids ids;
  if (!exec_check(c, id, req) || !resolve_ids(c, id, req, &ids)) return;
  struct stdio st;
  struct cgroup cgroup = {0};
  uint64_t start = 0;
  pid_t pid = exec_spawn(c, id, req, &ids, &st, &cgroup, &start);
  if (pid > 0) exec_session(c, id, req, pid, &cgroup, start, &st);
}

// Whether the process's stdout, stderr or channel are open still (held by it, or by background
// children after it exited).
static bool streams_open(const struct session *s) { return s->out.fd >= 0 || s->err.fd >= 0 || s->chan.fd >= 0; }

void exec_update(struct session *s) {
  bool produce = !conn_paused(s->conn) && s->unacked < s->window;
  watch_set(&s->out, produce ? EPOLLIN : 0);
  watch_set(&s->err, produce ? EPOLLIN : 0);
  watch_set(&s->in, s->in_q.head ? EPOLLOUT : 0);
  // The channel is read once the output owed ahead of its bytes went (read_channel).
  bool channel_in = produce && !s->out_owed && !s->err_owed;
  watch_set(&s->chan, (channel_in ? EPOLLIN : 0) | (s->chan_q.head ? EPOLLOUT : 0));
}

// Sends Exit and ends the session once the process exited and its output is drained; while the
// connection is suspended the Exit waits for Resume, so a copy's host never misses it.
void exec_finish(struct session *s) {
  if (!s->exited || streams_open(s) || s->conn->suspended) return;
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = s->id;
  m.which_body = microsandbox_agent_GuestMessage_exit_tag;
  microsandbox_agent_Exit *e = &m.body.exit;
  if (WIFSIGNALED(s->status)) {
    e->code = -1;
    e->signal = (microsandbox_agent_SignalName)WTERMSIG(s->status);
  } else {
    e->code = WEXITSTATUS(s->status);
  }
  e->timed_out = s->timed_out;
  e->duration_ns = s->end_ns - s->start_ns;
  struct tree_counters used = {0};
  cgroup_close(&s->cgroup, &used);
  e->oom_kills = used.oom_kills;
  e->pids_limit_hits = used.pids_limit_hits;
  e->cpu_time_ns = used.cpu_ns;
  e->peak_memory_bytes = (uint64_t)s->maxrss_kb * 1024;
  conn_send(s->conn, &m);
  session_free(s);
}

// Host bytes written to the process (or dropped): credited, but not those a restored copy's host
// never sent.
static void credit_input(struct session *s, uint32_t done) {
  uint32_t stale = done < s->in_stale ? done : s->in_stale;
  s->in_stale -= stale;
  done -= stale;
  s->in_pending -= done;
  if (done) send_credit(s->conn, s->id, done);
}

// Writes queued host bytes to the process's stdin or channel; credits the host for what reached
// it, or was dropped because the process closed its end (so the host never waits on a reader that
// is gone).
static void pump_input(struct session *s, struct watch *w, struct inbox *q) {
  uint32_t done = 0;
  while (q->head) {
    struct chunk *k = q->head;
    ssize_t n = write(w->fd, k->data + k->off, k->len - k->off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0) {  // EPIPE: nobody reads it any more
      done += inbox_clear(q);
      q->eof = true;
      break;
    }
    k->off += (size_t)n;
    done += (uint32_t)n;
    if (k->off == k->len) {
      q->head = k->next;
      if (!q->head) q->tail = NULL;
      free(k);
    }
  }
  credit_input(s, done);
  if (!q->head && q->eof) {
    if (w == &s->in) watch_close(w);  // the process reads end of file
    else shutdown(w->fd, SHUT_WR);    // the channel's other direction carries on
  }
  exec_update(s);
}

void exec_on_data(struct session *s, const microsandbox_agent_Data *d) {
  size_t len = d->data ? d->data->size : 0;
  struct watch *w = d->channel ? &s->chan : &s->in;
  struct inbox *q = d->channel ? &s->chan_q : &s->in_q;
  if (w->fd < 0) {
    // No stdin pipe or channel (not requested, or already closed): the bytes have nowhere to go.
    if (len) send_credit(s->conn, s->id, (uint32_t)len);
    return;
  }
  if (len > LIMIT(MAX_CHUNK_BYTES) || s->in_pending + len > LIMIT(DEFAULT_WINDOW_BYTES)) {
    send_error(s->conn, s->id, ERR(PROTOCOL), 0, "%s data beyond the credit window", d->channel ? "channel" : "stdin");
    exec_kill(s);
    return;
  }
  if (len) {
    if (!chunk_append(&q->head, &q->tail, d->data->bytes, len)) {
      send_credit(s->conn, s->id, (uint32_t)len);  // dropped, but the host must not stall
      return;
    }
    s->in_pending += (uint32_t)len;
  }
  if (d->eof && (d->channel || !s->pty)) q->eof = true;  // a terminal's input ends with ^D, not by closing it
  pump_input(s, w, q);
}

// Bytes a pipe or socket holds now; 0 for a closed one.
static uint32_t unread(const struct watch *w) {
  int n = 0;
  if (w->fd < 0 || ioctl(w->fd, FIONREAD, &n) < 0 || n < 0) return 0;
  return (uint32_t)n;
}

// Room for the next chunk of output under the session's credit; 0 while output is paused.
static size_t output_room(const struct session *s) {
  size_t room = s->window - s->unacked;
  if (conn_paused(s->conn)) return 0;
  return room > CHUNK_BYTES ? CHUNK_BYTES : room;
}

// The process closed its channel (or exited, or left it to background children that stayed quiet):
// host bytes still queued for it have nowhere to go and are credited.
static void close_channel(struct session *s) {
  watch_close(&s->chan);
  s->chan_due = 0;
  credit_input(s, inbox_clear(&s->chan_q));
}

// Reads stdout or stderr as far as credit goes; what was owed ahead of the channel comes off.
static void read_output(struct session *s, struct watch *w) {
  uint32_t *owed = w->type == W_STDOUT ? &s->out_owed : &s->err_owed;
  size_t room = output_room(s);
  if (room == 0) {
    exec_update(s);
    return;
  }
  ssize_t n = read(w->fd, chunk_buf(), room);
  if (n > 0) {
    s->unacked += (uint32_t)n;
    *owed -= (uint32_t)n < *owed ? (uint32_t)n : *owed;
    send_chunk(s->conn, s->id, w->type == W_STDOUT ? microsandbox_agent_Output_Stream_STDOUT : microsandbox_agent_Output_Stream_STDERR, (size_t)n);
    exec_update(s);
    return;
  }
  if (n < 0 && errno == EINTR) return;
  *owed = 0;  // nothing left: whatever more was owed, another reader of the pipe took
  if (n < 0 && errno == EAGAIN) {
    exec_update(s);
    return;
  }
  watch_close(w);  // EOF or a broken pipe
  exec_update(s);
  exec_finish(s);
}

// The channel's bytes reach the host behind the output its process wrote before them. When the
// channel has bytes, whatever stdout and stderr hold at that moment was written before them (a
// write to a pipe is in it when it returns) and is owed first; counting those bytes, rather than
// reading the pipes dry, keeps a process that never stops printing from holding back its channel.
static void read_channel(struct session *s) {
  if (!s->chan_due) {
    s->chan_due = unread(&s->chan);
    if (!s->chan_due) {
      // Nothing to read: the process closed its end, or the wakeup was stale.
      char b;
      ssize_t n = recv(s->chan.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close_channel(s);
        exec_finish(s);
      }
      return;
    }
    s->out_owed = unread(&s->out);
    s->err_owed = unread(&s->err);
  }
  size_t room = output_room(s);
  if (room > s->chan_due) room = s->chan_due;
  if (room == 0 || s->out_owed || s->err_owed) {
    exec_update(s);  // the pipes go first, or credit comes first: either re-arms the channel
    return;
  }
  ssize_t n = read(s->chan.fd, chunk_buf(), room);
  if (n > 0) {
    s->chan_due -= (uint32_t)n;
    s->unacked += (uint32_t)n;
    send_chunk(s->conn, s->id, microsandbox_agent_Output_Stream_CHANNEL, (size_t)n);
    exec_update(s);
    return;
  }
  if (n < 0 && errno == EINTR) return;
  s->chan_due = 0;
  if (n < 0 && errno == EAGAIN) return;
  close_channel(s);
  exec_finish(s);
}

void exec_on_pipe(struct watch *w, uint32_t events) {
  struct session *s = w->owner;
  if (w->type == W_STDIN) {
    pump_input(s, w, &s->in_q);
  } else if (w->type == W_CHANNEL) {
    if (events & EPOLLOUT) pump_input(s, w, &s->chan_q);
    if (events & ~(uint32_t)EPOLLOUT) read_channel(s);  // readable, or the process closed its end
  } else {
    read_output(s, w);
  }
}

// The protocol numbers signals as Linux does on the guest architectures this agent is built for.
_Static_assert(microsandbox_agent_SignalName_SIGKILL == SIGKILL && microsandbox_agent_SignalName_SIGTERM == SIGTERM &&
                   microsandbox_agent_SignalName_SIGUSR1 == SIGUSR1 && microsandbox_agent_SignalName_SIGCHLD == SIGCHLD &&
                   microsandbox_agent_SignalName_SIGSYS == SIGSYS,
               "SignalName must match this platform's signal numbers");

// The group outlives its leader while background members hold the session's pipes; it cannot be
// reused by another process group until they are gone, so signalling it stays safe until then.
static bool group_alive(const struct session *s) { return !s->exited || streams_open(s); }

void exec_signal(struct session *s, int sig) {
  if (sig > 0 && sig <= microsandbox_agent_SignalName_SIGSYS && group_alive(s)) kill(-s->pid, sig);
}

void exec_kill(struct session *s) {
  if (group_alive(s)) kill(-s->pid, SIGKILL);
}

static struct session *find_pid(pid_t pid) {
  for (struct conn *c = g_conns; c; c = c->next)
    for (struct session *s = c->sessions; s; s = s->next)
      if (s->kind == S_EXEC && s->pid == pid && !s->exited) return s;
  return NULL;
}

// Reaps every exited child: our sessions' processes and, as PID 1, orphans of the whole guest.
void exec_reap(void) {
  int status;
  pid_t pid;
  struct rusage ru;
  while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
    struct session *s = find_pid(pid);
    if (!s) continue;
    s->exited = true;
    s->status = status;
    s->maxrss_kb = ru.ru_maxrss;
    s->end_ns = now_ns();
    s->grace_ns = s->end_ns + EXIT_GRACE_NS;
    exec_finish(s);
  }
}

// A pipe or channel kept open by a background child after the process exited: close it once it
// has no unread bytes, unless output is paused for credit (then its bytes are still owed to the host).
static void expire_stream(struct session *s, struct watch *w) {
  if (w->fd < 0 || !w->registered || unread(w) > 0) return;
  if (w == &s->chan) {
    close_channel(s);
    return;
  }
  watch_close(w);
  // Output still owed ahead of the channel was read by another holder of the pipe: none is coming.
  *(w == &s->out ? &s->out_owed : &s->err_owed) = 0;
}

void exec_timers(uint64_t now, int64_t *next_ms) {
  uint64_t next = UINT64_MAX;
  for (struct conn *c = g_conns, *cn; c; c = cn) {
    cn = c->next;
    // A send below can find the host gone and close `c` with all its sessions.
    for (struct session *s = c->sessions, *following; s && !c->closed; s = following) {
      following = s->next;
      if (s->kind != S_EXEC) continue;
      if (s->deadline_ns && group_alive(s)) {
        if (now >= s->deadline_ns) {
          kill(-s->pid, SIGKILL);
          s->timed_out = true;
          s->deadline_ns = 0;
        } else if (s->deadline_ns < next) {
          next = s->deadline_ns;
        }
      }
      if (s->exited && streams_open(s)) {
        if (now >= s->grace_ns) {
          expire_stream(s, &s->out);
          expire_stream(s, &s->err);
          expire_stream(s, &s->chan);
          s->grace_ns = now + EXIT_GRACE_NS;
          exec_finish(s);
        } else if (s->grace_ns < next) {
          next = s->grace_ns;
        }
      }
    }
  }
  if (next != UINT64_MAX) {
    uint64_t ms = (next - now + 999999) / 1000000;
    *next_ms = ms > INT32_MAX ? INT32_MAX : (int64_t)ms;
  }
}
