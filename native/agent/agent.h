// Shared types of the guest agent: one epoll loop serving connections, each with many sessions
// (processes and file transfers). See proto/agent.proto for the protocol.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.pb.h"

#define LIMIT(name) ((uint32_t)microsandbox_agent_Limit_##name)
#define ERR(kind) microsandbox_agent_Error_Kind_##kind

// The write queue of a connection above which the agent stops producing (reading pipes and
// files, reading requests) until the host drained it below the low mark. Bounds agent memory.
#define QUEUE_HIGH (4u << 20)
#define QUEUE_LOW (1u << 20)

// After a process exits, pipes still held open by its background children are read until they
// stay idle this long, then closed so Exit can be sent.
#define EXIT_GRACE_NS (100ull * 1000 * 1000)

enum watch_type { W_LISTEN, W_CONN, W_SIGNAL, W_STDOUT, W_STDERR, W_STDIN, W_CHANNEL, W_INOTIFY };

// One fd registered with epoll; epoll_event.data.ptr points here.
struct watch {
  int fd;
  uint8_t type;
  bool registered;
  uint32_t events;
  void *owner;
};

struct chunk {
  struct chunk *next;
  size_t len, off;
  uint8_t data[];
};

// Appends a copy of `data` to a chunk list.
bool chunk_append(struct chunk **head, struct chunk **tail, const void *data, size_t len);

// Host bytes on their way to a process: its stdin, or its channel.
struct inbox {
  struct chunk *head, *tail;
  bool eof;  // the host ended them: close (stdin) or half-close (the channel) once written
};
// Frees what an inbox holds; returns how many bytes that was.
uint32_t inbox_clear(struct inbox *q);

struct conn;

enum session_kind { S_EXEC, S_READ, S_WRITE, S_WATCH };

// A process tree's counters: OOM kills, forks refused at the pids limit, CPU time.
struct tree_counters {
  uint64_t oom_kills, pids_limit_hits, cpu_ns;
};

// A process tree's cgroup: its serial (0: none) and its counters when it was handed out (a
// reused cgroup's run on from its previous user's).
struct cgroup {
  uint32_t serial;
  struct tree_counters base;
};

struct session {
  struct session *next, *prev;  // in conn->sessions
  struct conn *conn;
  uint32_t id;
  enum session_kind kind;
  uint32_t window, unacked;  // output credit (guest -> host)
  uint32_t in_pending;       // bytes received from the host and not yet written (host -> guest)
  uint32_t in_stale;         // of those queued, bytes from before a restore: written, never credited
  // S_EXEC
  pid_t pid;
  struct watch out, err, in, chan;
  struct inbox in_q, chan_q;  // for stdin and the channel
  // Bytes of the channel that may go to the host once `out_owed` and `err_owed` bytes of stdout
  // and stderr went: what the pipes held when those channel bytes were there (see exec.c).
  uint32_t chan_due, out_owed, err_owed;
  bool exited, timed_out;
  int status;
  long maxrss_kb;  // the process's ru_maxrss at its exit
  bool pty;        // out.fd is a terminal's master side (in.fd a duplicate of it)
  uint64_t start_ns, end_ns, deadline_ns, grace_ns;
  struct cgroup cgroup;  // the tree's, serial 0 when none
  // S_WATCH: out.fd is its inotify instance
  struct fswatch *fsw;
  // S_READ / S_WRITE
  int fd;
  uint64_t remaining, total;
  char *tmp_path, *final_path;
};

struct conn {
  struct conn *next, *prev;
  struct watch w;
  bool closing;  // flush the queue, then close
  bool broken;   // a write failed: closed at the end of the epoll batch, not under a caller's feet
  uint8_t *rbuf;
  size_t rlen;
  struct chunk *q_head, *q_tail;
  size_t queued;
  bool congested;
  // Suspend: producers paused; once `suspend_mark` (the Suspended frame) is written, `quiet`
  // holds every later frame until Resume. A quiet connection is never congested: nobody reads it,
  // and its host frames (the Resume) must still be read.
  bool suspended, quiet;
  struct chunk *suspend_mark;
  struct session *sessions;
  uint32_t nsessions;
  // Linger: a lost host leaves the sessions waiting for another (see proto/agent.proto).
  bool linger;
  // The host was lost under linger: the channel is gone (a VM's port fd is kept, unwatched, to be
  // used again), nothing is read or sent, the sessions are held as under Suspend.
  bool orphan;
  // Taken up again by a new host after being an orphan: its Resume decides which sessions stay.
  bool reattached;
  bool closed;  // conn_close ran: freed after the epoll batch
};

// Whether the sessions of `c` must not produce output now: a full queue, or a suspended VM.
static inline bool conn_paused(const struct conn *c) { return c->congested || c->suspended; }

// main.c
extern int g_epoll;
extern bool g_keep_channel;    // a VM's virtio port: an orphan keeps its fd to use it again
extern bool g_shutdown;        // a Shutdown was answered: exit once every connection is flushed
extern uint64_t g_generation;  // of the last Resume that made this VM a copy (0: booted)
extern bool g_owns_machine;    // booted a VM (a BootConfig): its clock, name and ids are ours
extern microsandbox_agent_BootEvent g_boot[16];
extern pb_size_t g_boot_count;
void watch_set(struct watch *w, uint32_t events);
void watch_close(struct watch *w);
uint64_t now_ns(void);
void boot_event(const char *name);

// frame.c: the host's frames
// How much of `buf` the next frame takes: 0 while it is not all there, -1 when its length is over
// MAX_FRAME_BYTES (the stream cannot go on), else 4 + its length, which goes in *body_len.
long frame_next(const uint8_t *buf, size_t len, uint32_t *body_len);
// Decodes a frame's body into `m` (pb_release it whatever the answer); false with the reason in *why.
bool frame_decode(const uint8_t *body, size_t len, microsandbox_agent_HostMessage *m, const char **why);

// conn.c
struct conn *conn_new(int fd);
void conn_on_event(struct conn *c, uint32_t events);
void conn_close(struct conn *c);
// A new host on an orphan's channel (fd: the kept port, or a new socket): Hello, then suspended
// until its Resume.
void conn_reattach(struct conn *c, int fd);
bool conn_send(struct conn *c, microsandbox_agent_GuestMessage *m);
void send_error(struct conn *c, uint32_t session, microsandbox_agent_Error_Kind kind, int errnum, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void send_done(struct conn *c, uint32_t session, uint64_t size);
void send_credit(struct conn *c, uint32_t session, uint32_t bytes);
// Bulk output: read at most CHUNK_BYTES into chunk_buf(), then send_chunk() frames them.
#define CHUNK_BYTES (65536 - 32)
uint8_t *chunk_buf(void);
bool send_chunk(struct conn *c, uint32_t session, int stream, size_t len);
struct session *session_new(struct conn *c, uint32_t id, enum session_kind kind);
struct session *session_find(struct conn *c, uint32_t id);
void session_free(struct session *s);
void sessions_update(struct conn *c);
void graveyard_flush(void);
extern struct conn *g_conns;

// exec.c
void exec_start(struct conn *c, uint32_t id, const microsandbox_agent_Exec *req);
void exec_on_pipe(struct watch *w, uint32_t events);
void exec_on_data(struct session *s, const microsandbox_agent_Data *d);
void exec_signal(struct session *s, int sig);
// Sets the terminal size of a session started with a pty (the foreground group gets SIGWINCH).
void exec_resize(struct session *s, uint32_t rows, uint32_t cols);
void exec_reap(void);
void exec_update(struct session *s);
void exec_finish(struct session *s);
void exec_timers(uint64_t now, int64_t *next_ms);
void exec_kill(struct session *s);

// files.c
void file_read_start(struct conn *c, uint32_t id, const microsandbox_agent_ReadFile *req);
void file_read_pump(struct session *s);
void file_write_start(struct conn *c, uint32_t id, const microsandbox_agent_WriteFile *req);
void file_write_data(struct session *s, const microsandbox_agent_Data *d);
void file_abort(struct session *s);
void file_list(struct conn *c, uint32_t id, const char *path);
void file_stat(struct conn *c, uint32_t id, const char *path);
void file_mkdir(struct conn *c, uint32_t id, const microsandbox_agent_Mkdir *req);
void file_remove(struct conn *c, uint32_t id, const microsandbox_agent_Remove *req);
void file_rename(struct conn *c, uint32_t id, const char *from, const char *to);

// init.c: bringing up a VM as its BootConfig (proto/agent.proto) asks. The host writes it at
// BOOT_CONFIG_PATH in the guest's first root (src/vm/guest.ts names the same file).
#define BOOT_CONFIG_PATH "/msb-boot.pb"
extern microsandbox_agent_BootConfig g_boot_config;
// Reads BOOT_CONFIG_PATH into g_boot_config; false when there is none (the agent runs on a host).
bool boot_config_read(void);
// As the guest's PID 1 (QEMU): kernel filesystems, modules, the root, volumes, network.
void init_guest(void);
// Under libkrun's own init, which is PID 1 and has set up the rest: only the root.
void init_root_only(void);

// cgroup.c: one cgroup per exec'd process tree (only in a VM)
bool cgroup_setup(unsigned max_pids);
// Gets the next exec a cgroup; returns its directory, for the child to start in (-1: none).
int cgroup_open(struct cgroup *cg);
// Takes the cgroup's count of refused forks now as its zero (after the agent's own refused fork).
void cgroup_rebase(struct cgroup *cg);
// Reads what the tree used, and keeps its cgroup for reuse or removes it once it is empty.
void cgroup_close(const struct cgroup *cg, struct tree_counters *used);
// Processes the sandbox's commands run now.
uint32_t cgroup_processes(void);
// watch.c: Watch sessions.
void watch_start(struct conn *c, uint32_t id, const microsandbox_agent_Watch *req);
void watch_on_event(struct watch *w);
// Reads inotify while the session has credit and the connection takes frames.
void watch_update(struct session *s);
void fswatch_free(struct session *s);
// A rename's first half that waited long enough for its second becomes a delete.
void watch_timers(uint64_t now, int64_t *next_ms);
// metrics.c: answers Metrics.
void metrics_send(struct conn *c, uint32_t id);
_Noreturn void init_poweroff(void);

// identity.c: a restored copy of a VM takes randomness, time and identity of its own. Bounds of
// a Resume: what RNDADDENTROPY takes here, HOST_NAME_MAX, a UUID.
#define RESUME_MAX_ENTROPY 512
#define RESUME_MAX_HOSTNAME 64
#define RESUME_BOOT_ID_LEN 36
void identity_renew(const microsandbox_agent_Resume *r);

// util.c
int mkdir_parents(const char *path, mode_t mode);
