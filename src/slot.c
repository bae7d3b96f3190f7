/* slot.c — the requests of a connection, from parse to reply.
 * Owns the slots (one per request, in request order, reused from a cache),
 * their store ops, the room a get may take, and replies leaving in order. */
#include <gio/gio.h>
#include "connection-internal.h"

#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "lost.h"
#include "release.h"
#include "reply.h"

static GByteArray *slot_reply (Slot *s);
static void report_stats (McqServer *srv, GByteArray *out);
static void slot_submit (Slot *s, McqOpType type);

/* Finished slots are kept for reuse with their op's small buffers (slot_done
 * frees any over MCQ_RELEASE_KEEP), so a connection in steady state
 * allocates nothing per request and the cache holds at most 16 MiB. */
#define SLOT_CACHE_MAX 1024

static Slot *slot_cache;
static guint slot_cache_len;

/* Changes slot s's share of its connection's held bytes to bytes. */
static void
slot_hold (Slot *s, gsize bytes)
{
  s->conn->held = s->conn->held - s->held + bytes;
  s->held = bytes;
}

void
mcq_slot_free (Slot *s)
{
  mcq_release_any (&s->reply);
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

/* ---- messages lost with their connection ----------------------------------
 *
 * A connection that closes before its client has read every reply loses
 * the messages its gets took: each is logged as a warning, by queue (see
 * lost.h), from the unsent output, the replies still waiting their turn,
 * and the results of gets that finish after the close. */

/* At close: the messages in the unsent output and in the replies still
 * waiting their turn (which are dropped now, so never counted twice). */
void
mcq_slots_report_lost (McqConnection *c)
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
      mcq_release_any (&s->reply);
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

/* Moves the replies of finished requests at the head to the output. */
void
mcq_slots_release_replies (McqConnection *c)
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
            g_byte_array_append (c->out, s->reply->data, s->reply->len);
          c->out_peak = MAX (c->out_peak, c->out->len);
        }
      mcq_slot_free (s);
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
  if (op->body != NULL && op->body->len > MCQ_RELEASE_KEEP)
    mcq_release_big (&op->body);
  if (op->keys != NULL && op->keys->len > MCQ_RELEASE_KEEP)
    mcq_release_big (&op->keys);
  if (op->status == MCQ_OP_FAILED)
    g_clear_pointer (&op->values, g_byte_array_unref);
  else
    mcq_release_any (&op->values);
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
      mcq_release_any (&op->values);
      if (!c->closed)
        mcq_conn_update (c);
      mcq_conn_unref (c);
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
      mcq_slots_release_replies (c);
      mcq_conn_update (c);
    }
  else
    mcq_slots_release_replies (c);
  mcq_conn_unref (c);
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

/* The store asks before a get takes a message.  It may while what its
 * connection holds ahead of it stays under mcq_conn_limit, or when nothing
 * is owed before it, so any message can be had.  Otherwise a get that has
 * taken nothing parks, its message left queued, and runs again (with the
 * gets after it, keeping each queue's order) once the client has read
 * everything before it; a multi-get that took some answers the rest as
 * empty.  So a pipelining consumer is never told a queue is empty when
 * it is not, nor cut off holding messages it was given. */
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
          (!first && held > 0 && held + (guint64) bytes > mcq_conn_limit (c)))
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

void
mcq_slot_immediate (McqConnection *c, const char *text)
{
  Slot *s = slot_new (c, MCQ_CMD_VERSION);   /* any command without a deferred reply */
  mcq_reply_text (slot_reply (s), text);
  if (s->reply != NULL)
    slot_hold (s, s->reply->len);
}

void
mcq_slot_handle_request (McqConnection *c, const McqRequest *req)
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
      slot_new (c, req->cmd);   /* answered in mcq_slots_release_replies */
      break;

    case MCQ_CMD_VERSION:
      mcq_slot_immediate (c, mcq_reply_line_text (MCQ_REPLY_VERSION));
      break;

    case MCQ_CMD_VERBOSITY:
      mcq_log_set_verbosity ((int) MIN (req->verbosity, 2u));
      if (!req->noreply)
        mcq_slot_immediate (c, mcq_reply_line_text (MCQ_REPLY_OK));
      break;

    case MCQ_CMD_QUIT:
      c->read_closed = TRUE;
      break;

    default:
      g_assert_not_reached ();
    }
}

/* The client has read everything owed: the gets that waited for room run
 * again, in request order (see slot_room). */
void
mcq_slots_unpark (McqConnection *c)
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

