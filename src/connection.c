/* connection.c — client connections on the main loop.
 * Owns each socket, its input buffer and the ordered list of replies owed:
 * requests parsed by protocol.c become store ops or immediate replies, and
 * replies leave strictly in request order even when commits finish later. */
#include <gio/gio.h>
#include "connection.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <linux/sockios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "config.h"
#include "budget.h"
#include "log.h"
#include "lost.h"
#include "poller.h"
#include "protocol.h"
#include "reply.h"

/* Read granularity, and the bounds that keep one client from using
 * unbounded memory: past OUT_HIGH bytes of unsent replies, PIPELINE_MAX
 * unanswered requests or conn_limit() bytes held for it in all (see
 * conn_held) we stop reading from it until it catches up. */
#define OUT_HIGH (4 * 1024 * 1024)
/* conn_limit(): a get takes a message only while what the connection
 * holds ahead of it (unsent replies, messages taken, requests in flight)
 * stays under this, or when nothing is owed before it, so that any
 * message can be had.  Past it, a get that has taken nothing yet waits,
 * holding no message, its message left queued, and runs again once the
 * client has read everything before it; so do the gets sent after it,
 * which keeps each queue's messages in request order.  A multi-get that
 * has already taken some of its messages answers the rest as empty
 * instead (they stay queued).  So a pipelining consumer is never told a
 * queue is empty when it is not, and a client that reads is never cut off
 * with messages it was given still unsent.  The bound grows with -B so
 * one maximal reply fits.  A client that reads nothing for the client
 * timeout (--client-timeout) while replies wait is cut off. */
#define OUT_LIMIT_MIN (16 * 1024 * 1024)
#define SWEEP_INTERVAL_S 5
/* Requests up to PARTIAL_SMALL bytes are read without asking; a bigger
 * set reserves its whole length from a budget shared by all connections
 * (PARTIAL_BUDGET_MIN, or one maximal request if larger) before its body
 * is read, and waits, reading nothing more, while the budget is taken.
 * A request once begun always has room to finish, so waiting cannot
 * deadlock, and a request still unfinished at the client timeout,
 * waiting or not, is cut off with its connection, giving its reservation
 * back: stalled clients hold the budget at most that long. */
#define PARTIAL_SMALL (64 * 1024)
#define PARTIAL_BUDGET_MIN (64 * 1024 * 1024)
#define OUT_KEEP (4 * 1024)
#define PIPELINE_MAX 256
/* How long a connection being closed waits for its peer to take the last
 * bytes sent (see conn_finish), and how often it looks. */
#define LINGER_S 5
#define LINGER_CHECK_MS 20

typedef struct _Slot Slot;

struct _McqConnection {
  guint32 want;                 /* EPOLL* events currently asked for */
  McqServer *server;
  int fd;
  int refs;                     /* the socket, plus one per op in the store */

  GByteArray *in;               /* NULL unless a request is incomplete */
  size_t in_off;
  guint64 discard;              /* bytes still to drop (swallowed body) */
  gboolean skip_line;           /* then drop through the next '\n' */
  McqAuthState auth;            /* until it passes, requests go to mcq_auth_parse */
  size_t need;                  /* length of the incomplete request, if known */
  McqBudgetClaim claim;         /* its share of the partial budget, or its place in line */
  gint64 incomplete_since;      /* monotonic µs; 0 unless a request is unfinished */

  GQueue slots;                 /* Slot*, in request order */
  GByteArray *out;              /* NULL until there is something to send */
  size_t out_off;
  size_t out_peak;
  gsize taken;                  /* bytes of messages taken by gets, not yet in out */
  gsize held;                   /* bytes held by slots: set bodies, replies (Slot.held) */
  guint parked;                 /* gets waiting for the client to read (Slot.park) */

  gint64 last_write;            /* monotonic µs of the last write progress */
  gboolean read_closed;         /* peer sent EOF, or quit, or fatal error */
  gboolean draining;            /* shutdown: close as soon as nothing is owed */
  gboolean closed;              /* socket gone; waiting for ops to finish */
  guint linger_timer;           /* closing: our side shut, see conn_finish */
  gint64 linger_until;
};

struct _Slot {
  GList link;                   /* in McqConnection.slots; no allocation */
  Slot *next_free;
  McqConnection *conn;
  McqOp op;
  McqCommand cmd;
  gboolean pending;
  gboolean noreply;
  gboolean with_cas;
  GByteArray *reply;            /* immediate reply, or formatted on completion */
  gsize taken;                  /* this get's share of McqConnection.taken */
  gsize held;                   /* its share of McqConnection.held */
  gboolean park;                /* get refused room before taking anything: runs
                                   again once the client has read (see slot_room) */
  gboolean parked;              /* ... and its store op has finished */
  guint cmds, hits;             /* for the stats counters, added when the reply
                                   leaves its turn (conn_release_replies) */
};

static void conn_update (McqConnection *c);
static gboolean conn_watch (McqConnection *c, int op);
static void report_stats (McqServer *srv, GByteArray *out);
static GByteArray *slot_reply (Slot *s);
static void conn_process_input (McqConnection *c);
static void conn_report_lost (McqConnection *c);
static McqBudget partial;

/* ---- lifetime ------------------------------------------------------------- */

/* Finished slots are kept for reuse, with their op's buffers, so that a
 * connection in steady state allocates nothing per request.  Only small
 * buffers are kept (slot_done frees bigger ones, and a parked get's):
 * at 2 KiB a kept body or key list has at most 4 KiB of capacity and kept
 * values at most 8 KiB (a get reads into 4 KiB of room past what it
 * holds), so the cache holds at most 16 MiB; a bigger message costs one
 * allocation per request. */
#define SLOT_CACHE_MAX 1024
#define SLOT_BODY_KEEP (2 * 1024)

static Slot *slot_cache;
static guint slot_cache_len;

/* Bytes of big buffers freed since the last sweep.  glibc keeps freed
 * heap memory mapped (and, after a big buffer is freed, serves ever
 * larger ones from the heap too), so after a burst of big replies the
 * daemon stayed at its peak: 290 MB idle after 16 clients had each read
 * 256 replies of 60 KB.  The sweep hands such memory back (malloc_trim)
 * when enough has been freed for that to matter. */
static gsize released_bytes;
#define RELEASE_TRIM_BYTES (8 * 1024 * 1024)

/* The bytes buf's storage takes: its capacity, which its len (cut by
 * remove_range or reset for reuse) may understate by far. */
static gsize
buf_allocated (const GByteArray *buf)
{
#ifdef __GLIBC__
  return buf->data != NULL ? malloc_usable_size (buf->data) : 0;
#else
  return buf->len;
#endif
}

/* Frees a big buffer and counts all its storage for the sweep's malloc_trim. */
static void
release_big (GByteArray **buf)
{
  released_bytes += buf_allocated (*buf);
  g_clear_pointer (buf, g_byte_array_unref);
}

/* Hands freed memory back to the system if enough was freed to matter. */
static void
release_trim (void)
{
  if (released_bytes < RELEASE_TRIM_BYTES)
    return;
#ifdef __GLIBC__
  malloc_trim (0);
#endif
  released_bytes = 0;
}

static gboolean
release_trim_idle (gpointer data)
{
  guint *source = data;

  *source = 0;
  release_trim ();
  return G_SOURCE_REMOVE;
}

/* Frees buf, counting it as big if its storage is more than a kept buffer's. */
static void
release_any (GByteArray **buf)
{
  if (*buf != NULL && buf_allocated (*buf) > SLOT_BODY_KEEP)
    release_big (buf);
  else
    g_clear_pointer (buf, g_byte_array_unref);
}

/* Changes slot s's share of its connection's held bytes to bytes. */
static void
slot_hold (Slot *s, gsize bytes)
{
  s->conn->held = s->conn->held - s->held + bytes;
  s->held = bytes;
}

static void
slot_free (Slot *s)
{
  release_any (&s->reply);
  s->held = 0;
  if (slot_cache_len >= SLOT_CACHE_MAX)
    {
      mcq_op_release (&s->op);
      g_free (s);
      return;
    }
  mcq_op_clear (&s->op);
  s->next_free = slot_cache;
  slot_cache = s;
  slot_cache_len++;
}


/* The last reference gone: everything the connection held is freed, and
 * given back to the system soon after if it was much. */
static void
conn_unref (McqConnection *c)
{
  static guint trim_source;

  if (--c->refs > 0)
    return;
  while (!g_queue_is_empty (&c->slots))
    slot_free (g_queue_pop_head_link (&c->slots)->data);
  release_any (&c->in);
  release_any (&c->out);
  c->server->conn_structures--;
  g_free (c);
  if (released_bytes >= RELEASE_TRIM_BYTES && trim_source == 0)
    trim_source = g_idle_add (release_trim_idle, &trim_source);
}

static void
conn_close (McqConnection *c)
{
  McqServer *srv = c->server;

  if (c->closed)
    return;
  c->closed = TRUE;
  c->read_closed = TRUE;
  if (c->linger_timer != 0)
    g_source_remove (c->linger_timer);
  c->linger_timer = 0;
  conn_report_lost (c);
  mcq_budget_release (&partial, &c->claim);
  mcq_poller_forget (c->fd);
  close (c->fd);
  c->fd = -1;
  srv->curr_conns--;
  srv->conns = g_list_remove (srv->conns, c);
  g_debug ("connection closed (%u open)", srv->curr_conns);
  conn_unref (c);
}

/* Reads and drops whatever the peer sent; FALSE once it has closed its
 * side or the socket failed. */
static gboolean
discard_input (int fd)
{
  char sink[16 * 1024];

  for (;;)
    {
      ssize_t n = recv (fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0)
        continue;
      if (n < 0 && errno == EINTR)
        continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* Whether the peer has acknowledged every byte we sent. */
static gboolean
all_acknowledged (int fd)
{
  int unacked = 0;
  return ioctl (fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
}

/* Whether a socket whose sending side is shut may be closed now: its peer
 * has closed (or the socket failed), `until` has passed, or, if
 * acked_is_enough, the peer has acknowledged every byte sent.  Input is
 * dropped first, so a close leaves none unread. */
static gboolean
linger_over (int fd, gint64 until, gboolean acked_is_enough)
{
  return !discard_input (fd) || (acked_is_enough && all_acknowledged (fd)) ||
         g_get_monotonic_time () >= until;
}

static gboolean
linger_check (gpointer data)
{
  McqConnection *c = data;

  if (!linger_over (c->fd, c->linger_until, TRUE))
    return G_SOURCE_CONTINUE;
  c->linger_timer = 0;
  conn_close (c);
  return G_SOURCE_REMOVE;
}

/* Ends a connection that owes nothing more.  A plain close() is not
 * enough while the peer has not yet acknowledged everything sent: if
 * unread input sits in the socket (a pipelined request that will not run)
 * or more arrives after it, the kernel answers with a reset and throws
 * away what it still had to send, e.g. the end of a message a get has
 * taken off its queue.  So then only our side is shut (the peer gets an
 * end of stream after the last byte), input is read and dropped, and the
 * socket is closed once everything is acknowledged, the peer closes, or
 * LINGER_S pass. */
static void
conn_finish (McqConnection *c)
{
  if (c->linger_timer != 0)
    return;
  if (!discard_input (c->fd) || all_acknowledged (c->fd) || shutdown (c->fd, SHUT_WR) != 0)
    {
      conn_close (c);
      return;
    }
  c->read_closed = TRUE;
  c->want = EPOLLIN;
  if (!conn_watch (c, EPOLL_CTL_MOD))
    {
      conn_close (c);
      return;
    }
  c->linger_until = g_get_monotonic_time () + LINGER_S * G_USEC_PER_SEC;
  c->linger_timer = g_timeout_add (LINGER_CHECK_MS, linger_check, c);
}

/* ---- output ---------------------------------------------------------------- */

static void
out_append (GByteArray *out, const void *data, size_t len)
{
  g_byte_array_append (out, data, (guint) len);
}

/* ---- messages lost with their connection ----------------------------------
 *
 * A connection that closes before its client has read every reply loses
 * the messages its gets took: each is logged as a warning, by queue (see
 * lost.h), from the unsent output, the replies still waiting their turn,
 * and the results of gets that finish after the close. */

/* At close: the messages in the unsent output and in the replies still
 * waiting their turn (which are dropped now, so never counted twice). */
static void
conn_report_lost (McqConnection *c)
{
  g_autoptr(GHashTable) lost = mcq_lost_new ();

  if (c->out != NULL)
    mcq_lost_scan (c->out->data, c->out->len, c->out_off, lost);
  for (GList *l = c->slots.head; l != NULL; l = l->next)
    {
      Slot *s = l->data;
      if (s->pending || s->reply == NULL)
        continue;
      mcq_lost_scan (s->reply->data, s->reply->len, 0, lost);
      release_any (&s->reply);
      slot_hold (s, 0);
    }
  mcq_lost_warn (lost);
}

/* A get that took messages after its connection closed. */
static void
op_report_lost (McqOp *op)
{
  g_autoptr(GHashTable) lost = mcq_lost_new ();
  size_t pos = 0;
  const char *name;

  for (guint i = 0; op->messages != NULL && (name = mcq_op_next_key (op, &pos)) != NULL; i++)
    if (i < op->messages->len && g_array_index (op->messages, McqMessage, i).data != NULL)
      mcq_lost_add (lost, name, strlen (name));
  mcq_lost_warn (lost);
}

static size_t
out_pending (McqConnection *c)
{
  return c->out ? c->out->len - c->out_off : 0;
}

/* The most a connection may hold (see OUT_LIMIT_MIN and conn_held). */
static guint64
conn_limit (McqConnection *c)
{
  return MAX ((guint64) OUT_LIMIT_MIN, 2 * c->server->max_body + 65536);
}

/* Bytes held for c: input kept, set bodies in flight, messages taken,
 * replies not yet sent.  Reading stops while it is at conn_limit. */
static guint64
conn_held (McqConnection *c)
{
  return (c->in != NULL ? c->in->len : 0) + c->held + c->taken + (c->out != NULL ? c->out->len : 0);
}

/* Writes as much as the socket takes.  Returns FALSE if the peer is gone. */
static gboolean
conn_write (McqConnection *c)
{
  while (out_pending (c) > 0)
    {
      ssize_t n = send (c->fd, c->out->data + c->out_off, out_pending (c), MSG_NOSIGNAL);
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
          g_debug ("write failed: %s", g_strerror (errno));
          return FALSE;
        }
      c->out_off += (size_t) n;
      c->last_write = g_get_monotonic_time ();
      c->server->counters.bytes_written += (guint64) n;
    }
  if (c->out == NULL)
    return TRUE;
  if (c->out_off == c->out->len)
    {
      /* Keep a small buffer for the next replies; give a big one back. */
      if (c->out_peak > OUT_KEEP)
        release_big (&c->out);
      else
        g_byte_array_set_size (c->out, 0);
      c->out_off = 0;
      c->out_peak = 0;
    }
  else if (c->out_off > c->out->len / 2)
    {
      /* Only whole replies go, so that the output always starts with one
       * (see conn_report_lost). */
      size_t cut = mcq_lost_scan (c->out->data, c->out->len, c->out_off, NULL);
      g_byte_array_remove_range (c->out, 0, (guint) cut);
      c->out_off -= cut;
    }
  return TRUE;
}

/* Moves the replies of finished requests at the head to the output. */
static void
conn_release_replies (McqConnection *c)
{
  Slot *s;

  while ((s = g_queue_peek_head (&c->slots)) != NULL && !s->pending)
    {
      McqCounters *k = &c->server->counters;

      g_queue_pop_head_link (&c->slots);
      /* Counted in request order, so that a "stats" (or "stats reset")
       * sees exactly the requests sent before it on its connection, and
       * hits never outnumber commands. */
      if (s->cmd == MCQ_CMD_SET)
        {
          k->set_cmds += s->cmds;
          k->set_hits += s->hits;
        }
      else if (s->cmd == MCQ_CMD_GET)
        {
          k->get_cmds += s->cmds;
          k->get_hits += s->hits;
        }
      /* "stats" and "stats reset" act when their turn comes, so that they
       * see the effect of every request sent before them. */
      if (s->cmd == MCQ_CMD_STATS)
        report_stats (c->server, slot_reply (s));
      else if (s->cmd == MCQ_CMD_STATS_RESET)
        {
          memset (&c->server->counters, 0, sizeof c->server->counters);
          mcq_reply_line (slot_reply (s), MCQ_REPLY_RESET);
        }
      slot_hold (s, 0);
      if (s->reply != NULL && !c->closed)
        {
          if (c->out == NULL)
            c->out = g_steal_pointer (&s->reply);   /* no copy of a big reply */
          else
            out_append (c->out, s->reply->data, s->reply->len);
          c->out_peak = MAX (c->out_peak, c->out->len);
        }
      slot_free (s);
    }
}

/* ---- replies --------------------------------------------------------------- */

/* Where a slot's reply goes: straight to the output when nothing is owed
 * before it (the common case), else to the slot until its turn. */
static GByteArray *
slot_reply (Slot *s)
{
  McqConnection *c = s->conn;

  if (s->reply == NULL && !c->closed && g_queue_peek_head (&c->slots) == s)
    {
      if (c->out == NULL)
        c->out = g_byte_array_new ();
      return c->out;
    }
  if (s->reply == NULL)
    s->reply = g_byte_array_new ();
  return s->reply;
}

static void
reply_failure (Slot *s)
{
  const char *msg = s->op.error ? s->op.error->message : "storage failure";

  g_warning (_("request failed: %s"), msg);
  /* A noreply set or delete gets no error line either (see protocol.c's
   * line_is_noreply); the warning above is all that tells of it. */
  if (s->noreply)
    return;
  mcq_reply_failure (slot_reply (s), msg,
                     g_error_matches (s->op.error, G_IO_ERROR, G_IO_ERROR_NO_SPACE));
}

/* The stats counters and figures, for mcq_reply_stats. */
static void
report_stats (McqServer *srv, GByteArray *out)
{
  struct rusage ru;
  McqCounters *k = &srv->counters;
  McqStatsReport st = {
    .pid = (long) getpid (),
    .uptime_s = (g_get_monotonic_time () - srv->start_monotonic) / G_USEC_PER_SEC,
    .time_s = g_get_real_time () / G_USEC_PER_SEC,
    .curr_conns = srv->curr_conns,
    .total_conns = srv->total_conns,
    .conn_structures = srv->conn_structures,
    .get_cmds = k->get_cmds, .get_hits = k->get_hits,
    .set_cmds = k->set_cmds, .set_hits = k->set_hits,
    .bytes_read = k->bytes_read, .bytes_written = k->bytes_written,
    .threads = 2,
    .curr_queues = mcq_store_queue_count (srv->store),
    .curr_items = mcq_store_total_depth (srv->store),
    .durable = mcq_store_durable (srv->store),
    .damaged_messages = mcq_store_damaged (srv->store),
  };

  getrusage (RUSAGE_SELF, &ru);
  st.user_s = ru.ru_utime.tv_sec;
  st.user_us = ru.ru_utime.tv_usec;
  st.system_s = ru.ru_stime.tv_sec;
  st.system_us = ru.ru_stime.tv_usec;
  mcq_reply_stats (out, &st);
}

/* Drops a finished op's messages now rather than when its slot leaves,
 * and any large buffer, so that the slot cache keeps only small ones (a
 * failed get has emptied its values, whatever their size was). */
static void
op_drop_buffers (McqOp *op)
{
  if (op->body != NULL && op->body->len > SLOT_BODY_KEEP)
    release_big (&op->body);
  if (op->keys != NULL && op->keys->len > SLOT_BODY_KEEP)
    release_big (&op->keys);
  if (op->status == MCQ_OP_FAILED)
    g_clear_pointer (&op->values, g_byte_array_unref);
  else
    release_any (&op->values);
  mcq_op_clear (op);
}

/* Runs on the main context when the store has made the op durable. */
static void
slot_done (McqOp *op)
{
  Slot *s = op->user_data;
  McqConnection *c = s->conn;

  if (s->park && op->status == MCQ_OP_OK && !c->draining)
    {
      /* Took nothing: stays owed, keeps its keys (only), runs again later. */
      s->parked = TRUE;
      release_any (&op->values);
      if (!c->closed)
        conn_update (c);
      conn_unref (c);
      return;
    }
  if (s->park)
    {
      s->park = FALSE;
      c->parked--;
    }
  s->pending = FALSE;
  /* What the get took is in its reply now (or was given back, or lost). */
  c->taken -= s->taken;
  s->taken = 0;
  slot_hold (s, 0);
  if (c->closed && s->cmd == MCQ_CMD_GET && op->status == MCQ_OP_OK)
    op_report_lost (op);
  else if (op->status == MCQ_OP_FAILED)
    reply_failure (s);
  else if (!s->noreply)
    switch (s->cmd)
      {
      case MCQ_CMD_SET:
        mcq_reply_line (slot_reply (s), MCQ_REPLY_STORED);
        break;
      case MCQ_CMD_GET:
        s->hits += mcq_reply_values (slot_reply (s), (const char *) op->keys->data, op->keys->len,
                                     (const McqMessage *) op->messages->data,
                                     op->messages->len, s->with_cas);
        break;
      case MCQ_CMD_DELETE:
        if (op->status == MCQ_OP_NOT_FOUND)
          mcq_reply_line (slot_reply (s), MCQ_REPLY_NOT_FOUND);
        else
          mcq_reply_line (slot_reply (s), MCQ_REPLY_DELETED);
        break;
      case MCQ_CMD_STATS_QUEUE:
        mcq_reply_queue_stats (slot_reply (s), (const McqQueueStat *) op->queue_stats->data,
                               op->queue_stats->len);
        break;
      case MCQ_CMD_DB_CHECKPOINT:
      case MCQ_CMD_DB_ARCHIVE:
        mcq_reply_line (slot_reply (s), MCQ_REPLY_OK);
        break;
      default:
        g_assert_not_reached ();
      }
  if (op->status == MCQ_OP_OK && s->cmd == MCQ_CMD_SET)
    s->hits = 1;
  if (s->reply != NULL)
    slot_hold (s, s->reply->len);
  op_drop_buffers (op);

  if (!c->closed)
    {
      conn_release_replies (c);
      conn_update (c);
    }
  else
    conn_release_replies (c);
  conn_unref (c);
}

/* ---- requests -------------------------------------------------------------- */

static Slot *
slot_new (McqConnection *c, McqCommand cmd)
{
  Slot *s = slot_cache;

  if (s != NULL)
    {
      slot_cache = s->next_free;
      slot_cache_len--;
      s->next_free = NULL;
      s->pending = s->noreply = s->with_cas = s->park = s->parked = FALSE;
      s->cmds = s->hits = 0;
      s->held = 0;
    }
  else
    s = g_new0 (Slot, 1);
  s->conn = c;
  s->cmd = cmd;
  s->link.data = s;
  s->link.prev = s->link.next = NULL;
  g_queue_push_tail_link (&c->slots, &s->link);
  return s;
}

/* The store asks before a get takes a message (see OUT_LIMIT_MIN). */
static gboolean
slot_room (McqOp *op, gssize bytes)
{
  Slot *s = op->user_data;
  McqConnection *c = s->conn;

  if (bytes > 0)
    {
      guint64 out = c->out != NULL ? c->out->len : 0;
      guint64 held = out + c->taken + c->held;
      /* The first message of the get at the head is granted once all
       * before it is sent, whatever the requests behind it hold (their
       * replies cannot leave before its own), so a waiting get always
       * runs in the end. */
      gboolean first = out == 0 && s->taken == 0 && g_queue_peek_head (&c->slots) == s;

      /* A client that is gone would lose what it is given; one being
       * drained at shutdown may not read it before the deadline. */
      if (c->closed || c->draining || s->park)
        return FALSE;
      if (c->parked > 0 ||
          (!first && held > 0 && held + (guint64) bytes > conn_limit (c)))
        {
          if (s->taken == 0)
            {
              s->park = TRUE;
              c->parked++;
            }
          return FALSE;
        }
    }
  s->taken += (gsize) bytes;
  c->taken += (gsize) bytes;
  return TRUE;
}

static void
slot_submit (Slot *s, McqOpType type)
{
  McqConnection *c = s->conn;

  s->pending = TRUE;
  s->op.type = type;
  s->op.done = slot_done;
  s->op.room = slot_room;
  s->op.user_data = s;
  c->refs++;
  mcq_store_submit (c->server->store, &s->op);
}

static void
immediate (McqConnection *c, const char *text)
{
  Slot *s = slot_new (c, MCQ_CMD_VERSION);   /* any command without a deferred reply */
  mcq_reply_text (slot_reply (s), text);
  if (s->reply != NULL)
    slot_hold (s, s->reply->len);
}

static void
handle_request (McqConnection *c, const McqRequest *req)
{
  Slot *s;

  switch (req->cmd)
    {
    case MCQ_CMD_SET:
      s = slot_new (c, req->cmd);
      s->cmds = 1;
      s->noreply = req->noreply;
      mcq_op_add_key (&s->op, req->key.ptr, req->key.len);
      mcq_op_set_body (&s->op, req->flags, req->body.ptr, req->body.len);
      slot_hold (s, req->body.len);
      slot_submit (s, MCQ_OP_SET);
      break;

    case MCQ_CMD_GET:
      {
        size_t pos = 0;
        McqSpan k;

        s = slot_new (c, req->cmd);
        s->cmds = req->nkeys;
        s->with_cas = req->with_cas;
        while (mcq_request_next_key (req, &pos, &k))
          mcq_op_add_key (&s->op, k.ptr, k.len);
        slot_submit (s, MCQ_OP_GET);
        break;
      }

    case MCQ_CMD_DELETE:
      s = slot_new (c, req->cmd);
      s->noreply = req->noreply;
      mcq_op_add_key (&s->op, req->key.ptr, req->key.len);
      slot_submit (s, MCQ_OP_DELETE);
      break;

    case MCQ_CMD_STATS_QUEUE:
      slot_submit (slot_new (c, req->cmd), MCQ_OP_STATS_QUEUE);
      break;

    case MCQ_CMD_DB_CHECKPOINT:
      slot_submit (slot_new (c, req->cmd), MCQ_OP_CHECKPOINT);
      break;

    case MCQ_CMD_DB_ARCHIVE:
      slot_submit (slot_new (c, req->cmd), MCQ_OP_ARCHIVE);
      break;

    case MCQ_CMD_STATS:
    case MCQ_CMD_STATS_RESET:
      slot_new (c, req->cmd);   /* answered in conn_release_replies */
      break;

    case MCQ_CMD_VERSION:
      immediate (c, mcq_reply_line_text (MCQ_REPLY_VERSION));
      break;

    case MCQ_CMD_VERBOSITY:
      mcq_log_set_verbosity ((int) MIN (req->verbosity, 2u));
      if (!req->noreply)
        immediate (c, mcq_reply_line_text (MCQ_REPLY_OK));
      break;

    case MCQ_CMD_QUIT:
      c->read_closed = TRUE;
      break;

    default:
      g_assert_not_reached ();
    }
}

/* ---- the budget of partial requests (see PARTIAL_SMALL) ------------------- */

/* Waiting connections read again once their claim is granted.  Only
 * their interest changes: each is handled when the poller reports it,
 * since handling one connection must never close another. */
static void
partial_granted (McqBudgetClaim *claim)
{
  McqConnection *w = claim->owner;

  w->want |= EPOLLIN;
  conn_watch (w, EPOLL_CTL_MOD);
}

/* A request (or the bytes of a refused one) has been read in full: the
 * clock of unfinished requests restarts, its reservation goes back. */
static void
request_read (McqConnection *c)
{
  c->incomplete_since = 0;
  c->need = 0;
  mcq_budget_release (&partial, &c->claim);
}

static gboolean
may_parse (McqConnection *c)
{
  return !c->read_closed && !c->draining && !c->claim.waiting &&
         g_queue_get_length (&c->slots) < PIPELINE_MAX && out_pending (c) < OUT_HIGH &&
         conn_held (c) < conn_limit (c);
}

/* Parses and dispatches what buf holds; returns how much was used.  What
 * is left is an incomplete request, or input parked while the client has
 * too many requests in flight. */
static size_t
process_bytes (McqConnection *c, const char *buf, size_t len)
{
  size_t used = 0;

  while (used < len && may_parse (c))
    {
      const char *p = buf + used;
      size_t avail = len - used;
      McqRequest req;
      McqParseResult r;

      if (c->discard > 0)
        {
          size_t n = (size_t) MIN ((guint64) avail, c->discard);
          c->discard -= n;
          used += n;
          if (c->discard == 0 && !c->skip_line)
            request_read (c);
          continue;
        }
      if (c->skip_line)
        {
          const char *nl = memchr (p, '\n', avail);
          used += nl ? (size_t) (nl - p) + 1 : avail;
          c->skip_line = nl == NULL;
          if (nl != NULL)
            request_read (c);
          continue;
        }

      r = c->auth.passed ? mcq_parse_request (p, avail, c->server->max_body, &req)
                         : mcq_auth_parse (c->server->auth, &c->auth, (char *) p, avail, &req);
      if (r.status != MCQ_PARSE_NEED_MORE)
        request_read (c);
      switch (r.status)
        {
        case MCQ_PARSE_NEED_MORE:
          c->need = r.need;
          if (c->need > PARTIAL_SMALL && !c->claim.granted && !c->claim.waiting)
            mcq_budget_claim (&partial, &c->claim, c->need);
          return used;
        case MCQ_PARSE_REQUEST:
          handle_request (c, &req);
          break;
        case MCQ_PARSE_ERROR:
          if (r.noreply)
            g_info (_("not answering a noreply request: %.*s"), (int) strlen (r.error) - 2, r.error);
          else
            immediate (c, r.error);
          c->discard = r.discard;
          c->skip_line = r.skip_line;
          break;
        case MCQ_PARSE_FATAL:
          immediate (c, r.error);
          g_info (_("closing a connection: %.*s"), (int) strlen (r.error) - 2, r.error);
          c->read_closed = TRUE;
          break;
        default:
          g_assert_not_reached ();
        }
      used += r.consumed;
    }
  return used;
}

/* Parses input kept from earlier reads. */
static void
conn_process_input (McqConnection *c)
{
  if (c->in == NULL)
    return;
  c->in_off += process_bytes (c, (const char *) c->in->data + c->in_off, c->in->len - c->in_off);
  if (c->in_off == c->in->len || c->read_closed)
    {
      /* Nothing kept: give the memory back, idle connections cost little. */
      release_any (&c->in);
      c->in_off = 0;
    }
  else if (c->in_off > 0 && c->in_off >= c->in->len / 2)
    {
      g_byte_array_remove_range (c->in, 0, (guint) c->in_off);
      c->in_off = 0;
    }
}

/* Reads what is there.  Returns FALSE when the connection must close now.
 * Reads land in one buffer shared by all connections (they all run on the
 * main thread); only an incomplete request is copied to the connection. */
static gboolean
conn_read (McqConnection *c)
{
  static char shared[64 * 1024];

  for (int rounds = 0; rounds < 4 && may_parse (c); rounds++)
    {
      ssize_t n = recv (c->fd, shared, sizeof shared, 0);

      if (n == 0)
        {
          c->read_closed = TRUE;   /* half-close: still answer what came */
          return TRUE;
        }
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            return TRUE;
          g_debug ("read failed: %s", g_strerror (errno));
          return FALSE;
        }
      c->server->counters.bytes_read += (guint64) n;
      if (c->in == NULL)
        {
          size_t used = process_bytes (c, shared, (size_t) n);
          if (used < (size_t) n && !c->read_closed)
            {
              c->in = g_byte_array_sized_new ((guint) ((size_t) n - used));
              g_byte_array_append (c->in, (const guint8 *) shared + used, (guint) ((size_t) n - used));
            }
        }
      else
        {
          g_byte_array_append (c->in, (const guint8 *) shared, (guint) n);
          conn_process_input (c);
        }
      if ((size_t) n < sizeof shared)
        return TRUE;
    }
  return TRUE;
}

/* The client has read everything owed: the gets that waited for room run
 * again, in request order (see OUT_LIMIT_MIN). */
static void
conn_unpark (McqConnection *c)
{
  GList *l;

  /* Not while one of them is still in the store: they go back together,
   * or the first would find the later one parked and wait again. */
  for (l = c->slots.head; l != NULL; l = l->next)
    if (((Slot *) l->data)->park && !((Slot *) l->data)->parked)
      return;
  for (l = c->slots.head; l != NULL; l = l->next)
    {
      Slot *s = l->data;
      if (!s->parked)
        continue;
      s->park = s->parked = FALSE;
      c->parked--;
      slot_submit (s, MCQ_OP_GET);
    }
}

/* Writes what can be written, then decides which events to wait for. */
static void
conn_update (McqConnection *c)
{
  guint32 want = 0;
  gboolean may_read;

  if (c->closed)
    return;
  conn_release_replies (c);
  if (!conn_write (c))
    {
      conn_close (c);
      return;
    }
  if (c->parked > 0 &&
      (c->draining || (out_pending (c) == 0 && ((Slot *) g_queue_peek_head (&c->slots))->park)))
    conn_unpark (c);
  /* Input parked while the pipeline was full can be parsed now; keep
   * going while it makes progress, since requests answered on the spot
   * (version, errors) complete no store op that would bring us back. */
  while (c->in != NULL && may_parse (c))
    {
      size_t before = c->in->len - c->in_off;
      conn_process_input (c);
      conn_release_replies (c);
      if (!conn_write (c))
        {
          conn_close (c);
          return;
        }
      if (c->in != NULL && c->in->len - c->in_off == before)
        break;
    }
  if ((c->read_closed || c->draining) && g_queue_is_empty (&c->slots) && out_pending (c) == 0)
    {
      /* Draining stops parsing and closes once every request parsed has
       * been answered; conn_finish makes sure the client reads all of it
       * and then an end of stream, never a reset, whatever it sent after. */
      conn_finish (c);
      return;
    }
  may_read = may_parse (c);
  if (c->read_closed)
    mcq_budget_release (&partial, &c->claim);
  /* The clock of an unfinished request runs while it is the client's turn
   * to send, and while it waits for the budget of partial requests: a
   * request must be whole within the client timeout of its first byte. */
  if ((!may_read && !c->claim.waiting) || (c->in == NULL && c->discard == 0 && !c->skip_line))
    c->incomplete_since = 0;
  else if (c->incomplete_since == 0)
    c->incomplete_since = g_get_monotonic_time ();
  if (may_read)
    want |= EPOLLIN;
  if (out_pending (c) > 0)
    want |= EPOLLOUT;
  /* Only tell the kernel when the interest really changes, not once per
   * request. */
  if (want != c->want)
    {
      c->want = want;
      if (!conn_watch (c, EPOLL_CTL_MOD))
        conn_close (c);
    }
}

/* Tells the poller which events c waits for now (c->want); FALSE if the
 * kernel refuses. */
static gboolean
conn_watch (McqConnection *c, int op)
{
  return mcq_poller_watch (c->fd, op, c->want, c);
}

/* Handles what epoll reported for the connection. */
static void
conn_event (gpointer target, guint32 events)
{
  McqConnection *c = target;

  if (events & EPOLLERR)
    {
      conn_close (c);
      return;
    }
  if (c->linger_timer != 0)
    {
      if (!discard_input (c->fd))
        conn_close (c);
      return;
    }
  if (events & (EPOLLIN | EPOLLHUP))
    {
      if (!conn_read (c))
        {
          conn_close (c);
          return;
        }
    }
  conn_update (c);
}

/* Closes connections whose replies have waited unread, or whose request
 * has stayed unfinished, for longer than the client timeout. */
static gboolean
sweep (gpointer data)
{
  McqServer *srv = data;
  gint64 now = g_get_monotonic_time ();
  gint64 timeout = (gint64) srv->client_timeout_s * G_USEC_PER_SEC;
  g_autoptr(GList) conns = g_list_copy (srv->conns);
  guint stalled = 0, unfinished = 0;

  for (GList *l = conns; l != NULL; l = l->next)
    {
      McqConnection *c = l->data;
      if (out_pending (c) > 0 && now - c->last_write > timeout)
        stalled++;
      else if (c->incomplete_since != 0 && !c->read_closed && now - c->incomplete_since > timeout)
        unfinished++;
      else
        continue;
      conn_close (c);
    }
  if (stalled > 0)
    g_warning (ngettext ("cut off %u client that read none of the replies waiting for it for %u s",
                         "cut off %u clients that read none of the replies waiting for them for %u s",
                         stalled), stalled, srv->client_timeout_s);
  if (unfinished > 0)
    g_warning (ngettext ("cut off %u client that left a request unfinished for %u s",
                         "cut off %u clients that left a request unfinished for %u s",
                         unfinished), unfinished, srv->client_timeout_s);
  release_trim ();
  return G_SOURCE_CONTINUE;
}

McqConnection *
mcq_connection_new (McqServer *srv, int fd)
{
  static guint sweep_source;
  McqConnection *c = g_new0 (McqConnection, 1);

  c->server = srv;
  c->fd = fd;
  c->refs = 1;
  c->claim.owner = c;
  if (partial.size == 0)
    {
      /* One maximal set (line, body, \r\n) always fits. */
      partial.size = MAX ((guint64) PARTIAL_BUDGET_MIN, srv->max_body + MCQ_LINE_MAX + 16);
      partial.granted = partial_granted;
    }
  c->last_write = g_get_monotonic_time ();
  c->auth.passed = srv->auth == NULL;
  if (sweep_source == 0)
    sweep_source = g_timeout_add_seconds (CLAMP (srv->client_timeout_s / 2, 1, SWEEP_INTERVAL_S),
                                          sweep, srv);
  g_queue_init (&c->slots);
  mcq_poller_init (conn_event);
  c->want = EPOLLIN;
  if (!conn_watch (c, EPOLL_CTL_ADD))
    {
      g_free (c);
      mcq_connection_refuse (fd, "SERVER_ERROR cannot watch the connection\r\n");
      return NULL;
    }

  srv->curr_conns++;
  srv->total_conns++;
  srv->conn_structures++;
  srv->conns = g_list_prepend (srv->conns, c);
  g_debug ("connection opened (%u open)", srv->curr_conns);
  return c;
}

/* A refused socket, kept until its client has closed (see
 * mcq_connection_refuse). */
typedef struct {
  int fd;
  gint64 until;
} Refused;

static guint refused_open;

static gboolean
refused_check (gpointer data)
{
  Refused *r = data;

  /* Not closed at the acknowledgement: the client's request may still be
   * on its way, and would be answered with a reset. */
  if (!linger_over (r->fd, r->until, FALSE))
    return G_SOURCE_CONTINUE;
  close (r->fd);
  refused_open--;
  g_free (r);
  return G_SOURCE_REMOVE;
}

/* Clients send their first request as soon as they connect.  Closed with
 * that request unread, the socket answered with a reset (4 to 12 of 20
 * such clients saw ECONNRESET, some before they had read the reply).  So
 * the reply is followed by an end of stream, and the
 * socket lingers, its input dropped, until the client closes or
 * REFUSED_LINGER_MS pass.  Past REFUSED_MAX lingering at once (a flood of
 * connections, which -c is there to withstand), they are closed at once. */
#define REFUSED_LINGER_MS 1000
#define REFUSED_MAX 64

void
mcq_connection_refuse (int fd, const char *reply)
{
  ssize_t ignored = send (fd, reply, strlen (reply), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void) ignored;
  if (refused_open < REFUSED_MAX && shutdown (fd, SHUT_WR) == 0 && discard_input (fd))
    {
      Refused *r = g_new (Refused, 1);
      r->fd = fd;
      r->until = g_get_monotonic_time () + REFUSED_LINGER_MS * 1000;
      refused_open++;
      g_timeout_add (LINGER_CHECK_MS, refused_check, r);
      return;
    }
  close (fd);
}

void
mcq_connection_drain (McqConnection *c)
{
  c->draining = TRUE;
  conn_update (c);
}

void
mcq_connection_close_all (McqServer *srv)
{
  while (srv->conns != NULL)
    conn_close (srv->conns->data);
}
