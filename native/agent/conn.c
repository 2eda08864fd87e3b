// Connections: frame parsing and dispatch, the bounded write queue, and session bookkeeping.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "agent.h"

#define RBUF_CAP (4 + LIMIT(MAX_FRAME_BYTES) + LIMIT(MAX_CHUNK_BYTES))

struct conn *g_conns;
// Closed connections and ended sessions are freed after the current epoll batch, so events
// already fetched for them find a closed watch instead of freed memory.
static struct conn *g_dead_conns;
static struct session *g_dead_sessions;

static void conn_flush(struct conn *c);
static void quiet_after_last(struct conn *c);

// What each kind of session does when its connection needs something of it; NULL where that kind
// has nothing to do. The connection's code below never asks a session what kind it is.
struct session_ops {
  // Credit or congestion changed: produce again, or stop.
  void (*update)(struct session *s);
  // Data from the host; NULL: the kind takes none (a protocol error).
  void (*data)(struct session *s, const microsandbox_agent_Data *d);
  // Stops the session's work without a word: an exec's process group is killed, a file transfer dropped.
  void (*stop)(struct session *s);
  // The session reports its own end after stop() (an exec's Exit follows its output); other kinds
  // are ended by the connection, a Cancel with Error(CANCELLED).
  bool reports_end;
  // After Resume: what was held back while suspended goes out (an exec's Exit).
  void (*resumed)(struct session *s);
  void (*signal)(struct session *s, int sig);
  void (*resize)(struct session *s, uint32_t rows, uint32_t cols);
};

static const struct session_ops session_ops[] = {
    [S_EXEC] = {.update = exec_update,
                .data = exec_on_data,
                .stop = exec_kill,
                .reports_end = true,
                .resumed = exec_finish,
                .signal = exec_signal,
                .resize = exec_resize},
    [S_READ] = {.update = file_read_pump, .stop = file_abort},
    [S_WRITE] = {.data = file_write_data, .stop = file_abort},
    [S_WATCH] = {.update = watch_update},
};

static const struct session_ops *ops(const struct session *s) { return &session_ops[s->kind]; }

static void session_update(struct session *s) {
  if (ops(s)->update) ops(s)->update(s);
}

// Ends `s` without a word: its connection, the agent or this copy of the VM is done with it.
static void session_end(struct session *s) {
  if (ops(s)->stop) ops(s)->stop(s);
  session_free(s);
}

static void conn_arm(struct conn *c) {
  uint32_t ev = 0;
  if (!c->closing && !c->congested) ev |= EPOLLIN;
  if (c->q_head && !c->quiet) ev |= EPOLLOUT;
  // A closing connection with nothing left to send is closed by conn_flush, not left unwatched.
  watch_set(&c->w, ev ? ev : EPOLLOUT);
}

static void send_hello(struct conn *c) {
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.which_body = microsandbox_agent_GuestMessage_hello_tag;
  microsandbox_agent_Hello *h = &m.body.hello;
  h->protocol_version = LIMIT(PROTOCOL_VERSION);
  h->agent_version = (char *)AGENT_VERSION;
  h->boot_count = g_boot_count;
  memcpy(h->boot, g_boot, sizeof(g_boot[0]) * g_boot_count);
  h->pid = (uint32_t)getpid();
  h->generation = g_generation;
  conn_send(c, &m);
}

struct conn *conn_new(int fd) {
  struct conn *c = calloc(1, sizeof *c);
  if (!c || !(c->rbuf = malloc(RBUF_CAP))) {
    free(c);
    close(fd);
    return NULL;
  }
  c->w = (struct watch){.fd = fd, .type = W_CONN, .owner = c};
  c->next = g_conns;
  if (g_conns) g_conns->prev = c;
  g_conns = c;
  conn_arm(c);
  send_hello(c);
  return c;
}

static void queue_clear(struct conn *c) {
  while (c->q_head) {
    struct chunk *k = c->q_head;
    c->q_head = k->next;
    free(k);
  }
  c->q_tail = NULL;
  c->queued = 0;
}

void conn_close(struct conn *c) {
  if (c->closed) return;
  c->closed = true;
  while (c->sessions) session_end(c->sessions);
  watch_close(&c->w);
  queue_clear(c);
  if (c->prev) c->prev->next = c->next;
  else g_conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = g_dead_conns;
  g_dead_conns = c;
}

// A port's bytes from a host that left: its next host starts a stream of its own. Bounded: a host
// that is gone sends no more.
static void drain_port(struct conn *c) {
  for (int round = 0; round < 64; round++) {
    ssize_t n = read(c->w.fd, c->rbuf, RBUF_CAP);
    if (n <= 0 && !(n < 0 && errno == EINTR)) return;
  }
}

// The host of `c` is gone (end of file, a hang-up, a failed write). Without linger its sessions end
// with it. With linger `c` becomes an orphan: what it queued and half-read is lost with the host,
// and its sessions are held as under Suspend for the next host's Resume. A VM's agent keeps its
// orphan, sessions or not, to take up again once a host is back (main.c); an agent on a host
// frees one left with nothing to hold.
static void conn_lost(struct conn *c) {
  c->broken = false;
  if (c->closed || c->orphan) return;
  if (!c->linger || c->closing || (!c->sessions && !g_owns_machine)) {
    conn_close(c);
    return;
  }
  c->orphan = true;
  c->reattached = false;
  c->suspended = true;
  c->quiet = c->congested = false;
  c->suspend_mark = NULL;
  queue_clear(c);
  c->rlen = 0;
  sessions_update(c);
  if (g_keep_channel) {
    watch_set(&c->w, 0);  // a port without a host reads as hung up: polled by main.c instead
    drain_port(c);
  } else {
    watch_close(&c->w);
  }
}

void conn_reattach(struct conn *c, int fd) {
  c->w.fd = fd;
  c->orphan = false;
  c->reattached = true;
  c->suspended = true;
  conn_arm(c);
  // The new host hears Hello first, then nothing until its Resume, which decides what carries on.
  send_hello(c);
  quiet_after_last(c);
}

void graveyard_flush(void) {
  for (struct conn *c = g_conns, *next; c; c = next) {
    next = c->next;
    if (c->broken) conn_lost(c);
  }
  while (g_dead_sessions) {
    struct session *s = g_dead_sessions;
    g_dead_sessions = s->next;
    free(s);
  }
  while (g_dead_conns) {
    struct conn *c = g_dead_conns;
    g_dead_conns = c->next;
    free(c->rbuf);
    free(c);
  }
}

// ------------------------------------------------------------------ sending

// Frames are encoded into one static buffer and written straight away when nothing is queued;
// only what the channel does not take is copied into the queue. Bulk payloads are not even
// encoded: they are read into g_out behind room for their frame's header, the encoder's write of
// them (always the last field) is skipped, and the header is copied in front, so a chunk goes out
// in one contiguous write from where it was read. Frames of bulk output are at most 64 KiB: a
// virtio-serial port takes 32 KiB per write, so each costs two writes (and two notifications of
// the VMM), with no remainder left to queue and flush on another turn of the loop.
static uint8_t g_wbuf[4 + LIMIT(MAX_FRAME_BYTES)];
#define CHUNK_HEADROOM 32
static uint8_t g_out[CHUNK_HEADROOM + CHUNK_BYTES];
_Static_assert(CHUNK_HEADROOM + CHUNK_BYTES == 65536 && CHUNK_BYTES <= LIMIT(MAX_CHUNK_BYTES), "bulk frames are 64 KiB");

bool chunk_append(struct chunk **head, struct chunk **tail, const void *data, size_t len) {
  struct chunk *k = malloc(sizeof *k + len);
  if (!k) return false;
  memcpy(k->data, data, len);
  k->len = len;
  k->off = 0;
  k->next = NULL;
  if (*tail) (*tail)->next = k;
  else *head = k;
  *tail = k;
  return true;
}

uint32_t inbox_clear(struct inbox *q) {
  uint32_t bytes = 0;
  while (q->head) {
    struct chunk *k = q->head;
    q->head = k->next;
    bytes += (uint32_t)(k->len - k->off);
    free(k);
  }
  q->tail = NULL;
  return bytes;
}

struct frame_writer {
  size_t len;           // header bytes in g_wbuf (after the 4-byte length)
  const void *payload;  // left out: it is already where it goes
  size_t payload_len;
  bool payload_seen;
};

static bool frame_write(pb_ostream_t *os, const pb_byte_t *buf, size_t count) {
  struct frame_writer *w = os->state;
  if (w->payload && buf == w->payload && count == w->payload_len && !w->payload_seen) {
    w->payload_seen = true;
    return true;
  }
  if (w->payload_seen || w->len + count > LIMIT(MAX_FRAME_BYTES)) return false;
  memcpy(g_wbuf + 4 + w->len, buf, count);
  w->len += count;
  return true;
}

// Writes what the channel takes now. A failed write marks the connection broken instead of
// closing it: callers hold sessions of it and may free them themselves; graveyard_flush closes it
// once the batch is done.
static size_t write_now(struct conn *c, const uint8_t *p, size_t len) {
  size_t sent = 0;
  while (sent < len) {
    ssize_t n = write(c->w.fd, p + sent, len - sent);
    if (n > 0) {
      sent += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (n < 0 && errno != EAGAIN) c->broken = true;  // the host is gone
      break;
    }
  }
  return sent;
}

// Sends `m`; a bulk payload (`payload_len` bytes at chunk_buf(), the message's last field) goes
// with it without being encoded.
static bool send_frame(struct conn *c, microsandbox_agent_GuestMessage *m, const void *payload, size_t payload_len) {
  if (c->w.fd < 0 || c->broken || c->orphan) return false;
  struct frame_writer w = {.payload = payload, .payload_len = payload_len};
  pb_ostream_t os = {.callback = frame_write, .state = &w, .max_size = LIMIT(MAX_FRAME_BYTES)};
  if (!pb_encode(&os, microsandbox_agent_GuestMessage_fields, m) || (payload && !w.payload_seen)) return false;
  size_t size = os.bytes_written;
  g_wbuf[0] = (uint8_t)(size >> 24);
  g_wbuf[1] = (uint8_t)(size >> 16);
  g_wbuf[2] = (uint8_t)(size >> 8);
  g_wbuf[3] = (uint8_t)size;
  const uint8_t *frame = g_wbuf;
  if (payload) {
    if (4 + w.len > CHUNK_HEADROOM) return false;
    frame = chunk_buf() - (4 + w.len);
    memmove((uint8_t *)frame, g_wbuf, 4 + w.len);
  }
  size_t len = 4 + size, sent = 0;
  if (!c->q_head && !c->quiet) {
    sent = write_now(c, frame, len);
    if (c->broken) return false;
    if (sent == len) return true;
  }
  if (!chunk_append(&c->q_head, &c->q_tail, frame + sent, len - sent)) {
    c->broken = true;  // half a frame may have gone out: the stream cannot go on
    return false;
  }
  c->queued += len - sent;
  conn_arm(c);
  if (!c->congested && !c->quiet && c->queued > QUEUE_HIGH) {
    c->congested = true;
    conn_arm(c);
    sessions_update(c);
  }
  return true;
}

bool conn_send(struct conn *c, microsandbox_agent_GuestMessage *m) { return send_frame(c, m, NULL, 0); }

static void conn_flush(struct conn *c) {
  while (c->q_head && !c->quiet) {
    struct chunk *k = c->q_head;
    ssize_t n = write(c->w.fd, k->data + k->off, k->len - k->off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      conn_lost(c);
      return;
    }
    k->off += (size_t)n;
    c->queued -= (size_t)n;
    if (k->off < k->len) continue;
    c->q_head = k->next;
    if (!c->q_head) c->q_tail = NULL;
    if (k == c->suspend_mark) {
      c->suspend_mark = NULL;
      c->quiet = true;  // Suspended is out: nothing more until Resume
    }
    free(k);
  }
  if (c->closing && !c->q_head) {
    conn_close(c);
    return;
  }
  bool relieved = c->congested && (c->queued < QUEUE_LOW || c->quiet);
  if (relieved) c->congested = false;
  conn_arm(c);
  if (relieved) sessions_update(c);
}

void send_error(struct conn *c, uint32_t session, microsandbox_agent_Error_Kind kind, int errnum, const char *fmt, ...) {
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = session;
  m.which_body = microsandbox_agent_GuestMessage_error_tag;
  m.body.error.kind = kind;
  m.body.error.errnum = errnum;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m.body.error.message, sizeof m.body.error.message, fmt, ap);
  va_end(ap);
  conn_send(c, &m);
}

void send_done(struct conn *c, uint32_t session, uint64_t size) {
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = session;
  m.which_body = microsandbox_agent_GuestMessage_done_tag;
  m.body.done.size = size;
  conn_send(c, &m);
}

void send_credit(struct conn *c, uint32_t session, uint32_t bytes) {
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = session;
  m.which_body = microsandbox_agent_GuestMessage_credit_tag;
  m.body.credit.bytes = bytes;
  conn_send(c, &m);
}

uint8_t *chunk_buf(void) { return g_out + CHUNK_HEADROOM; }

bool send_chunk(struct conn *c, uint32_t session, int stream, size_t len) {
  // The encoder sees the payload's size only: its bytes are skipped, and are at chunk_buf().
  static pb_bytes_array_t size_only;
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = session;
  m.which_body = microsandbox_agent_GuestMessage_output_tag;
  m.body.output.stream = (microsandbox_agent_Output_Stream)stream;
  size_only.size = (pb_size_t)len;
  m.body.output.data = &size_only;
  return send_frame(c, &m, size_only.bytes, len);
}

// ------------------------------------------------------------------ sessions

struct session *session_find(struct conn *c, uint32_t id) {
  for (struct session *s = c->sessions; s; s = s->next)
    if (s->id == id) return s;
  return NULL;
}

static void session_link(struct session *s, struct conn *c) {
  s->conn = c;
  s->prev = NULL;
  s->next = c->sessions;
  if (c->sessions) c->sessions->prev = s;
  c->sessions = s;
  c->nsessions++;
}

static void session_unlink(struct session *s) {
  struct conn *c = s->conn;
  if (s->prev) s->prev->next = s->next;
  else c->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  c->nsessions--;
}

struct session *session_new(struct conn *c, uint32_t id, enum session_kind kind) {
  struct session *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->id = id;
  s->kind = kind;
  s->window = LIMIT(DEFAULT_WINDOW_BYTES);
  s->fd = -1;
  s->out = (struct watch){.fd = -1, .type = W_STDOUT, .owner = s};
  s->err = (struct watch){.fd = -1, .type = W_STDERR, .owner = s};
  s->in = (struct watch){.fd = -1, .type = W_STDIN, .owner = s};
  s->chan = (struct watch){.fd = -1, .type = W_CHANNEL, .owner = s};
  session_link(s, c);
  return s;
}

void session_free(struct session *s) {
  session_unlink(s);
  watch_close(&s->out);
  watch_close(&s->err);
  watch_close(&s->in);
  watch_close(&s->chan);
  fswatch_free(s);
  if (s->fd >= 0) close(s->fd);
  inbox_clear(&s->in_q);
  inbox_clear(&s->chan_q);
  free(s->tmp_path);
  free(s->final_path);
  s->next = g_dead_sessions;
  g_dead_sessions = s;
}

// Lets every session of `c` produce again, or stop, after credit or congestion changed. A call
// made while one is running (a pump that flushed the queue) asks the running one to go again.
void sessions_update(struct conn *c) {
  static bool running, again;
  if (running) {
    again = true;
    return;
  }
  running = true;
  do {
    again = false;
    for (struct session *s = c->sessions, *next; s && !c->closed; s = next) {
      next = s->next;
      session_update(s);
    }
  } while (again && !c->closed);
  running = false;
}

// ------------------------------------------------------------------ receiving

// Opens session `id` for a new request, or answers why not.
static bool claim(struct conn *c, uint32_t id) {
  if (id == 0) {
    send_error(c, 0, ERR(BAD_REQUEST), 0, "requests need a non-zero session id");
    return false;
  }
  if (session_find(c, id)) {
    send_error(c, id, ERR(BAD_REQUEST), 0, "session %u is already open", id);
    return false;
  }
  if (c->nsessions >= LIMIT(MAX_SESSIONS)) {
    send_error(c, id, ERR(LIMIT), 0, "too many open sessions (limit %u)", LIMIT(MAX_SESSIONS));
    return false;
  }
  return true;
}

static void shutdown_all(struct conn *from, uint32_t id) {
  for (struct conn *c = g_conns; c; c = c->next)
    while (c->sessions) session_end(c->sessions);
  g_shutdown = true;
  for (struct conn *c = g_conns; c; c = c->next) c->quiet = false;  // a suspended VM is not saved after all
  send_done(from, id, 0);
  for (struct conn *c = g_conns, *next; c; c = next) {
    next = c->next;
    c->closing = true;
    conn_flush(c);
  }
}

// On a suspended connection the frame just sent is the last one written before Resume.
static void quiet_after_last(struct conn *c) {
  if (!c->suspended) return;
  if (c->q_head) c->suspend_mark = c->q_tail;
  else c->quiet = true;
  conn_arm(c);
}

// Suspend: pause every producer and answer Suspended after what is already queued.
static void suspend(struct conn *c) {
  c->suspended = true;
  sessions_update(c);
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.which_body = microsandbox_agent_GuestMessage_suspended_tag;
  c->quiet = false;  // asked again after the answer went out: answer again
  conn_send(c, &m);
  quiet_after_last(c);
}

static bool kept(const microsandbox_agent_Resume *r, uint32_t id) {
  for (pb_size_t i = 0; i < r->keep_count; i++)
    if (r->keep[i] == id) return true;
  return false;
}

// Resume: a new generation means this VM is a copy: new randomness, time and identity first,
// then only the kept sessions carry on, on this connection, with fresh credit (their host is new).
// The same generation does that only to sessions whose host was lost under linger: an orphan's,
// and this connection's own after a reattach.
static void resume(struct conn *c, const microsandbox_agent_Resume *r) {
  size_t entropy = r->entropy ? r->entropy->size : 0;
  size_t hostname = r->hostname ? strlen(r->hostname) : 0, boot_id = r->boot_id ? strlen(r->boot_id) : 0;
  if (entropy > RESUME_MAX_ENTROPY || hostname > RESUME_MAX_HOSTNAME || boot_id > RESUME_BOOT_ID_LEN || r->keep_count > LIMIT(MAX_SESSIONS)) {
    c->quiet = false;  // the host waits for this answer even while suspended
    send_error(c, 0, ERR(BAD_REQUEST), 0, "Resume out of bounds: entropy %zu bytes (at most %u), hostname %zu (%u), boot_id %zu (%u), keep %u (%u)", entropy,
               RESUME_MAX_ENTROPY, hostname, RESUME_MAX_HOSTNAME, boot_id, RESUME_BOOT_ID_LEN, (unsigned)r->keep_count, LIMIT(MAX_SESSIONS));
    quiet_after_last(c);
    return;
  }
  bool copy = r->generation != g_generation;
  if (copy) identity_renew(r);
  for (struct conn *k = g_conns, *kn; k; k = kn) {
    kn = k->next;
    // A copy's new host takes over every session; the same VM's, those whose host was lost.
    if (copy || k->orphan || (k == c && c->reattached)) {
      for (struct session *s = k->sessions, *next; s; s = next) {
        next = s->next;
        if (!kept(r, s->id) || (k != c && session_find(c, s->id))) {
          session_end(s);
          continue;
        }
        if (k != c) {
          session_unlink(s);
          session_link(s, c);
        }
        // Stdin bytes already here still reach the process, but the new host never sent them.
        s->unacked = 0;
        s->in_stale += s->in_pending;
        s->in_pending = 0;
      }
    }
    if (k->orphan && !k->sessions) conn_close(k);
  }
  g_generation = r->generation;
  // The copy's conversation starts at its Hello: what was held back answered the host that saved it.
  if (copy && c->quiet) {
    queue_clear(c);
    c->congested = false;
  }
  c->reattached = false;
  c->suspended = c->quiet = false;
  c->suspend_mark = NULL;
  send_hello(c);
  conn_arm(c);
  sessions_update(c);
  for (struct session *s = c->sessions, *next; s && !c->closed; s = next) {
    next = s->next;
    if (ops(s)->resumed) ops(s)->resumed(s);
  }
}

static void dispatch(struct conn *c, microsandbox_agent_HostMessage *m) {
  uint32_t id = m->session;
  struct session *s;
  switch (m->which_body) {
    case microsandbox_agent_HostMessage_exec_tag:
      if (claim(c, id)) exec_start(c, id, &m->body.exec);
      break;
    case microsandbox_agent_HostMessage_data_tag:
      // Data for a session that just ended races with its end; it is dropped.
      if (!(s = session_find(c, id))) break;
      if (ops(s)->data) ops(s)->data(s, &m->body.data);
      else send_error(c, id, ERR(PROTOCOL), 0, "session %u does not take data", id);
      break;
    case microsandbox_agent_HostMessage_credit_tag:
      if (!(s = session_find(c, id))) break;
      s->unacked -= m->body.credit.bytes < s->unacked ? m->body.credit.bytes : s->unacked;
      session_update(s);
      break;
    case microsandbox_agent_HostMessage_signal_tag:
      if ((s = session_find(c, id)) && ops(s)->signal) ops(s)->signal(s, (int)m->body.signal.signal);
      break;
    case microsandbox_agent_HostMessage_read_file_tag:
      if (claim(c, id)) file_read_start(c, id, &m->body.read_file);
      break;
    case microsandbox_agent_HostMessage_write_file_tag:
      if (claim(c, id)) file_write_start(c, id, &m->body.write_file);
      break;
    case microsandbox_agent_HostMessage_list_dir_tag:
      if (claim(c, id)) file_list(c, id, m->body.list_dir.path);
      break;
    case microsandbox_agent_HostMessage_stat_tag:
      if (claim(c, id)) file_stat(c, id, m->body.stat.path);
      break;
    case microsandbox_agent_HostMessage_mkdir_tag:
      if (claim(c, id)) file_mkdir(c, id, &m->body.mkdir);
      break;
    case microsandbox_agent_HostMessage_remove_tag:
      if (claim(c, id)) file_remove(c, id, &m->body.remove);
      break;
    case microsandbox_agent_HostMessage_rename_tag:
      if (claim(c, id)) file_rename(c, id, m->body.rename.from, m->body.rename.to);
      break;
    case microsandbox_agent_HostMessage_cancel_tag:
      if (!(s = session_find(c, id))) break;
      if (ops(s)->stop) ops(s)->stop(s);
      if (!ops(s)->reports_end) {
        send_error(c, id, ERR(CANCELLED), 0, "session %u cancelled", id);
        session_free(s);
      }
      break;
    case microsandbox_agent_HostMessage_resize_tag:
      if ((s = session_find(c, id)) && ops(s)->resize) ops(s)->resize(s, m->body.resize.rows, m->body.resize.cols);
      else send_error(c, id, ERR(BAD_REQUEST), 0, "session %u runs no process to resize", id);
      break;
    case microsandbox_agent_HostMessage_watch_tag:
      if (claim(c, id)) watch_start(c, id, &m->body.watch);
      break;
    case microsandbox_agent_HostMessage_metrics_tag:
      if (claim(c, id)) metrics_send(c, id);
      break;
    case microsandbox_agent_HostMessage_shutdown_tag: shutdown_all(c, id); break;
    case microsandbox_agent_HostMessage_suspend_tag:
      if (id == 0) suspend(c);
      else send_error(c, id, ERR(PROTOCOL), 0, "Suspend belongs on session 0, not %u", id);
      break;
    case microsandbox_agent_HostMessage_linger_tag:
      if (id == 0) c->linger = m->body.linger.on;
      else send_error(c, id, ERR(PROTOCOL), 0, "Linger belongs on session 0, not %u", id);
      break;
    case microsandbox_agent_HostMessage_resume_tag:
      if (id == 0) resume(c, &m->body.resume);
      else send_error(c, id, ERR(PROTOCOL), 0, "Resume belongs on session 0, not %u", id);
      break;
    default: send_error(c, id, ERR(PROTOCOL), 0, "frame has no known body (field %u)", (unsigned)m->which_body);
  }
}

static void handle_frame(struct conn *c, const uint8_t *buf, size_t len) {
  microsandbox_agent_HostMessage m = microsandbox_agent_HostMessage_init_zero;
  const char *why = "";
  if (frame_decode(buf, len, &m, &why)) dispatch(c, &m);
  else send_error(c, 0, ERR(PROTOCOL), 0, "undecodable frame of %zu bytes: %s", len, why);
  pb_release(microsandbox_agent_HostMessage_fields, &m);
}

static void conn_read(struct conn *c) {
  // A few reads per wakeup: one busy host must not starve the processes' pipes.
  for (int round = 0; round < 4; round++) {
    ssize_t n = read(c->w.fd, c->rbuf + c->rlen, RBUF_CAP - c->rlen);
    if (n == 0) {
      conn_lost(c);
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) conn_lost(c);
      return;
    }
    c->rlen += (size_t)n;
    size_t off = 0;
    for (;;) {
      uint32_t len;
      long whole = frame_next(c->rbuf + off, c->rlen - off, &len);
      if (whole == 0) break;
      if (whole < 0) {
        // The stream cannot be resynchronised after a bad length: answer, then hang up.
        c->quiet = false;  // hanging up: suspended or not, the answer goes out
        send_error(c, 0, ERR(PROTOCOL), 0, "frame length %u exceeds the limit of %u bytes", len, LIMIT(MAX_FRAME_BYTES));
        c->rlen = 0;
        c->closing = true;
        conn_flush(c);
        return;
      }
      handle_frame(c, c->rbuf + off + 4, len);
      off += (size_t)whole;
      if (c->closed) return;
      if (c->closing) break;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    if (c->closing || c->congested) return;
  }
}

void conn_on_event(struct conn *c, uint32_t events) {
  if (c->broken || c->orphan) return;  // an orphan's event fetched before it lost its host
  if (events & EPOLLOUT) conn_flush(c);
  if (c->closed || c->orphan) return;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->closing) conn_read(c);
  else if (events & (EPOLLHUP | EPOLLERR)) conn_close(c);  // hanging up anyway
}
