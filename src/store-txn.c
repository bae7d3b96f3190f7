/* store-txn.c — the transactions, all on the main thread: segments of sets
 * and gets, reading and taking a queue's head (setting damaged records
 * aside), deletes and the purge of deleted queues' messages. */
#include "store-private.h"

#include <stdlib.h>

/* A purge step removes at most this many messages. */
#define PURGE_CHUNK 512

/* Reads only the header of message (id, seq): its enqueue time. */
gint64
txn_read_enqueue_time (McqStore *s, DB_TXN *txn, guint32 id, guint64 seq)
{
  guint8 key[MSG_KEY_SIZE], header[MCQ_REC_TIME_END];
  DBT k, v;

  mcq_rec_key (id, seq, key);
  dbt_init (&k, key, sizeof key);
  dbt_init (&v, header, sizeof header);
  v.ulen = sizeof header;
  v.dlen = sizeof header;
  v.doff = 0;
  v.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;
  if (s->messages_db->get (s->messages_db, txn, &k, &v, 0) != 0)
    return 0;
  return mcq_rec_time (header, v.size);
}

/* Every transaction starts here.  The environment has no lock subsystem
 * (see env_open in store.c), which is sound only while one thread runs all
 * the transactions: a call from any other thread is a bug, caught here. */
int
txn_start (McqStore *s, DB_TXN **txn)
{
  g_assert (g_thread_self () == s->owner);
  return s->env->txn_begin (s->env, NULL, txn, 0);
}

static gboolean
write_queue (McqStore *s, DB_TXN *txn, const Queue *q, GError **error)
{
  McqQueueRec r = { q->id, q->head, q->tail, q->enqueued, q->dequeued, q->bytes };
  guint8 rec[MCQ_QREC_SIZE];
  DBT k, v;
  int ret;

  mcq_qrec_encode (&r, rec);
  dbt_init (&k, q->name, strlen (q->name));
  dbt_init (&v, rec, sizeof rec);
  if ((ret = s->queues_db->put (s->queues_db, txn, &k, &v, 0)) != 0)
    return store_db_fail (ret, error, "writing the queue record");
  return TRUE;
}

static gboolean
commit (DB_TXN *txn, GError **error)
{
  /* Ops outside segments (deletes) are rare: each writes its own log. */
  int ret = txn->commit (txn, DB_TXN_WRITE_NOSYNC);
  if (ret != 0)
    return store_db_fail (ret, error, "commit");
  return TRUE;
}

/* ---- segments ---------------------------------------------------------------
 *
 * Consecutive sets and gets of a batch run in ONE transaction (a segment):
 * each queue touched has its record written once per segment instead of
 * once per message, and the transaction overhead is paid once.  The
 * in-memory queues change as the ops run; the state each had before the
 * segment is kept in seg_undo so that a failed segment is rolled back
 * entirely, after which its ops are run again one per transaction so that
 * one bad op (say, out of disk space) fails alone.
 */

static gboolean
begin (McqStore *s, DB_TXN **txn, GError **error)
{
  int ret = txn_start (s, txn);
  if (ret != 0)
    return store_db_fail (ret, error, "beginning a transaction");
  return TRUE;
}

static gboolean
seg_begin (McqStore *s, GError **error)
{
  s->seg.epoch++;
  g_array_set_size (s->seg.undo, 0);
  s->seg.next_id = s->next_id;
  s->seg.depth = s->depth;
  s->seg.bytes = 0;
  s->seg.damaged = 0;
  s->seg.log = 0;
  s->seg.db_free = 0;
  s->seg.now = g_get_real_time ();
  return begin (s, &s->seg.txn, error);
}

/* Records q's state before its first change in this segment. */
static Queue *
seg_touch (McqStore *s, Queue *q)
{
  if (q->seg_epoch != s->seg.epoch)
    {
      Undo u = { q, *q, FALSE };
      q->seg_epoch = s->seg.epoch;
      g_array_append_val (s->seg.undo, u);
    }
  return q;
}

static Queue *
seg_create (McqStore *s, const char *name)
{
  Queue *q = g_new0 (Queue, 1);
  Undo u = { q, { 0 }, TRUE };

  q->name = g_strdup (name);
  q->id = s->next_id++;
  q->seg_epoch = s->seg.epoch;
  g_hash_table_insert (s->queues, q->name, q);
  g_array_append_val (s->seg.undo, u);
  return q;
}

static void
seg_rollback (McqStore *s)
{
  /* Newest first, so a queue created and then changed ends up removed. */
  for (guint i = s->seg.undo->len; i-- > 0;)
    {
      Undo *u = &g_array_index (s->seg.undo, Undo, i);
      if (u->created)
        g_hash_table_remove (s->queues, u->q->name);
      else
        {
          char *name = u->q->name;
          *u->q = u->saved;
          u->q->name = name;
        }
    }
  g_array_set_size (s->seg.undo, 0);
  s->next_id = s->seg.next_id;
  s->depth = s->seg.depth;
}

/* The segment's cursor must be closed before its transaction ends. */
static int
seg_close_cursor (McqStore *s)
{
  int ret = 0;

  if (s->seg.cursor != NULL)
    ret = s->seg.cursor->close (s->seg.cursor);
  s->seg.cursor = NULL;
  return ret;
}

static void
seg_abort (McqStore *s)
{
  seg_close_cursor (s);
  s->seg.txn->abort (s->seg.txn);
  s->seg.txn = NULL;
  seg_rollback (s);
}

/* Writes the record of every queue the segment touched and commits. */
static gboolean
seg_commit (McqStore *s, u_int32_t flags, GError **error)
{
  int ret;

  if ((ret = seg_close_cursor (s)) != 0)
    {
      seg_abort (s);
      return store_db_fail (ret, error, "closing a cursor");
    }
  for (guint i = 0; i < s->seg.undo->len; i++)
    {
      Queue *q = g_array_index (s->seg.undo, Undo, i).q;
      if (!write_queue (s, s->seg.txn, q, error))
        {
          seg_abort (s);
          return FALSE;
        }
    }
  ret = s->seg.txn->commit (s->seg.txn, flags);
  s->seg.txn = NULL;
  if (ret != 0)
    {
      seg_rollback (s);
      return store_db_fail (ret, error, "commit");
    }
  for (guint i = 0; i < s->seg.undo->len; i++)
    store_mark_dirty (s, g_array_index (s->seg.undo, Undo, i).q->name);
  g_array_set_size (s->seg.undo, 0);
  maint_add_log_debt (s, s->seg.bytes);
  mcq_quarantine_count_add (s->quarantine, s->seg.damaged);
  s->room.space.db_free = s->seg.db_free >= 0 || s->room.space.db_free > (guint64) -s->seg.db_free
                          ? s->room.space.db_free + s->seg.db_free : 0;
  return TRUE;
}

static gboolean
seg_set (McqStore *s, McqOp *op)
{
  size_t pos = 0;
  const char *name = mcq_op_next_key (op, &pos);
  Queue *q = g_hash_table_lookup (s->queues, name);
  guint8 key[MSG_KEY_SIZE];
  gint64 now = s->seg.now;
  DBT k, v;
  int ret;

  q = q != NULL ? seg_touch (s, q) : seg_create (s, name);

  /* mcq_op_set_body left MSG_HEADER_SIZE bytes of room in front of the
   * body for the flags, time and checksum, so the record is written
   * without another copy. */
  mcq_rec_key (q->id, q->tail, key);
  mcq_rec_seal (op->body->data, op->body->len, key, op->flags, now);
  dbt_init (&k, key, sizeof key);
  dbt_init (&v, op->body->data, op->body->len);
  if ((ret = s->messages_db->put (s->messages_db, s->seg.txn, &k, &v, 0)) != 0)
    return store_db_fail (ret, &op->error, "storing the message");

  if (q->head == q->tail)
    q->head_time = now;
  q->tail++;
  q->enqueued++;
  q->bytes += op->body->len - MSG_HEADER_SIZE;
  s->depth++;
  s->seg.bytes += op->body->len + LOG_OP_OVERHEAD;
  s->seg.log += mcq_space_log_bytes (&s->room.space.geom, op->body->len);
  s->seg.db_free -= mcq_space_db_bytes (&s->room.space.geom, op->body->len);
  return TRUE;
}

/* The room a taken message holds: its body, and at least one byte, so that
 * a get that took an empty message never looks as if it took nothing (such
 * a get must not be parked and run again: its message is already gone). */
static gsize
room_of (gsize body_len)
{
  return MAX (body_len, 1);
}

/* Returns to op->room what it granted for a message not taken. */
static void
give_back (McqOp *op, gsize *granted)
{
  if (*granted > 0 && op->room != NULL)
    op->room (op, -(gssize) *granted);
  *granted = 0;
}

/* Reads the record under the segment's cursor at key k (how: DB_SET, or
 * DB_CURRENT where the cursor already is) into op->values, after what is
 * there.  op->room is asked before the record is copied (a record past the
 * first 4 KiB is sized by Berkeley DB without a copy), for the most its
 * body can be; *granted gets what it gave, for the caller to settle once
 * the record is checked.  On a decline values is left as it was and
 * *declined is set. */
static int
read_into (McqStore *s, DBT *k, McqOp *op, guint start, u_int32_t how,
           gsize *granted, gboolean *declined)
{
  GByteArray *values = op->values;
  guint room = 4096;
  gboolean asked = FALSE;
  DBT v;
  int ret;

  *granted = 0;
  for (;;)
    {
      g_byte_array_set_size (values, start + room);
      dbt_init (&v, values->data + start, 0);
      v.ulen = room;
      v.flags = DB_DBT_USERMEM;
      ret = s->seg.cursor->get (s->seg.cursor, k, &v, how);
      if ((ret == 0 || ret == DB_BUFFER_SMALL) && !asked && op->room != NULL)
        {
          gsize most = room_of (v.size > MCQ_REC_LEGACY_HEADER ? v.size - MCQ_REC_LEGACY_HEADER : 0);
          asked = TRUE;
          if (!op->room (op, (gssize) most))
            {
              g_byte_array_set_size (values, start);
              *declined = TRUE;
              return 0;
            }
          *granted = most;
        }
      if (ret != DB_BUFFER_SMALL)
        break;
      room = v.size;            /* a big message: one more search */
    }
  g_byte_array_set_size (values, start + (ret == 0 ? v.size : 0));
  if (ret != 0)
    give_back (op, granted);
  return ret;
}

/* Sets aside the damaged record rec[0..len) under the segment's cursor:
 * copied to integrity.db and removed from messages.db, in the segment's
 * transaction.  The queue does not move: another record may still be
 * found under the same key. */
static int
set_aside (McqStore *s, Queue *q, const guint8 *rec, size_t len, const char *why)
{
  int ret;

  if ((ret = mcq_quarantine_put (s->quarantine, s->seg.txn, q->name, q->id, q->head,
                                 rec, len, why)) != 0)
    return ret;
  s->seg.bytes += 2 * len + LOG_OP_OVERHEAD;
  s->seg.log += 2 * mcq_space_log_bytes (&s->room.space.geom, len);   /* the copy and the removal */
  q->bytes -= MIN (q->bytes, len > MCQ_REC_HEADER ? len - MCQ_REC_HEADER : 0);
  return s->seg.cursor->del (s->seg.cursor, 0);
}

/* Moves the head of q past the messages up to (not including) end, for
 * which no sound record is left, and reports them.  They count as
 * dequeued, so enqueued - dequeued stays the queue's depth. */
static int
pass_over (McqStore *s, Queue *q, guint64 end, const char *why)
{
  int ret;

  if (why == mcq_why_missing || why == mcq_why_page_missing)
    if ((ret = mcq_quarantine_put (s->quarantine, s->seg.txn, q->name, q->id, q->head,
                                   NULL, 0, why)) != 0)
      return ret;
  mcq_quarantine_report (s->quarantine, q->name, q->head, end - 1, why);
  s->seg.damaged += end - q->head;
  q->dequeued += end - q->head;
  s->depth -= end - q->head;
  q->head = end;
  if (q->head == q->tail)
    q->bytes = 0;
  return 0;
}

/* Reads the head message of q into op->values from start, setting aside
 * every damaged record and passing over the messages left without a
 * sound one; 0 with the queue empty if none was left.  Only a record
 * whose checksum matches (or a legacy one where the store may hold
 * them) gets through. */
static int
read_head (McqStore *s, Queue *q, McqOp *op, guint start, McqRecView *view,
           gboolean *declined)
{
  const char *first_why = NULL;   /* the first damage found at this seq */
  guint8 key[MSG_KEY_SIZE];
  guint64 next = q->head + 1;
  DBT k;
  int ret;

  while (q->head != q->tail)
    {
      const char *why = NULL;
      gsize granted;

      mcq_rec_key (q->id, q->head, key);
      dbt_init (&k, key, sizeof key);
      ret = read_into (s, &k, op, start, DB_SET, &granted, declined);
      if (ret == DB_NOTFOUND &&
          (ret = mcq_quarantine_seek (s->seg.cursor, q->id, q->head, &next)) == 0)
        {
          k.ulen = sizeof key;
          k.flags = DB_DBT_USERMEM;
          ret = read_into (s, &k, op, start, DB_CURRENT, &granted, declined);
        }
      if (ret == 0 && *declined)
        return 0;
      if (ret == 0)
        {
          const guint8 *rec = op->values->data + start;
          size_t len = op->values->len - start;
          gboolean legacy_ok = mcq_quarantine_legacy_ok (s->quarantine, q->id, q->head);

          if (mcq_rec_check (rec, len, key, legacy_ok, view, &why) != MCQ_REC_DAMAGED)
            {
              granted -= MIN (granted, room_of (view->body_len));
              give_back (op, &granted);      /* granted beyond the exact body */
              return 0;
            }
          give_back (op, &granted);
          ret = set_aside (s, q, rec, len, why);
          g_byte_array_set_size (op->values, start);
          if (ret != 0)
            return ret;
          first_why = first_why != NULL ? first_why : why;
          continue;
        }
      if (ret == DB_NOTFOUND)
        why = mcq_why_missing;
      else if (ret == DB_PAGE_NOTFOUND)
        why = mcq_why_page_missing, next = q->head + 1;
      else
        return ret;
      /* With nothing left at this seq, the messages up to the next record
       * of the queue seen around it are gone too (all of them if none). */
      if (first_why != NULL)
        next = q->head + 1;
      if ((ret = pass_over (s, q, MIN (next, q->tail), first_why != NULL ? first_why : why)) != 0)
        return ret;
      first_why = NULL;
    }
  q->head_time = 0;
  return 0;
}

/* A take that failed after its message was read: the room granted for it
 * goes back (the caller never sees the message), and ret is passed on. */
static int
forget_read (McqOp *op, const McqRecView *view, int ret)
{
  if (op->room != NULL)
    op->room (op, -(gssize) room_of (view->body_len));
  return ret;
}

/* Takes the head message of q into m, with the segment's cursor: one
 * search finds it, the delete and the step to the next message (whose
 * header gives the queue's new oldest-message time) reuse the position.
 * Three separate DB calls cost three searches and three cursors.  The
 * message is read into op->values, which is kept with the op, so a get
 * allocates nothing once warm.  If op->room declines it, the message
 * stays where it is and *declined is set; so it is if the queue held
 * only damaged messages. */
static int
take_head (McqStore *s, Queue *q, McqOp *op, McqMessage *m, gboolean *declined)
{
  guint8 key[MSG_KEY_SIZE], next_key[MSG_KEY_SIZE], header[MCQ_REC_TIME_END];
  guint start = op->values->len;
  McqRecView view;
  DBT k, v;
  int ret;

  if (s->seg.cursor == NULL &&
      (ret = s->messages_db->cursor (s->messages_db, s->seg.txn, &s->seg.cursor, 0)) != 0)
    return ret;
  if ((ret = read_head (s, q, op, start, &view, declined)) != 0 || *declined)
    return ret;
  if (q->head == q->tail)
    {
      /* Only damaged messages were left. */
      g_byte_array_set_size (op->values, start);
      *declined = TRUE;
      return 0;
    }
  if ((ret = s->seg.cursor->del (s->seg.cursor, 0)) != 0)
    return forget_read (op, &view, ret);
  m->flags = view.flags;
  m->seq = q->head;
  m->offset = start + view.body_offset;
  m->len = view.body_len;
  q->head++;
  q->head_time = 0;
  if (q->head == q->tail)
    return 0;

  /* Seqs are contiguous, so the next record is the new head. */
  dbt_init (&k, next_key, sizeof next_key);
  k.ulen = sizeof next_key;
  k.flags = DB_DBT_USERMEM;
  dbt_init (&v, header, sizeof header);
  v.ulen = v.dlen = sizeof header;
  v.doff = 0;
  v.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;
  mcq_rec_key (q->id, q->head, key);
  /* Stepping off the deleted record is what removes it from its page (and
   * frees its overflow pages): a failure here, e.g. no space to log that,
   * must fail the transaction, or it commits a half-removed record that
   * makes every later message of the page unreadable. */
  ret = s->seg.cursor->get (s->seg.cursor, &k, &v, DB_NEXT);
  if (ret == 0 && k.size == MSG_KEY_SIZE && memcmp (next_key, key, MSG_KEY_SIZE) == 0 &&
      v.size >= MCQ_REC_TIME_END)
    q->head_time = mcq_rec_time (header, v.size);
  else if (ret == 0 || ret == DB_NOTFOUND || ret == DB_BUFFER_SMALL)
    q->head_time = txn_read_enqueue_time (s, s->seg.txn, q->id, q->head);
  else
    return forget_read (op, &view, ret);
  return 0;
}

/* Whether a get segment may take one more message: always its first;
 * short of space, another only if the log it has written plus one of the
 * largest message still fits in the room past the reserve. */
static gboolean
space_allows_another (McqStore *s)
{
  return s->seg.log == 0 || !room_tight (s) ||
         mcq_space_fits_log (&s->room.space, s->seg.log + room_step (s));
}

static gboolean
seg_get (McqStore *s, McqOp *op)
{
  size_t pos = 0;
  const char *name;
  McqMessage *m;
  guint i;

  if (op->messages == NULL)
    op->messages = g_array_new (FALSE, TRUE, sizeof (McqMessage));
  if (op->values == NULL)
    op->values = g_byte_array_new ();
  g_array_set_size (op->messages, op->nkeys);

  for (i = 0; (name = mcq_op_next_key (op, &pos)) != NULL; i++)
    {
      Queue *q = g_hash_table_lookup (s->queues, name);
      gboolean declined = FALSE;
      int ret;

      m = &g_array_index (op->messages, McqMessage, i);
      m->data = NULL;
      m->len = 0;
      if (q == NULL || q->head == q->tail)
        continue;
      /* Short of space, a multi-get takes one message, and more only while
       * the room left holds another of the largest size; the rest answer
       * empty and stay queued. */
      if (!space_allows_another (s))
        continue;
      seg_touch (s, q);
      if ((ret = take_head (s, q, op, m, &declined)) != 0)
        return store_db_fail (ret, &op->error, ret == DB_NOTFOUND ? "a message is missing from its queue"
                                                            : "reading a message");
      if (declined)
        continue;
      m->data = op->values->data;   /* placeholder: set below, once values stops growing */
      q->dequeued++;
      q->bytes -= MIN (q->bytes, m->len);
      s->depth--;
      s->seg.bytes += m->len + LOG_OP_OVERHEAD;   /* the removal logs the record */
      s->seg.log += mcq_space_log_bytes (&s->room.space.geom, m->len + MSG_HEADER_SIZE);
      s->seg.db_free += mcq_space_db_freed (&s->room.space.geom, m->len + MSG_HEADER_SIZE) +
                        mcq_space_leaf_pages_freed (&s->room.space.geom, m->len + MSG_HEADER_SIZE,
                                                    &q->leaf_drained);
    }
  for (i = 0; i < op->messages->len; i++)
    {
      m = &g_array_index (op->messages, McqMessage, i);
      if (m->data != NULL)
        m->data = op->values->data + m->offset;
    }
  return TRUE;
}

static void
op_forget_results (McqOp *op)
{
  if (op->messages != NULL)
    for (guint i = 0; i < op->messages->len; i++)
      {
        McqMessage *m = &g_array_index (op->messages, McqMessage, i);
        if (m->data != NULL && op->room != NULL)
          op->room (op, -(gssize) room_of (m->len));
        m->data = NULL;
      }
  if (op->values != NULL)
    g_byte_array_set_size (op->values, 0);
}

static gboolean
seg_run (McqStore *s, McqOp *op)
{
  return op->type == MCQ_OP_SET ? seg_set (s, op) : seg_get (s, op);
}

/* Runs ops[0..n) (all sets and gets) as one transaction; on failure, each
 * op again in its own, so only the op at fault fails.  Returns whether
 * every commit was made with `flags` (else the log still needs writing). */
gboolean
txn_run_segment (McqStore *s, McqOp **ops, guint n, u_int32_t flags)
{
  g_autoptr(GError) error = NULL;
  guint i;

  if (seg_begin (s, &error))
    {
      for (i = 0; i < n && seg_run (s, ops[i]); i++)
        ;
      if (i == n && seg_commit (s, flags, &error))
        return TRUE;
      if (i < n)
        seg_abort (s);
    }
  for (i = 0; i < n; i++)
    op_forget_results (ops[i]);
  if (n == 1)
    {
      ops[0]->status = MCQ_OP_FAILED;
      if (ops[0]->error == NULL)
        ops[0]->error = g_steal_pointer (&error);
      return FALSE;
    }
  for (i = 0; i < n; i++)
    g_clear_error (&ops[i]->error);
  for (i = 0; i < n; i++)
    txn_run_segment (s, &ops[i], 1, DB_TXN_NOSYNC);
  return FALSE;
}

static void
run_delete (McqStore *s, McqOp *op)
{
  size_t pos = 0;
  const char *name = mcq_op_next_key (op, &pos);
  Queue *q = g_hash_table_lookup (s->queues, name);
  guint8 id[4], range[16];
  DB_TXN *txn = NULL;
  DBT k, v;
  int ret;

  if (q == NULL)
    {
      op->status = MCQ_OP_NOT_FOUND;
      return;
    }
  if (!begin (s, &txn, &op->error))
    goto fail;
  dbt_init (&k, q->name, strlen (q->name));
  if ((ret = s->queues_db->del (s->queues_db, txn, &k, 0)) != 0)
    {
      store_db_fail (ret, &op->error, "deleting the queue record");
      goto abort;
    }
  if (q->head != q->tail)
    {
      mcq_put_be32 (id, q->id);
      mcq_put_be64 (range, q->head);
      mcq_put_be64 (range + 8, q->tail);
      dbt_init (&k, id, sizeof id);
      dbt_init (&v, range, sizeof range);
      if ((ret = s->purge_db->put (s->purge_db, txn, &k, &v, 0)) != 0)
        {
          store_db_fail (ret, &op->error, "scheduling the queue's messages for removal");
          goto abort;
        }
    }
  if (!commit (txn, &op->error))
    goto fail;
  if (q->head != q->tail)
    s->purge_pending = TRUE;
  s->depth -= q->tail - q->head;
  store_mark_dirty (s, name);
  g_hash_table_remove (s->queues, name);
  return;

abort:
  txn->abort (txn);
fail:
  op->status = MCQ_OP_FAILED;
}

static gint
compare_stat (gconstpointer a, gconstpointer b)
{
  return strcmp (((const McqQueueStat *) a)->name, ((const McqQueueStat *) b)->name);
}

static void
run_stats_queue (McqStore *s, McqOp *op)
{
  GHashTableIter it;
  gpointer v;

  if (op->queue_stats == NULL)
    op->queue_stats = g_array_new (FALSE, TRUE, sizeof (McqQueueStat));
  g_hash_table_iter_init (&it, s->queues);
  while (g_hash_table_iter_next (&it, NULL, &v))
    {
      Queue *q = v;
      McqQueueStat st = { g_strdup (q->name), q->enqueued, q->dequeued };
      g_array_append_val (op->queue_stats, st);
    }
  g_array_sort (op->queue_stats, compare_stat);
}

/* The most log a purge step writes: each removal logs the whole message,
 * and big messages would otherwise make one huge transaction. */
#define PURGE_LOG_BYTES (4 * 1024 * 1024)

/* A purge step's worst case (*worst) against the room left: whether it
 * must run carefully (room_tight, so the log is settled after it). */
static gboolean
purge_plan (McqStore *s, guint64 *worst)
{
  gboolean tight;

  room_look (s, FALSE);
  *worst = mcq_space_worst (&s->room.space, PURGE_LOG_BYTES, 0, 1, 0);
  tight = g_atomic_int_get (&s->room.pressure) ||
          s->room.space.room - (gint64) s->room.space.spent < (gint64) *worst;
  if (tight)
    room_look (s, TRUE);
  s->room.careful = tight;
  return tight;
}

/* Removes up to PURGE_CHUNK messages of one deleted queue, and no more
 * than PURGE_LOG_BYTES of log; short of room for that, only while the
 * room left holds another message of the largest size.  At least one. */
void
txn_purge_step (McqStore *s)
{
  DBC *cur = NULL;
  DB_TXN *txn = NULL;
  DBT k, v;
  guint8 idbuf[4], range[16], key[MSG_KEY_SIZE];
  guint64 head, tail, n, start = maint_log_end (s), worst;
  gboolean tight = purge_plan (s, &worst);
  int ret;

  if (txn_start (s, &txn) != 0)
    return;
  if ((ret = s->purge_db->cursor (s->purge_db, txn, &cur, 0)) != 0)
    goto abort;
  dbt_init (&k, idbuf, sizeof idbuf);
  k.ulen = sizeof idbuf;
  k.flags = DB_DBT_USERMEM;
  dbt_init (&v, range, sizeof range);
  v.ulen = sizeof range;
  v.flags = DB_DBT_USERMEM;
  ret = cur->get (cur, &k, &v, DB_FIRST);
  if (ret == DB_NOTFOUND)
    {
      cur->close (cur);
      txn->abort (txn);
      s->purge_pending = FALSE;
      return;
    }
  if (ret != 0 || k.size != 4 || v.size != 16)
    goto abort_cursor;
  head = mcq_get_be64 (range);
  tail = mcq_get_be64 (range + 8);
  for (n = 0; head < tail && n < PURGE_CHUNK; n++, head++)
    {
      DBT mk;
      if (n > 0 && start != 0 &&
          (tight ? !mcq_space_fits_log (&s->room.space, maint_log_end (s) - start + room_step (s))
                 : maint_log_end (s) - start >= PURGE_LOG_BYTES))
        break;
      mcq_rec_key (mcq_get_be32 (idbuf), head, key);
      dbt_init (&mk, key, sizeof key);
      ret = s->messages_db->del (s->messages_db, txn, &mk, 0);
      if (ret != 0 && ret != DB_NOTFOUND)
        goto abort_cursor;
    }
  if (head < tail)
    {
      mcq_put_be64 (range, head);
      ret = cur->put (cur, &k, &v, DB_CURRENT);
    }
  else
    ret = cur->del (cur, 0);
  if (ret != 0)
    goto abort_cursor;
  cur->close (cur);
  if ((ret = txn->commit (txn, 0)) != 0)
    g_warning ("purging a deleted queue: %s", db_strerror (ret));
  else if (start != 0)
    maint_add_log_debt (s, maint_log_end (s) - start);
  s->room.space.spent += worst;
  return;

abort_cursor:
  cur->close (cur);
abort:
  g_warning ("purging a deleted queue: %s", db_strerror (ret));
  txn->abort (txn);
  s->purge_pending = FALSE;   /* retried at the next start */
}

void
txn_run_op (McqStore *s, McqOp *op)
{
  switch (op->type)
    {
    case MCQ_OP_DELETE:
      run_delete (s, op);
      break;
    case MCQ_OP_STATS_QUEUE:
      run_stats_queue (s, op);
      break;
    case MCQ_OP_CHECKPOINT:
      if (!maint_settle (s, FALSE, &op->error))
        op->status = MCQ_OP_FAILED;
      break;
    case MCQ_OP_ARCHIVE:
      if (!maint_settle (s, TRUE, &op->error))
        op->status = MCQ_OP_FAILED;
      break;
    default:
      g_assert_not_reached ();
    }
}
