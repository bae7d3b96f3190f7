/* store-audit.c — queues.db against messages.db at start: refuses when
 * listed messages are gone, gives orphaned messages a queue record again.
 * Knows the record layouts (store-format.h); runs before store.c loads the queues. */
#include "store-audit.h"

#include <errno.h>
#include <gio/gio.h>
#include <stdlib.h>
#include <string.h>

#include "i18n.h"
#include "store-format.h"

/* The layouts are store-format.h's.  Queue id 0 holds only the page
 * reserve (store-room.c). */
#define QREC_SIZE MCQ_QREC_SIZE
#define MSG_KEY_SIZE MCQ_REC_KEY_SIZE

typedef struct {
  char *name;
  guint8 rec[QREC_SIZE];
  gboolean seen;               /* messages.db holds messages of this id */
  gboolean rebuilt;            /* the record was lost and is made anew */
  guint64 added;               /* messages the fixed record reaches that the
                                  old one did not */
} QRec;

typedef struct {
  DB_ENV *env;
  DB *queues, *messages, *purge;
  GHashTable *by_id;           /* id -> QRec*, from queues.db */
  GHashTable *purging;         /* ids in purge.db */
  GPtrArray *fixes;            /* QRec* to write back (widened or rebuilt) */
  guint64 missing, listed;     /* messages queues.db lists that are absent, of all */
  char *missing_queue;         /* the first queue with messages missing */
  gboolean skipped;            /* messages.db's keys cannot be trusted */
} Check;

static void
qrec_free (gpointer p)
{
  QRec *q = p;
  g_free (q->name);
  g_free (q);
}

static int
load_records (Check *c)
{
  DBC *cur = NULL;
  DBT k, v;
  int ret;

  if ((ret = c->queues->cursor (c->queues, NULL, &cur, 0)) != 0)
    return ret;
  memset (&k, 0, sizeof k);
  memset (&v, 0, sizeof v);
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      QRec *q;
      if (v.size != QREC_SIZE || k.size == 0)
        continue;                /* load_queues refuses it, naming the file */
      q = g_new0 (QRec, 1);
      q->name = g_strndup (k.data, k.size);
      memcpy (q->rec, v.data, QREC_SIZE);
      g_hash_table_insert (c->by_id, GUINT_TO_POINTER (mcq_get_be32 (q->rec + MCQ_QREC_ID)), q);
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return ret;
  if ((ret = c->purge->cursor (c->purge, NULL, &cur, 0)) != 0)
    return ret;
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    if (k.size == 4)
      g_hash_table_add (c->purging, GUINT_TO_POINTER (mcq_get_be32 (k.data)));
  cur->close (cur);
  return ret == DB_NOTFOUND ? 0 : ret;
}

/* Positions cur with `flags` (from key `want`, if given) and reads the key
 * found into id/seq, without the message itself. */
static int
seek (DBC *cur, const guint8 *want, u_int32_t flags, guint32 *id, guint64 *seq)
{
  guint8 key[MSG_KEY_SIZE];
  DBT k, v;
  int ret;

  if (want != NULL)
    memcpy (key, want, MSG_KEY_SIZE);
  memset (&k, 0, sizeof k);
  k.data = key;
  k.size = want != NULL ? MSG_KEY_SIZE : 0;
  k.ulen = MSG_KEY_SIZE;
  k.flags = DB_DBT_USERMEM;
  memset (&v, 0, sizeof v);
  v.flags = DB_DBT_PARTIAL;
  if ((ret = cur->get (cur, &k, &v, flags)) != 0)
    return ret;
  if (k.size != MSG_KEY_SIZE)
    return EINVAL;
  *id = mcq_get_be32 (key);
  *seq = mcq_get_be64 (key + 4);
  return 0;
}

/* The first queue id at or after `from` that has messages, with the
 * first and last of its sequence numbers. */
static int
next_range (DBC *cur, guint32 from, guint32 *id, guint64 *first, guint64 *last)
{
  guint8 key[MSG_KEY_SIZE];
  guint32 id2;
  int ret;

  mcq_rec_key (from, 0, key);
  if ((ret = seek (cur, key, DB_SET_RANGE, id, first)) != 0)
    return ret;
  if (*id == G_MAXUINT32)
    ret = seek (cur, NULL, DB_LAST, &id2, last);
  else
    {
      mcq_rec_key (*id + 1, 0, key);
      ret = seek (cur, key, DB_SET_RANGE, &id2, last);
      if (ret == 0)
        ret = seek (cur, NULL, DB_PREV, &id2, last);
      else if (ret == DB_NOTFOUND)
        ret = seek (cur, NULL, DB_LAST, &id2, last);
    }
  return ret == 0 && id2 != *id ? EINVAL : ret;
}

/* Messages of queue id in [first, last], and their bodies' bytes. */
static int
count_range (Check *c, guint32 id, guint64 first, guint64 last, guint64 *n, guint64 *bytes)
{
  guint8 key[MSG_KEY_SIZE];
  DBC *cur = NULL;
  DBT k, v;
  int ret;

  *n = *bytes = 0;
  if ((ret = c->messages->cursor (c->messages, NULL, &cur, 0)) != 0)
    return ret;
  mcq_rec_key (id, first, key);
  memset (&k, 0, sizeof k);
  k.data = key;
  k.size = k.ulen = MSG_KEY_SIZE;
  k.flags = DB_DBT_USERMEM;
  memset (&v, 0, sizeof v);
  v.flags = DB_DBT_REALLOC;
  for (ret = cur->get (cur, &k, &v, DB_SET_RANGE); ret == 0;
       ret = cur->get (cur, &k, &v, DB_NEXT))
    {
      if (k.size != MSG_KEY_SIZE || mcq_get_be32 (key) != id || mcq_get_be64 (key + 4) > last)
        break;
      McqRecView view;
      (*n)++;
      if (mcq_rec_check (v.data, v.size, key, TRUE, &view, NULL) != MCQ_REC_DAMAGED)
        *bytes += view.body_len;
    }
  free (v.data);
  cur->close (cur);
  return ret == DB_NOTFOUND ? 0 : ret;
}

/* One queue's messages, [first, last], against its record: counts what
 * the record lists that is absent, and widens the record over messages
 * outside it (sequence numbers are contiguous, so the ends tell). */
static int
check_queue (Check *c, QRec *q, guint64 first, guint64 last)
{
  guint64 head = mcq_get_be64 (q->rec + MCQ_QREC_HEAD), tail = mcq_get_be64 (q->rec + MCQ_QREC_TAIL);
  guint64 lo = MAX (head, first), hi = MIN (tail, last + 1);
  guint64 present = hi > lo ? hi - lo : 0, n, bytes, deq;
  int ret;

  q->seen = TRUE;
  c->listed += tail - head;
  if (present < tail - head)
    {
      c->missing += tail - head - present;
      if (c->missing_queue == NULL)
        c->missing_queue = g_strdup (q->name);
    }
  if (first >= head && last < tail)
    return 0;
  lo = MIN (head, first);
  hi = MAX (tail, last + 1);
  if ((ret = count_range (c, mcq_get_be32 (q->rec + MCQ_QREC_ID), lo, hi - 1, &n, &bytes)) != 0)
    return ret;
  deq = mcq_get_be64 (q->rec + MCQ_QREC_DEQUEUED);
  mcq_put_be64 (q->rec + MCQ_QREC_HEAD, lo);
  mcq_put_be64 (q->rec + MCQ_QREC_TAIL, hi);
  mcq_put_be64 (q->rec + MCQ_QREC_ENQUEUED, mcq_get_be64 (q->rec + MCQ_QREC_ENQUEUED) + (hi - tail));
  mcq_put_be64 (q->rec + MCQ_QREC_DEQUEUED, deq - MIN (deq, head - lo));
  mcq_put_be64 (q->rec + MCQ_QREC_BYTES, bytes);
  q->added = (head - lo) + (hi - tail);
  g_ptr_array_add (c->fixes, q);
  return 0;
}

static gboolean
name_taken (Check *c, const char *name)
{
  GHashTableIter it;
  gpointer v;

  g_hash_table_iter_init (&it, c->by_id);
  while (g_hash_table_iter_next (&it, NULL, &v))
    if (strcmp (((QRec *) v)->name, name) == 0)
      return TRUE;
  return FALSE;
}

/* Messages of a queue id no record names: a record for them again, under
 * a new name (the old one was only in the lost record). */
static int
rebuild_queue (Check *c, guint32 id, guint64 first, guint64 last)
{
  QRec *q = g_new0 (QRec, 1);
  guint64 n, bytes;
  int ret;

  if ((ret = count_range (c, id, first, last, &n, &bytes)) != 0)
    {
      g_free (q);
      return ret;
    }
  q->name = g_strdup_printf ("recovered.%u", id);
  for (guint i = 2; name_taken (c, q->name); i++)
    {
      g_free (q->name);
      q->name = g_strdup_printf ("recovered.%u.%u", id, i);
    }
  mcq_put_be32 (q->rec + MCQ_QREC_ID, id);
  mcq_put_be64 (q->rec + MCQ_QREC_HEAD, first);
  mcq_put_be64 (q->rec + MCQ_QREC_TAIL, last + 1);
  mcq_put_be64 (q->rec + MCQ_QREC_ENQUEUED, last + 1);   /* a queue's sequence starts at 0 */
  mcq_put_be64 (q->rec + MCQ_QREC_DEQUEUED, first);
  mcq_put_be64 (q->rec + MCQ_QREC_BYTES, bytes);
  q->seen = TRUE;
  q->rebuilt = TRUE;
  q->added = n;
  g_hash_table_insert (c->by_id, GUINT_TO_POINTER (id), q);
  g_ptr_array_add (c->fixes, q);
  return 0;
}

/* Every queue id messages.db holds, against queues.db and purge.db. */
static int
walk_messages (Check *c)
{
  guint32 from = 1, id;
  guint64 first, last;
  DBC *cur = NULL;
  int ret;

  if ((ret = c->messages->cursor (c->messages, NULL, &cur, 0)) != 0)
    return ret;
  while ((ret = next_range (cur, from, &id, &first, &last)) == 0)
    {
      QRec *q = g_hash_table_lookup (c->by_id, GUINT_TO_POINTER (id));

      if (q != NULL)
        ret = check_queue (c, q, first, last);
      else if (!g_hash_table_contains (c->purging, GUINT_TO_POINTER (id)))
        ret = rebuild_queue (c, id, first, last);
      if (ret != 0 || id == G_MAXUINT32)
        break;
      from = id + 1;
    }
  cur->close (cur);
  return ret == DB_NOTFOUND ? 0 : ret;
}

/* Queues whose record lists messages of which messages.db has none. */
static void
count_unseen (Check *c)
{
  GHashTableIter it;
  gpointer v;

  g_hash_table_iter_init (&it, c->by_id);
  while (g_hash_table_iter_next (&it, NULL, &v))
    {
      QRec *q = v;
      guint64 depth = mcq_get_be64 (q->rec + MCQ_QREC_TAIL) - mcq_get_be64 (q->rec + MCQ_QREC_HEAD);

      if (q->seen || depth == 0)
        continue;
      c->listed += depth;
      c->missing += depth;
      if (c->missing_queue == NULL)
        c->missing_queue = g_strdup (q->name);
    }
}

/* Writes the fixed records in one transaction, made durable, then says
 * what each one changed. */
static int
write_fixes (Check *c)
{
  DB_TXN *txn = NULL;
  int ret;

  if (c->fixes->len == 0)
    return 0;
  if ((ret = c->env->txn_begin (c->env, NULL, &txn, 0)) != 0)
    return ret;
  for (guint i = 0; i < c->fixes->len && ret == 0; i++)
    {
      QRec *q = c->fixes->pdata[i];
      DBT k, v;
      memset (&k, 0, sizeof k);
      memset (&v, 0, sizeof v);
      k.data = q->name;
      k.size = (u_int32_t) strlen (q->name);
      v.data = q->rec;
      v.size = QREC_SIZE;
      ret = c->queues->put (c->queues, txn, &k, &v, 0);
    }
  if (ret != 0)
    {
      txn->abort (txn);
      return ret;
    }
  if ((ret = txn->commit (txn, 0)) != 0 || (ret = c->env->log_flush (c->env, NULL)) != 0)
    return ret;
  for (guint i = 0; i < c->fixes->len; i++)
    {
      QRec *q = c->fixes->pdata[i];
      guint64 depth = mcq_get_be64 (q->rec + MCQ_QREC_TAIL) - mcq_get_be64 (q->rec + MCQ_QREC_HEAD);
      if (q->rebuilt)
        g_warning (_("%llu messages in messages.db belonged to no queue (queues.db had lost "
                     "the record of queue id %u, and its name): they are now in queue %s"),
                   (unsigned long long) q->added, mcq_get_be32 (q->rec + MCQ_QREC_ID), q->name);
      else
        g_warning (_("queue %s: %llu messages in messages.db lay outside its record in "
                     "queues.db (an older queues.db?): they are queued again; %llu messages "
                     "now queued"), q->name, (unsigned long long) q->added,
                   (unsigned long long) depth);
    }
  return 0;
}

gboolean
mcq_store_audit_queues (DB_ENV *env, DB *queues, DB *messages, DB *purge, GError **error)
{
  Check c = { env, queues, messages, purge, NULL, NULL, NULL, 0, 0, NULL, FALSE };
  gboolean ok = TRUE;
  int ret;

  c.by_id = g_hash_table_new_full (g_direct_hash, g_direct_equal, NULL, qrec_free);
  c.purging = g_hash_table_new (g_direct_hash, g_direct_equal);
  c.fixes = g_ptr_array_new ();
  if ((ret = load_records (&c)) == 0 && (ret = walk_messages (&c)) != 0 &&
      (ret == DB_BUFFER_SMALL || ret == EINVAL))
    {
      /* Keys of another length than memcacheq's: a damaged or salvaged file.
       * The ends of its queues cannot be trusted, so nothing is rebuilt from
       * them; the get path sets damaged records aside as it meets them. */
      g_warning (_("messages.db holds keys that are not memcacheq's (damaged, or salvaged "
                   "with db_dump -r): queues.db is not checked against it; damaged messages "
                   "are set aside when their turn comes"));
      ret = 0;
      c.skipped = TRUE;
    }
  if (ret != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                   _("checking queues.db against messages.db: %s"), db_strerror (ret));
      ok = FALSE;
    }
  if (ok && !c.skipped)
    count_unseen (&c);
  if (c.skipped)
    {
      g_ptr_array_set_size (c.fixes, 0);
      c.missing = 0;
    }
  if (ok && c.missing > 0 && c.missing < c.listed)
    /* Some of what is listed is there: the rest is passed over as damaged
     * when its turn comes (see store-quarantine.h), and said here at once. */
    g_warning (_("queues.db lists %llu messages that messages.db does not hold (queue %s "
                 "among them): they will be passed over and counted as damaged"),
               (unsigned long long) c.missing, c.missing_queue);
  else if (ok && c.missing > 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   _("messages.db lacks %llu of the %llu messages that queues.db lists "
                     "(queue %s among them): it was removed, replaced or damaged. Restore it "
                     "from a backup, or move the home away to start empty"),
                   (unsigned long long) c.missing, (unsigned long long) c.listed,
                   c.missing_queue);
      ok = FALSE;
    }
  if (ok && (ret = write_fixes (&c)) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                   _("rebuilding queue records in queues.db: %s"), db_strerror (ret));
      ok = FALSE;
    }
  g_ptr_array_unref (c.fixes);
  g_hash_table_destroy (c.purging);
  g_hash_table_destroy (c.by_id);
  g_free (c.missing_queue);
  return ok;
}
