/* store.c — persistent FIFO queues in one transactional Berkeley DB environment.
 * Owns the DB_ENV and the message and queue databases; runs every transaction
 * (on the main thread, in batches), the group-commit sync thread and the
 * maintenance thread. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include "store.h"
#include "placement.h"
#include "store-audit.h"
#include "store-check.h"
#include "store-format.h"
#include "store-quarantine.h"
#include "store-space.h"

#include <db.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

/*
 * Layout.
 *  queues.db  (btree) name              -> QueueRecord (big-endian fields)
 *  messages.db (btree) id:u32 seq:u64 BE -> flags, enqueued-at (µs), checksum, body
 *                                           (see store-format.h)
 *  purge.db   (btree) id:u32 BE          -> head:u64 tail:u64 of a deleted queue
 *  integrity.db (btree)                  -> damaged records set aside (see
 *                                           store-quarantine.h)
 *
 * A queue holds the messages [head, tail).  Big-endian keys make the btree's
 * byte order the FIFO order, and appends land on the rightmost leaf.  Every
 * set or get changes the message and the queue's record in one transaction,
 * so the lifetime counters can never disagree with the messages.
 *
 * Deleting a queue removes its record and files its id in purge.db in one
 * small transaction; the messages are then removed in bounded chunks, one
 * per main-loop iteration, so a huge queue never makes one huge transaction.
 * Ids are never reused, so leftover messages are unreachable meanwhile.
 *
 * Durability.  The main thread runs the ops it has read in batches (see
 * hand_over).  Commits inside a batch are DB_TXN_NOSYNC (they stay in the log buffer);
 * the batch's last commit is DB_TXN_WRITE_NOSYNC, so one write() hands the
 * whole batch to the kernel before any reply leaves.  From then on a kill -9
 * of the daemon loses nothing, in either mode.  In durable mode the batch
 * then goes to the sync thread, where a single DB_ENV->log_flush fsyncs it
 * (and any other batch waiting) before its STOREDs are released: one fsync
 * covers every connection's commits (group commit), and the main thread
 * runs the next batch while the disk syncs.  Inside a batch, consecutive
 * sets and gets share one transaction (see "segments" below).
 *
 * Replies to gets are released after the write but before the fsync.  A get
 * that has been answered must not be answered again, and a dequeue that has
 * reached the kernel survives a daemon crash; what the fsync adds is
 * survival of a power cut, and a dequeue lost to one only makes a message
 * come back (at-least-once), never disappear.  Holding get replies for the
 * fsync would instead widen the window in which a crash can take a message
 * out of the queue whose reply never left the daemon.
 */

#define QUEUE_RECORD_SIZE (4 + 8 * 5)
#define MSG_KEY_SIZE MCQ_REC_KEY_SIZE
#define MSG_HEADER_SIZE MCQ_REC_HEADER
/* A batch is at most this many ops (see hand_over). */
#define BATCH_MAX 64
#define PURGE_CHUNK 512
#define CHECKPOINT_LOG_KB (16 * 1024)
/* Log bytes a set or a get writes besides the message itself, for the
 * estimate in log_debt: a -N fill of 1,000,000 100-byte sets wrote 334 MiB
 * of log (key and data items, their headers, commits and the queue
 * records; page splits). */
#define LOG_OP_OVERHEAD 224
/* Log written since the last completed checkpoint past which batches that
 * write wait (up to LOG_DEBT_WAIT_S) for the running checkpoint to end.
 * Recovery after a crash replays that log (about 200 MiB/s here), and a
 * checkpoint during a -N fill of 350k sets/s took 1.2 s, long enough for
 * 250 MiB of log: the first get after kill -9 came 1.2 s after start.
 * Writers outrunning the checkpoint are slowed down instead.  At 32 MiB
 * the wait also held back the first minute after a 10-million-message
 * fill (its first checkpoint has gigabytes of dirty page cache to sync):
 * set+get at that depth fell to 0.61x of empty.  128 MiB bounds the
 * replay to under a second and leaves that run alone (0.87x). */
#define LOG_DEBT_MAX_KB (8 * CHECKPOINT_LOG_KB)
#define LOG_DEBT_WAIT_S 5
/* Log files are kept small (this, or four log buffers if -L is larger)
 * so that the space held back below covers whole new ones. */
#define LOG_FILE_BYTES (2 * 1024 * 1024)

typedef struct {
  char *name;
  guint32 id;
  guint64 head, tail;
  guint64 enqueued, dequeued;
  guint64 bytes;
  gint64 head_time;            /* enqueue time of the head message, 0 if empty */
  guint64 leaf_drained;        /* leaf bytes taken from its head, not yet counted
                                  as free pages (mcq_space_leaf_pages_freed) */
  guint seg_epoch;             /* == McqStore.seg_epoch once touched by the segment */
} Queue;

typedef struct {
  Queue *q;
  Queue saved;
  gboolean created;
} Undo;

typedef struct _Completion Completion;
struct _Completion {
  struct _McqStore *store;
  struct _McqOp *first;
  gboolean changed;
  Completion *next;            /* in McqStore.done */
};

struct _McqStore {
  McqStoreConfig cfg;
  DB_ENV *env;
  DB *queues_db;
  DB *messages_db;
  guint64 log_file_bytes;      /* each log file's size */
  guint64 page_size;           /* messages.db's, as its file has it (-A only sets it
                                  for a new file) */
  DB *purge_db;
  McqQuarantine *quarantine;   /* integrity.db */

  GHashTable *queues;          /* main thread only: name -> Queue* */
  guint32 next_id;
  gboolean purge_pending;
  DB_TXN *seg_txn;             /* main thread: the open segment */
  DBC *seg_cursor;             /* its cursor on messages_db for gets, or NULL */
  GArray *seg_undo;            /* Undo, one per queue the segment touched */
  guint seg_epoch;
  guint32 seg_next_id;
  guint64 seg_depth;
  guint64 seg_bytes;           /* log volume the segment adds (estimate) */
  guint64 seg_damaged;         /* messages it passed over (see pass_over) */
  guint64 seg_log;             /* log it writes, as the space model counts it */
  gint64 seg_db_free;          /* its change to space.db_free */
  gint64 seg_now;              /* wall clock when the segment began: the
                                * enqueue time of its sets (one clock read
                                * per segment rather than per set) */

  McqOp *outbox, **outbox_tail;/* main thread: submitted, not yet handed over */
  guint outbox_len;
  GSource *flusher;
  Completion *done;            /* atomic: finished batches, newest first */
  GSource *deliverer;          /* runs them on the main context */
  GAsyncQueue *sync_inbox;     /* Completion* waiting for an fsync */
  GThread *sync;
  GThread *owner;              /* the thread that opened the store: the
                                * only one that may run transactions */
  Completion sync_stop;        /* sentinel */

  GThread *maint_thread;
  GMutex maint_lock;
  GCond maint_cond;
  gboolean maint_stop;
  gboolean ckp_wanted;         /* maint_lock: the log passed the threshold */
  McqOp *maint_ops, **maint_ops_tail;  /* maint_lock: checkpoints clients asked for */

  GHashTable *dirty;           /* main thread: names changed in this batch */
  guint64 depth;               /* main thread: messages in all queues */

  GMutex pub_lock;             /* guards `published` */
  GHashTable *published;       /* name -> McqQueueInfo*, as of the last batch */
  McqStoreWatchFunc watch;
  gpointer watch_data;

  gint pending;                /* atomic */
  guint64 log_debt;            /* atomic: bytes committed since the last checkpoint */
  gint space_pressure;         /* atomic: a set of the largest size could be refused */
  McqSpace space;              /* main thread: see store-space.h */
  gboolean space_careful;      /* main thread: too little room for this batch's
                                  worst case: one op per transaction */
  guint32 settled_log_file;    /* main thread: the log file at the last log removal */
  gint64 compact_checked_at;   /* main thread: see compact_if_mostly_free */
  gint64 compacted_at;
  McqStoreMark *mark;          /* memcacheq.state: see store-check.h */
  GMutex ckp_lock;             /* one checkpoint (and log_debt settlement) at a time */
  GMutex debt_lock;            /* with debt_cond: writers waiting for a checkpoint */
  GCond debt_cond;
  guint ckp_gen;               /* debt_lock: checkpoints settled so far */
  guint ckp_gave_up;           /* debt_lock: ckp_gen when a wait last timed out */
  gint ckp_failing;            /* atomic: the last checkpoint failed */
  guint64 queue_count;         /* atomic snapshots for status lines */
  guint64 total_depth;
};

/* ---- encoding ---------------------------------------------------------- */

static void
put_be32 (guint8 *p, guint32 v)
{
  v = GUINT32_TO_BE (v);
  memcpy (p, &v, 4);
}

static void
put_be64 (guint8 *p, guint64 v)
{
  v = GUINT64_TO_BE (v);
  memcpy (p, &v, 8);
}

static guint32
get_be32 (const guint8 *p)
{
  guint32 v;
  memcpy (&v, p, 4);
  return GUINT32_FROM_BE (v);
}

static guint64
get_be64 (const guint8 *p)
{
  guint64 v;
  memcpy (&v, p, 8);
  return GUINT64_FROM_BE (v);
}

static void
encode_queue (const Queue *q, guint8 out[QUEUE_RECORD_SIZE])
{
  put_be32 (out, q->id);
  put_be64 (out + 4, q->head);
  put_be64 (out + 12, q->tail);
  put_be64 (out + 20, q->enqueued);
  put_be64 (out + 28, q->dequeued);
  put_be64 (out + 36, q->bytes);
}

static void
decode_queue (const guint8 in[QUEUE_RECORD_SIZE], Queue *q)
{
  q->id = get_be32 (in);
  q->head = get_be64 (in + 4);
  q->tail = get_be64 (in + 12);
  q->enqueued = get_be64 (in + 20);
  q->dequeued = get_be64 (in + 28);
  q->bytes = get_be64 (in + 36);
}

static void
encode_msg_key (guint32 id, guint64 seq, guint8 out[MSG_KEY_SIZE])
{
  put_be32 (out, id);
  put_be64 (out + 4, seq);
}

static void
dbt_init (DBT *d, void *data, size_t size)
{
  memset (d, 0, sizeof *d);
  d->data = data;
  d->size = (u_int32_t) size;
}

static void
queue_free (gpointer p)
{
  Queue *q = p;
  g_free (q->name);
  g_free (q);
}

/* ---- errors -------------------------------------------------------------- */

static gboolean
db_fail (int ret, GError **error, const char *what)
{
  int code = G_IO_ERROR_FAILED;
  mcq_quarantine_note_error (ret);
  if (ret == ENOSPC || ret == EDQUOT)
    code = G_IO_ERROR_NO_SPACE;
  else if (ret == EACCES || ret == EPERM || ret == EROFS)
    code = G_IO_ERROR_PERMISSION_DENIED;
  g_set_error (error, G_IO_ERROR, code, "%s: %s", what, db_strerror (ret));
  return FALSE;
}

static void
bdb_errcall (const DB_ENV *env, const char *prefix, const char *msg)
{
  g_warning ("Berkeley DB: %s", msg);
}

/* ---- opening ------------------------------------------------------------- */

/* A database file shorter than the pages its own metadata counts has lost
 * its end (a truncated copy, a restore cut short).  Berkeley DB opens it
 * all the same when the cut falls on a page boundary, and then fails
 * requests that reach the missing pages ("page not found"), so it is
 * refused here.  Recovery has already run (DB_RECOVER, ending with a
 * checkpoint that writes every page), so a sound file is never short. */
static gboolean
check_length (McqStore *s, DB *db, const char *file, GError **error)
{
  g_autofree char *path = g_build_filename (s->cfg.home, file, NULL);
  DB_BTREE_STAT *st = NULL;
  u_int32_t page_size = 0;
  GStatBuf sb;
  guint64 want;
  int ret;

  if ((ret = db->stat (db, NULL, &st, DB_FAST_STAT)) != 0)
    return db_fail (ret, error, file);
  db->get_pagesize (db, &page_size);
  want = (guint64) st->bt_pagecnt * page_size;
  free (st);
  if (g_stat (path, &sb) == 0 && (guint64) sb.st_size < want)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "%s is truncated: %" G_GUINT64_FORMAT " bytes, its pages need %"
                   G_GUINT64_FORMAT " (restore it, or move the home away to start empty)",
                   file, (guint64) sb.st_size, want);
      return FALSE;
    }
  return TRUE;
}

static gboolean
open_db (McqStore *s, DB **out, const char *file, GError **error)
{
  DB *db = NULL;
  int ret;

  if ((ret = db_create (&db, s->env, 0)) != 0)
    return db_fail (ret, error, file);
  if (s->cfg.page_size != 0 && (ret = db->set_pagesize (db, s->cfg.page_size)) != 0)
    {
      db->close (db, 0);
      return db_fail (ret, error, "page size");
    }
  /* Not DB_REVSPLITOFF, although it looks made for a FIFO: it kept
   * emptied leaves from being freed, and so the fsyncs that freeing the
   * file's last page costs (see reserve_pages), but it never gave emptied
   * pages back: messages.db grew 79 -> 158 -> 237 MB over three
   * fill-and-drain rounds of 300,000 messages, where it stays at 79 MB
   * without it. */
  ret = db->open (db, NULL, file, NULL, DB_BTREE,
                  DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0600);
  if (ret != 0)
    {
      db->close (db, 0);
      if (ret == EINVAL || ret == DB_OLD_VERSION)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                       "%s is not a memcacheq database (corrupt, or another kind of file): %s",
                       file, db_strerror (ret));
          return FALSE;
        }
      return db_fail (ret, error, file);
    }
  if (!check_length (s, db, file, error))
    {
      db->close (db, 0);
      return FALSE;
    }
  *out = db;
  return TRUE;
}

static void
queue_info_free (gpointer p)
{
  McqQueueInfo *info = p;
  g_free (info->name);
  g_free (info);
}

static void
fill_info (const Queue *q, McqQueueInfo *info)
{
  info->enqueued = q->enqueued;
  info->dequeued = q->dequeued;
  info->depth = q->tail - q->head;
  info->bytes = q->bytes;
  info->head_time = q->head_time;
}

/* Copies the figures of the queues this batch touched to the snapshot
 * other threads read: one lock per batch, never per message. */
static gboolean
publish (McqStore *s)
{
  GHashTableIter it;
  gpointer name;
  gboolean changed = g_hash_table_size (s->dirty) > 0;

  if (!changed)
    return FALSE;
  g_mutex_lock (&s->pub_lock);
  g_hash_table_iter_init (&it, s->dirty);
  while (g_hash_table_iter_next (&it, &name, NULL))
    {
      Queue *q = g_hash_table_lookup (s->queues, name);
      McqQueueInfo *info;

      if (q == NULL)
        {
          g_hash_table_remove (s->published, name);
          continue;
        }
      info = g_hash_table_lookup (s->published, name);
      if (info == NULL)
        {
          info = g_new0 (McqQueueInfo, 1);
          info->name = g_strdup (name);
          g_hash_table_insert (s->published, info->name, info);
        }
      fill_info (q, info);
    }
  g_mutex_unlock (&s->pub_lock);
  g_hash_table_remove_all (s->dirty);
  __atomic_store_n (&s->queue_count, (guint64) g_hash_table_size (s->queues), __ATOMIC_RELAXED);
  __atomic_store_n (&s->total_depth, s->depth, __ATOMIC_RELAXED);
  return TRUE;
}

static void
mark_dirty (McqStore *s, const char *name)
{
  if (!g_hash_table_contains (s->dirty, name))
    g_hash_table_add (s->dirty, g_strdup (name));
}

/* Reads only the header of message (id, seq): its enqueue time. */
static gint64
read_enqueue_time (McqStore *s, DB_TXN *txn, guint32 id, guint64 seq)
{
  guint8 key[MSG_KEY_SIZE], header[MCQ_REC_TIME_END];
  DBT k, v;

  encode_msg_key (id, seq, key);
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

static gboolean
load_queues (McqStore *s, GError **error)
{
  DBC *cur = NULL;
  DBT k, v;
  int ret;

  if ((ret = s->queues_db->cursor (s->queues_db, NULL, &cur, 0)) != 0)
    return db_fail (ret, error, "queues.db");
  dbt_init (&k, NULL, 0);
  dbt_init (&v, NULL, 0);
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      Queue *q;
      if (v.size != QUEUE_RECORD_SIZE || k.size == 0 || k.size > 250)
        {
          cur->close (cur);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                       "queues.db holds a malformed record (%u bytes)", v.size);
          return FALSE;
        }
      q = g_new0 (Queue, 1);
      decode_queue (v.data, q);
      q->name = g_strndup (k.data, k.size);
      s->next_id = MAX (s->next_id, q->id + 1);
      s->depth += q->tail - q->head;
      g_hash_table_insert (s->queues, q->name, q);
      mark_dirty (s, q->name);
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return db_fail (ret, error, "queues.db");

  if ((ret = s->purge_db->cursor (s->purge_db, NULL, &cur, 0)) != 0)
    return db_fail (ret, error, "purge.db");
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      if (k.size == 4)
        s->next_id = MAX (s->next_id, get_be32 (k.data) + 1);
      s->purge_pending = TRUE;
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return db_fail (ret, error, "purge.db");

  GHashTableIter it;
  gpointer v_q;
  g_hash_table_iter_init (&it, s->queues);
  while (g_hash_table_iter_next (&it, NULL, &v_q))
    {
      Queue *q = v_q;
      if (q->head != q->tail)
        q->head_time = read_enqueue_time (s, NULL, q->id, q->head);
    }
  publish (s);
  return TRUE;
}

/* Short of space (space_tight), every transaction is one request, and
 * once the log has moved to a new file, or written one drain step, a
 * checkpoint and the removal of the log files it frees come before
 * anything more is written (see run_batch, seg_get, purge_step).  A
 * transaction's log stays on disk until a checkpoint follows it, and the
 * reserve covers one step from any log position. */
static guint64
space_step (McqStore *s)
{
  return mcq_space_step_bytes (&s->space.geom);
}

/* Short of space: a set of the largest size would be refused, or this
 * batch's worst case does not fit in the room left.  Main thread only. */
static gboolean
space_tight (McqStore *s)
{
  return g_atomic_int_get (&s->space_pressure) != 0 || s->space_careful;
}


static void space_look (McqStore *s, gboolean force);

/* Every transaction starts here.  The environment has no lock subsystem
 * (see mcq_store_open), which is sound only while one thread runs all the
 * transactions: a call from any other thread is a bug, caught here. */
static int
txn_start (McqStore *s, DB_TXN **txn)
{
  g_assert (g_thread_self () == s->owner);
  return s->env->txn_begin (s->env, NULL, txn, 0);
}

/* Free pages kept at the low end of messages.db's free list.
 *
 * Berkeley DB gives a freed page back to the file system when it is the
 * file's last page, and then flushes and fsyncs the log on the spot so
 * that the truncation cannot outrun its log record: in the caller's
 * thread, i.e. the main loop.  A queue that stays short keeps emptying
 * and refilling a few leaves; with no free page left, each new leaf
 * extends the file, becomes its last page, and is truncated again once
 * consumed: 120-160 synchronous fsyncs per second on the main thread in
 * durable set+get with 50 connections (each one stalls every client for
 * 0.2-2 ms).  So every start takes PAGE_RESERVE_BYTES of pages (one
 * overflow page per filler record, under the unused queue id 0) and frees
 * them again, highest first: the free list is a stack, so its top is then
 * the lowest of them and a short queue's churn reuses those, far from the
 * end of the file.  The last filler is kept for good, as an anchor: on a
 * new file its page is the last one, and without it each filler freed
 * would be the last page in turn and be truncated away (with 8 KiB pages,
 * where no leaf split lands among them, the whole reserve went so, and
 * the churn's fsyncs stayed).
 * A short queue of messages over about 4 KiB churns more pages than that
 * (10 KB messages, 50 connections: 510 main-thread fsyncs in 2 s, some
 * of them log switches; 618 without the reserve).
 * DB_REVSPLITOFF avoided the fsyncs too but never gave emptied pages back
 * (see open_db).  A failure here costs only speed: logged, not fatal. */
#define PAGE_RESERVE_BYTES (512 * 1024)

static void
reserve_pages (McqStore *s)
{
  guint64 page_size = s->page_size;
  DB_TXN *txn = NULL;
  guint8 key[MSG_KEY_SIZE];
  DBT k, v;
  guint32 n, i;
  int ret;

  n = (guint32) MAX (16u, PAGE_RESERVE_BYTES / page_size);
  /* The fillers and their log records need room; short of it, a failed
   * log write while they are undone could make Berkeley DB give up on
   * the environment.  A daemon that starts on a full disk is there to
   * let its queues be drained: skip. */
  space_look (s, TRUE);
  if (s->space.room < (gint64) (2 * s->log_file_bytes + 8 * n * page_size))
    {
      g_debug ("not reserving free pages in messages.db: short of disk space");
      return;
    }
  /* Half a page: past the size that Berkeley DB stores on a leaf, within
   * what one overflow page holds. */
  g_autofree guint8 *filler = g_malloc0 (page_size / 2);

  if ((ret = txn_start (s, &txn)) != 0)
    goto fail;
  for (i = 1; i <= n; i++)
    {
      encode_msg_key (0, i, key);
      dbt_init (&k, key, sizeof key);
      dbt_init (&v, filler, page_size / 2);
      /* The anchor (i == n) is put once, when the file has none yet. */
      ret = s->messages_db->put (s->messages_db, txn, &k, &v, i == n ? DB_NOOVERWRITE : 0);
      if (ret != 0 && !(i == n && ret == DB_KEYEXIST))
        goto fail;
    }
  for (i = n - 1; i >= 1; i--)
    {
      encode_msg_key (0, i, key);
      dbt_init (&k, key, sizeof key);
      if ((ret = s->messages_db->del (s->messages_db, txn, &k, 0)) != 0)
        goto fail;
    }
  ret = txn->commit (txn, 0);
  txn = NULL;
  if (ret == 0)
    {
      s->space.db_free += (n - 1) * page_size;   /* one overflow page each */
      return;
    }
fail:
  if (txn != NULL)
    txn->abort (txn);
  g_warning ("reserving free pages in messages.db: %s", db_strerror (ret));
  mcq_quarantine_note_error (ret);
}

/* Opens integrity.db; on the first start after an older version, notes in
 * one transaction every queue that may hold records without a checksum
 * (all below its tail: this version writes only checked records). */
static gboolean
open_integrity (McqStore *s, GError **error)
{
  GHashTableIter it;
  gpointer v;
  DB_TXN *txn = NULL;
  int ret;

  if ((s->quarantine = mcq_quarantine_open (s->env, error)) == NULL)
    return FALSE;
  if (!mcq_quarantine_needs_upgrade (s->quarantine))
    return TRUE;
  if ((ret = txn_start (s, &txn)) != 0)
    return db_fail (ret, error, "integrity.db");
  g_hash_table_iter_init (&it, s->queues);
  while (g_hash_table_iter_next (&it, NULL, &v))
    {
      Queue *q = v;
      if (q->head != q->tail &&
          !mcq_quarantine_note_legacy (s->quarantine, txn, q->id, q->tail, error))
        goto abort;
    }
  if (!mcq_quarantine_upgrade (s->quarantine, txn, error))
    goto abort;
  if ((ret = txn->commit (txn, 0)) != 0)
    return db_fail (ret, error, "integrity.db");
  return TRUE;
abort:
  txn->abort (txn);
  return FALSE;
}

static gpointer sync_thread (gpointer data);
static GSourceFuncs flusher_funcs;
static GSourceFuncs deliverer_funcs;
static gpointer maint_thread (gpointer data);
static void settle_if_pressed (McqStore *s);
static void space_open (McqStore *s);

McqStore *
mcq_store_open (const McqStoreConfig *cfg, GError **error)
{
  g_autofree McqStore *s = g_new0 (McqStore, 1);
  DB_ENV *env = NULL;
  int ret;

  s->cfg = *cfg;
  s->cfg.home = g_strdup (cfg->home);
  s->next_id = 1;
  s->owner = g_thread_self ();

  if (!mcq_store_check_files (s->cfg.home, error))
    {
      g_free (s->cfg.home);
      return NULL;
    }
  if ((ret = db_env_create (&env, 0)) != 0)
    {
      db_fail (ret, error, "creating the Berkeley DB environment");
      g_free (s->cfg.home);
      return NULL;
    }
  s->env = env;
  env->set_errcall (env, bdb_errcall);
  env->set_cachesize (env, (u_int32_t) (cfg->cache_bytes >> 30),
                      (u_int32_t) (cfg->cache_bytes & ((1u << 30) - 1)), 1);
  if (cfg->log_buffer_bytes != 0)
    env->set_lg_bsize (env, cfg->log_buffer_bytes);
  /* Commits never sync on their own: durable mode syncs whole batches
   * with log_flush, -N never does. */
  env->set_flags (env, DB_TXN_NOSYNC, 1);
  /* Log files no longer needed for recovery are removed after each
   * checkpoint, always (memcacheq 0.2.1 did it only with -R): a queue's
   * disk use must follow its depth, or a full disk could never be freed
   * by consuming messages. */
  env->log_set_config (env, DB_LOG_AUTO_REMOVE, 1);
  /* Durable mode zero-fills each log file when it is created, so that the
   * batches then overwrite blocks that exist instead of growing the file,
   * and fdatasync has no new size to commit to the file system's journal.
   * A 4 KiB write+fdatasync here: 182-188 us appending, 132-135 us over
   * zeroes.  50 connections, set+get: 100-102k ops/s at 9.5-9.6 us CPU per
   * op before, 114k at 8.6-9.0 after.  -N never syncs the log: nothing to
   * gain, and a fast fill would write every log byte twice. */
  if (!cfg->no_sync)
    env->log_set_config (env, DB_LOG_ZERO, 1);
  s->log_file_bytes = MAX ((guint64) LOG_FILE_BYTES, 4 * (guint64) cfg->log_buffer_bytes);
  g_assert (s->log_file_bytes <= G_MAXUINT32);   /* options cap -L well below */
  env->set_lg_max (env, (u_int32_t) s->log_file_bytes);

  /* DB_PRIVATE: one process owns the environment (the home lock makes sure
   * of it), so its regions live in our heap instead of shared files.
   * DB_RECOVER: every start replays the log, so a kill -9 loses nothing
   * that was flushed.
   *
   * No DB_INIT_LOCK: only the main thread reads or writes the databases,
   * and it has at most one transaction open at a time (a segment, a
   * delete, a purge chunk: each commits or aborts before the next
   * begins), so no two transactions can ever want the same page.  The
   * other threads call only log_flush, txn_checkpoint, memp_trickle and
   * log_archive, which take the log's and the cache's own mutexes, never
   * locks.  Keep it so: a second thread running transactions would need
   * the lock subsystem back.  Measured without it (alternating 4 s runs,
   * 50 connections, set+get): -N 5.66 -> 5.51 us CPU per op; durable
   * 128.7k -> 134.9k ops/s, 7.21 -> 6.87 us (every op took and released
   * two or three page locks, each a hash lookup and mutex pair). */
  ret = env->open (env, s->cfg.home,
                   DB_CREATE | DB_INIT_LOG | DB_INIT_MPOOL | DB_INIT_TXN |
                   DB_RECOVER | DB_PRIVATE | DB_THREAD, 0600);
  if (ret != 0)
    {
      db_fail (ret, error, "opening the Berkeley DB environment");
      env->close (env, 0);
      g_free (s->cfg.home);
      return NULL;
    }

  s->queues = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, queue_free);
  s->dirty = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  s->seg_undo = g_array_new (FALSE, FALSE, sizeof (Undo));
  s->published = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, queue_info_free);
  g_mutex_init (&s->pub_lock);
  if (!open_db (s, &s->queues_db, "queues.db", error) ||
      !open_db (s, &s->messages_db, "messages.db", error) ||
      !open_db (s, &s->purge_db, "purge.db", error) ||
      !mcq_store_audit_queues (env, s->queues_db, s->messages_db, s->purge_db, error) ||
      !load_queues (s, error) ||
      !open_integrity (s, error))
    {
      mcq_quarantine_close (s->quarantine);
      if (s->purge_db)
        s->purge_db->close (s->purge_db, 0);
      if (s->messages_db)
        s->messages_db->close (s->messages_db, 0);
      if (s->queues_db)
        s->queues_db->close (s->queues_db, 0);
      env->close (env, 0);
      g_hash_table_destroy (s->queues);
      g_hash_table_destroy (s->dirty);
      g_hash_table_destroy (s->published);
      g_array_unref (s->seg_undo);
      g_mutex_clear (&s->pub_lock);
      g_free (s->cfg.home);
      return NULL;
    }

  {
    u_int32_t page_size = 4096;
    s->messages_db->get_pagesize (s->messages_db, &page_size);
    s->page_size = page_size;
  }
  space_open (s);
  reserve_pages (s);
  s->mark = mcq_store_mark_open (s->cfg.home, env);
  s->outbox_tail = &s->outbox;
  s->flusher = g_source_new (&flusher_funcs, sizeof (GSource) + sizeof (McqStore *));
  *(McqStore **) (s->flusher + 1) = s;
  g_source_set_name (s->flusher, "mcq-store-flusher");
  g_source_set_priority (s->flusher, G_PRIORITY_HIGH);
  g_source_attach (s->flusher, NULL);
  s->deliverer = g_source_new (&deliverer_funcs, sizeof (GSource) + sizeof (McqStore *));
  *(McqStore **) (s->deliverer + 1) = s;
  g_source_set_name (s->deliverer, "mcq-store-deliverer");
  g_source_attach (s->deliverer, NULL);
  g_mutex_init (&s->maint_lock);
  g_mutex_init (&s->ckp_lock);
  g_mutex_init (&s->debt_lock);
  g_cond_init (&s->debt_cond);
  s->ckp_gave_up = G_MAXUINT;
  g_cond_init (&s->maint_cond);
  s->sync_inbox = g_async_queue_new ();
  s->sync = g_thread_new ("mcq-sync", sync_thread, s);
  s->maint_ops_tail = &s->maint_ops;
  s->maint_thread = g_thread_new ("mcq-maint", maint_thread, s);
  return g_steal_pointer (&s);
}

/* ---- ops ----------------------------------------------------------------- */

void
mcq_op_add_key (McqOp *op, const char *key, size_t len)
{
  if (op->keys == NULL)
    op->keys = g_byte_array_new ();
  g_byte_array_append (op->keys, (const guint8 *) key, (guint) len);
  g_byte_array_append (op->keys, (const guint8 *) "", 1);
  op->nkeys++;
}

const char *
mcq_op_next_key (const McqOp *op, size_t *pos)
{
  const char *k;

  if (op->keys == NULL || *pos >= op->keys->len)
    return NULL;
  k = (const char *) op->keys->data + *pos;
  *pos += strlen (k) + 1;
  return k;
}

void
mcq_op_clear (McqOp *op)
{
  if (op->keys)
    g_byte_array_set_size (op->keys, 0);
  op->nkeys = 0;
  if (op->body)
    g_byte_array_set_size (op->body, 0);
  g_clear_error (&op->error);
  if (op->messages)
    g_array_set_size (op->messages, 0);
  if (op->values)
    g_byte_array_set_size (op->values, 0);
  if (op->queue_stats)
    {
      for (guint i = 0; i < op->queue_stats->len; i++)
        g_free (g_array_index (op->queue_stats, McqQueueStat, i).name);
      g_array_set_size (op->queue_stats, 0);
    }
  op->status = MCQ_OP_OK;
}

void
mcq_op_release (McqOp *op)
{
  mcq_op_clear (op);
  g_clear_pointer (&op->keys, g_byte_array_unref);
  g_clear_pointer (&op->body, g_byte_array_unref);
  g_clear_pointer (&op->messages, g_array_unref);
  g_clear_pointer (&op->values, g_byte_array_unref);
  g_clear_pointer (&op->queue_stats, g_array_unref);
}

void
mcq_op_set_body (McqOp *op, guint32 flags, const void *data, size_t len)
{
  guint8 header[MSG_HEADER_SIZE] = { 0 };

  if (op->body == NULL)
    op->body = g_byte_array_sized_new ((guint) (len + MSG_HEADER_SIZE));
  g_byte_array_set_size (op->body, 0);
  g_byte_array_append (op->body, header, sizeof header);
  g_byte_array_append (op->body, data, (guint) len);
  op->flags = flags;
}

static void run_batch (McqStore *s, McqOp **batch, guint n);
static void purge_step (McqStore *s);

/* A checkpoint asked for by a client runs on the maintenance thread (it
 * may take seconds, and touches no queue), after every op submitted
 * before it has run. */
static void
maint_submit (McqStore *s, McqOp *op)
{
  op->chain = NULL;
  g_mutex_lock (&s->maint_lock);
  *s->maint_ops_tail = op;
  s->maint_ops_tail = &op->chain;
  g_cond_signal (&s->maint_cond);
  g_mutex_unlock (&s->maint_lock);
}

/* The ops submitted so far run on the main thread itself, in batches of
 * up to BATCH_MAX: as soon as that many are read, and once per loop
 * iteration (from the flusher source's prepare) for the rest.  Only the
 * fsync of durable mode happens elsewhere (sync_thread), so nothing here
 * waits for a disk, and one busy thread plus one mostly asleep is what
 * the scheduler handles best.
 *
 * Measured, 50 connections, set+get.  Before, a store thread ran the
 * transactions: requests were handed to it in chunks of 8 and batches
 * capped at 16 so that both threads worked at once.  That made 0.3
 * context switches per op under -N, mostly the main thread preempted by
 * the clients its replies woke, which the scheduler had pulled onto its
 * CPU while the store thread held the other (214k involuntary switches in
 * 5 s; 2k with the bench under SCHED_BATCH; redis-server, one busy
 * thread, 23k).  -N: threaded 144-153k ops/s at 6.9-7.1 us of CPU per op;
 * inline in batches of 16 157k at 6.06, of 64 165-169k at 5.66-5.74 (32:
 * 5.76, 128: 5.86, 256: 5.98).  Durable: 96-101k either way (CPU per op
 * 10.2 threaded, 9.9 inline), and with one connection 6.8-7.0k ops/s at
 * p99 502-569 us threaded against 8.5-8.6k at p99 362-465 us inline (one
 * hand-over fewer on each set's way to the fsync). */
static void
hand_over (McqStore *s)
{
  McqOp *batch[BATCH_MAX], *op = s->outbox, *next;
  guint n = 0;

  s->outbox = NULL;
  s->outbox_tail = &s->outbox;
  s->outbox_len = 0;
  for (; op != NULL; op = next)
    {
      gboolean to_maint = op->type == MCQ_OP_CHECKPOINT || op->type == MCQ_OP_ARCHIVE;

      next = op->chain;
      if (!to_maint)
        batch[n++] = op;
      if (n > 0 && (to_maint || n == BATCH_MAX || next == NULL))
        {
          run_batch (s, batch, n);
          n = 0;
        }
      if (to_maint)
        maint_submit (s, op);
    }
}

/* Runs what is left at the end of each loop iteration, then, while a
 * deleted queue's messages remain, one chunk of them per iteration. */
static gboolean
flusher_prepare (GSource *source, gint *timeout)
{
  McqStore *s = *(McqStore **) (source + 1);
  hand_over (s);
  *timeout = -1;
  if (s->purge_pending)
    {
      purge_step (s);
      settle_if_pressed (s);
      *timeout = 0;
    }
  return FALSE;
}

static gboolean
flusher_dispatch (GSource *source, GSourceFunc cb, gpointer data)
{
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs flusher_funcs = {
  .prepare = flusher_prepare,
  .dispatch = flusher_dispatch,
};

void
mcq_store_submit (McqStore *s, McqOp *op)
{
  g_atomic_int_inc (&s->pending);
  op->status = MCQ_OP_OK;
  op->chain = NULL;
  *s->outbox_tail = op;
  s->outbox_tail = &op->chain;
  if (++s->outbox_len >= BATCH_MAX)
    hand_over (s);
}

guint
mcq_store_pending (McqStore *s)
{
  return (guint) g_atomic_int_get (&s->pending);
}

guint64
mcq_store_queue_count (McqStore *s)
{
  return __atomic_load_n (&s->queue_count, __ATOMIC_RELAXED);
}

guint64
mcq_store_total_depth (McqStore *s)
{
  return __atomic_load_n (&s->total_depth, __ATOMIC_RELAXED);
}

guint64
mcq_store_damaged (McqStore *s)
{
  return mcq_quarantine_count (s->quarantine);
}

static gboolean
write_queue (McqStore *s, DB_TXN *txn, const Queue *q, GError **error)
{
  guint8 rec[QUEUE_RECORD_SIZE];
  DBT k, v;
  int ret;

  encode_queue (q, rec);
  dbt_init (&k, q->name, strlen (q->name));
  dbt_init (&v, rec, sizeof rec);
  if ((ret = s->queues_db->put (s->queues_db, txn, &k, &v, 0)) != 0)
    return db_fail (ret, error, "writing the queue record");
  return TRUE;
}

static gboolean
commit (DB_TXN *txn, GError **error)
{
  /* Ops outside segments (deletes) are rare: each writes its own log. */
  int ret = txn->commit (txn, DB_TXN_WRITE_NOSYNC);
  if (ret != 0)
    return db_fail (ret, error, "commit");
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
    return db_fail (ret, error, "beginning a transaction");
  return TRUE;
}

static void add_log_debt (McqStore *s, guint64 bytes);

static gboolean
seg_begin (McqStore *s, GError **error)
{
  s->seg_epoch++;
  g_array_set_size (s->seg_undo, 0);
  s->seg_next_id = s->next_id;
  s->seg_depth = s->depth;
  s->seg_bytes = 0;
  s->seg_damaged = 0;
  s->seg_log = 0;
  s->seg_db_free = 0;
  s->seg_now = g_get_real_time ();
  return begin (s, &s->seg_txn, error);
}

/* Records q's state before its first change in this segment. */
static Queue *
seg_touch (McqStore *s, Queue *q)
{
  if (q->seg_epoch != s->seg_epoch)
    {
      Undo u = { q, *q, FALSE };
      q->seg_epoch = s->seg_epoch;
      g_array_append_val (s->seg_undo, u);
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
  q->seg_epoch = s->seg_epoch;
  g_hash_table_insert (s->queues, q->name, q);
  g_array_append_val (s->seg_undo, u);
  return q;
}

static void
seg_rollback (McqStore *s)
{
  /* Newest first, so a queue created and then changed ends up removed. */
  for (guint i = s->seg_undo->len; i-- > 0;)
    {
      Undo *u = &g_array_index (s->seg_undo, Undo, i);
      if (u->created)
        g_hash_table_remove (s->queues, u->q->name);
      else
        {
          char *name = u->q->name;
          *u->q = u->saved;
          u->q->name = name;
        }
    }
  g_array_set_size (s->seg_undo, 0);
  s->next_id = s->seg_next_id;
  s->depth = s->seg_depth;
}

/* The segment's cursor must be closed before its transaction ends. */
static int
seg_close_cursor (McqStore *s)
{
  int ret = 0;

  if (s->seg_cursor != NULL)
    ret = s->seg_cursor->close (s->seg_cursor);
  s->seg_cursor = NULL;
  return ret;
}

static void
seg_abort (McqStore *s)
{
  seg_close_cursor (s);
  s->seg_txn->abort (s->seg_txn);
  s->seg_txn = NULL;
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
      return db_fail (ret, error, "closing a cursor");
    }
  for (guint i = 0; i < s->seg_undo->len; i++)
    {
      Queue *q = g_array_index (s->seg_undo, Undo, i).q;
      if (!write_queue (s, s->seg_txn, q, error))
        {
          seg_abort (s);
          return FALSE;
        }
    }
  ret = s->seg_txn->commit (s->seg_txn, flags);
  s->seg_txn = NULL;
  if (ret != 0)
    {
      seg_rollback (s);
      return db_fail (ret, error, "commit");
    }
  for (guint i = 0; i < s->seg_undo->len; i++)
    mark_dirty (s, g_array_index (s->seg_undo, Undo, i).q->name);
  g_array_set_size (s->seg_undo, 0);
  add_log_debt (s, s->seg_bytes);
  mcq_quarantine_count_add (s->quarantine, s->seg_damaged);
  s->space.db_free = s->seg_db_free >= 0 || s->space.db_free > (guint64) -s->seg_db_free
                     ? s->space.db_free + s->seg_db_free : 0;
  return TRUE;
}

/* Whether the log written since the last checkpoint has reached kb KiB. */
static gboolean
log_debt_past (McqStore *s, guint64 kb)
{
  return __atomic_load_n (&s->log_debt, __ATOMIC_RELAXED) >= kb * 1024;
}

static gboolean
log_debt_due (McqStore *s)
{
  return log_debt_past (s, CHECKPOINT_LOG_KB);
}

/* Counts log written since the last checkpoint.  Crossing the checkpoint
 * threshold wakes the maintenance thread at once instead of at its next
 * one-second tick: a -N fill writes over 100 MiB of log a second, and a
 * restart after a crash replays all of it. */
static void
add_log_debt (McqStore *s, guint64 bytes)
{
  gboolean was_due = log_debt_due (s);

  __atomic_add_fetch (&s->log_debt, bytes, __ATOMIC_RELAXED);
  if (!was_due && log_debt_due (s))
    {
      /* A flag, not only a signal: the thread may be between two waits. */
      g_mutex_lock (&s->maint_lock);
      s->ckp_wanted = TRUE;
      g_cond_signal (&s->maint_cond);
      g_mutex_unlock (&s->maint_lock);
    }
}

static gboolean
seg_set (McqStore *s, McqOp *op)
{
  size_t pos = 0;
  const char *name = mcq_op_next_key (op, &pos);
  Queue *q = g_hash_table_lookup (s->queues, name);
  guint8 key[MSG_KEY_SIZE];
  gint64 now = s->seg_now;
  DBT k, v;
  int ret;

  q = q != NULL ? seg_touch (s, q) : seg_create (s, name);

  /* mcq_op_set_body left MSG_HEADER_SIZE bytes of room in front of the
   * body for the flags, time and checksum, so the record is written
   * without another copy. */
  encode_msg_key (q->id, q->tail, key);
  mcq_rec_seal (op->body->data, op->body->len, key, op->flags, now);
  dbt_init (&k, key, sizeof key);
  dbt_init (&v, op->body->data, op->body->len);
  if ((ret = s->messages_db->put (s->messages_db, s->seg_txn, &k, &v, 0)) != 0)
    return db_fail (ret, &op->error, "storing the message");

  if (q->head == q->tail)
    q->head_time = now;
  q->tail++;
  q->enqueued++;
  q->bytes += op->body->len - MSG_HEADER_SIZE;
  s->depth++;
  s->seg_bytes += op->body->len + LOG_OP_OVERHEAD;
  s->seg_log += mcq_space_log_bytes (&s->space.geom, op->body->len);
  s->seg_db_free -= mcq_space_db_bytes (&s->space.geom, op->body->len);
  return TRUE;
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
      ret = s->seg_cursor->get (s->seg_cursor, k, &v, how);
      if ((ret == 0 || ret == DB_BUFFER_SMALL) && !asked && op->room != NULL)
        {
          gsize most = v.size > MCQ_REC_LEGACY_HEADER ? v.size - MCQ_REC_LEGACY_HEADER : 0;
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

  if ((ret = mcq_quarantine_put (s->quarantine, s->seg_txn, q->name, q->id, q->head,
                                 rec, len, why)) != 0)
    return ret;
  s->seg_bytes += 2 * len + LOG_OP_OVERHEAD;
  s->seg_log += 2 * mcq_space_log_bytes (&s->space.geom, len);   /* the copy and the removal */
  q->bytes -= MIN (q->bytes, len);
  return s->seg_cursor->del (s->seg_cursor, 0);
}

/* Moves the head of q past the messages up to (not including) end, for
 * which no sound record is left, and reports them.  They count as
 * dequeued, so enqueued - dequeued stays the queue's depth. */
static int
pass_over (McqStore *s, Queue *q, guint64 end, const char *why)
{
  int ret;

  if (why == mcq_why_missing || why == mcq_why_page_missing)
    if ((ret = mcq_quarantine_put (s->quarantine, s->seg_txn, q->name, q->id, q->head,
                                   NULL, 0, why)) != 0)
      return ret;
  mcq_quarantine_report (s->quarantine, q->name, q->head, end - 1, why);
  s->seg_damaged += end - q->head;
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

      encode_msg_key (q->id, q->head, key);
      dbt_init (&k, key, sizeof key);
      ret = read_into (s, &k, op, start, DB_SET, &granted, declined);
      if (ret == DB_NOTFOUND &&
          (ret = mcq_quarantine_seek (s->seg_cursor, q->id, q->head, &next)) == 0)
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
              granted -= MIN (granted, view->body_len);
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

  if (s->seg_cursor == NULL &&
      (ret = s->messages_db->cursor (s->messages_db, s->seg_txn, &s->seg_cursor, 0)) != 0)
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
  if ((ret = s->seg_cursor->del (s->seg_cursor, 0)) != 0)
    return ret;
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
  encode_msg_key (q->id, q->head, key);
  /* Stepping off the deleted record is what removes it from its page (and
   * frees its overflow pages): a failure here, e.g. no space to log that,
   * must fail the transaction, or it commits a half-removed record that
   * makes every later message of the page unreadable. */
  ret = s->seg_cursor->get (s->seg_cursor, &k, &v, DB_NEXT);
  if (ret == 0 && k.size == MSG_KEY_SIZE && memcmp (next_key, key, MSG_KEY_SIZE) == 0 &&
      v.size >= MCQ_REC_TIME_END)
    q->head_time = mcq_rec_time (header, v.size);
  else if (ret == 0 || ret == DB_NOTFOUND || ret == DB_BUFFER_SMALL)
    q->head_time = read_enqueue_time (s, s->seg_txn, q->id, q->head);
  else
    return ret;
  return 0;
}

/* Whether a get segment may take one more message: always its first;
 * short of space, another only if the log it has written plus one of the
 * largest message still fits in the room past the reserve. */
static gboolean
space_allows_another (McqStore *s)
{
  return s->seg_log == 0 || !space_tight (s) ||
         mcq_space_fits_log (&s->space, s->seg_log + space_step (s));
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
        return db_fail (ret, &op->error, ret == DB_NOTFOUND ? "a message is missing from its queue"
                                                            : "reading a message");
      if (declined)
        continue;
      m->data = op->values->data;   /* placeholder: set below, once values stops growing */
      q->dequeued++;
      q->bytes -= MIN (q->bytes, m->len);
      s->depth--;
      s->seg_bytes += m->len + LOG_OP_OVERHEAD;   /* the removal logs the record */
      s->seg_log += mcq_space_log_bytes (&s->space.geom, m->len + MSG_HEADER_SIZE);
      s->seg_db_free += mcq_space_db_freed (&s->space.geom, m->len + MSG_HEADER_SIZE) +
                        mcq_space_leaf_pages_freed (&s->space.geom, m->len + MSG_HEADER_SIZE,
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
          op->room (op, -(gssize) m->len);
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
static gboolean
run_segment (McqStore *s, McqOp **ops, guint n, u_int32_t flags)
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
    run_segment (s, &ops[i], 1, DB_TXN_NOSYNC);
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
      db_fail (ret, &op->error, "deleting the queue record");
      goto abort;
    }
  if (q->head != q->tail)
    {
      put_be32 (id, q->id);
      put_be64 (range, q->head);
      put_be64 (range + 8, q->tail);
      dbt_init (&k, id, sizeof id);
      dbt_init (&v, range, sizeof range);
      if ((ret = s->purge_db->put (s->purge_db, txn, &k, &v, 0)) != 0)
        {
          db_fail (ret, &op->error, "scheduling the queue's messages for removal");
          goto abort;
        }
    }
  if (!commit (txn, &op->error))
    goto fail;
  if (q->head != q->tail)
    s->purge_pending = TRUE;
  s->depth -= q->tail - q->head;
  mark_dirty (s, name);
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

static gboolean archive (McqStore *s, GError **error);

static gboolean
checkpoint (McqStore *s, GError **error)
{
  int ret = s->env->txn_checkpoint (s->env, 0, 0, 0);
  if (ret != 0)
    return db_fail (ret, error, "checkpoint");
  mcq_store_mark_log (s->mark, s->env);
  return TRUE;
}

/* Checkpoints (and, with remove_logs, deletes the log files recovery no
 * longer needs), then forgets the log debt the checkpoint covered. */
static gboolean
settle (McqStore *s, gboolean remove_logs, GError **error)
{
  gboolean ok;

  g_mutex_lock (&s->ckp_lock);
  guint64 debt = __atomic_load_n (&s->log_debt, __ATOMIC_RELAXED);
  ok = remove_logs ? archive (s, error) : checkpoint (s, error);
  if (ok)
    __atomic_sub_fetch (&s->log_debt, debt, __ATOMIC_RELAXED);
  g_atomic_int_set (&s->ckp_failing, !ok);
  g_mutex_unlock (&s->ckp_lock);
  g_mutex_lock (&s->debt_lock);
  s->ckp_gen++;
  g_cond_broadcast (&s->debt_cond);
  g_mutex_unlock (&s->debt_lock);
  return ok;
}

static guint64 log_end (McqStore *s);

/* Short of space: a checkpoint with log removal once at least min_debt
 * bytes of log have been committed since the last one.  A failure is only
 * logged: the requests go on, on what space is left.  Main thread. */
static void
settle_if_owed (McqStore *s, guint64 min_debt)
{
  g_autoptr(GError) err = NULL;

  if (__atomic_load_n (&s->log_debt, __ATOMIC_RELAXED) < min_debt)
    return;
  if (!settle (s, TRUE, &err))
    g_debug ("checkpoint under space pressure: %s", err->message);
  else
    s->settled_log_file = (guint32) (log_end (s) / s->log_file_bytes);
}

/* Short of space, after each transaction: settles once the log has
 * moved to a new file (the reserve holds one more) or written a step. */
static void
settle_if_pressed (McqStore *s)
{
  if (!space_tight (s))
    return;
  if ((guint32) (log_end (s) / s->log_file_bytes) != s->settled_log_file)
    settle_if_owed (s, 1);
  else
    settle_if_owed (s, space_step (s));
}

/* Where the log ends (bytes since the first log file), including what is
 * still in the log buffer; 0 if unknown. */
static guint64
log_end (McqStore *s)
{
  DB_LOG_STAT *st = NULL;
  guint64 end = 0;

  if (s->env->log_stat (s->env, &st, 0) == 0)
    {
      end = (guint64) st->st_cur_file * s->log_file_bytes + st->st_cur_offset;
      free (st);
    }
  return end;
}

/* Before a batch that writes: waits while the log since the last
 * checkpoint is past LOG_DEBT_MAX_KB, unless checkpoints are failing (a
 * full disk: the gets that free it must not wait).  A checkpoint that
 * takes longer than LOG_DEBT_WAIT_S is waited for once: the batches after
 * that go ahead until it (or a later one) has settled.  This stops the
 * main loop (no reads, replies or D-Bus calls meanwhile): only writers
 * that outrun the disk get here, and they are being slowed down. */
static void
wait_for_checkpoint (McqStore *s)
{
  gint64 deadline;

  /* The common case, once per batch: far from the limit, take no lock. */
  if (!log_debt_past (s, LOG_DEBT_MAX_KB))
    return;
  deadline = g_get_monotonic_time () + LOG_DEBT_WAIT_S * G_USEC_PER_SEC;
  g_mutex_lock (&s->debt_lock);
  while (log_debt_past (s, LOG_DEBT_MAX_KB) && !g_atomic_int_get (&s->ckp_failing) &&
         s->ckp_gave_up != s->ckp_gen)
    if (!g_cond_wait_until (&s->debt_cond, &s->debt_lock, deadline))
      s->ckp_gave_up = s->ckp_gen;
  g_mutex_unlock (&s->debt_lock);
}

static gboolean
archive (McqStore *s, GError **error)
{
  char **unused = NULL;
  int ret;

  if (!checkpoint (s, error))
    return FALSE;
  /* DB_ARCH_REMOVE deletes the log files no longer needed for recovery. */
  ret = s->env->log_archive (s->env, &unused, DB_ARCH_REMOVE);
  free (unused);
  if (ret != 0)
    return db_fail (ret, error, "log archive");
  return TRUE;
}

/* Removes up to PURGE_CHUNK messages of one deleted queue, and no more
 * than PURGE_LOG_BYTES of log (each removal logs the whole message, and
 * 512 messages of 1 MB made one 512 MB transaction); short of room for
 * that, only while the room left holds another message of the largest
 * size.  At least one. */
#define PURGE_LOG_BYTES (4 * 1024 * 1024)
static void
purge_step (McqStore *s)
{
  DBC *cur = NULL;
  DB_TXN *txn = NULL;
  DBT k, v;
  guint8 idbuf[4], range[16], key[MSG_KEY_SIZE];
  guint64 head, tail, n, start = log_end (s), worst;
  gboolean tight;
  int ret;

  space_look (s, FALSE);
  worst = mcq_space_worst (&s->space, PURGE_LOG_BYTES, 0, 1, 0);
  tight = g_atomic_int_get (&s->space_pressure) || s->space.room - (gint64) s->space.spent < (gint64) worst;
  if (tight)
    space_look (s, TRUE);
  s->space_careful = tight;   /* settle_if_pressed settles after it */

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
  head = get_be64 (range);
  tail = get_be64 (range + 8);
  for (n = 0; head < tail && n < PURGE_CHUNK; n++, head++)
    {
      DBT mk;
      if (n > 0 && start != 0 &&
          (tight ? !mcq_space_fits_log (&s->space, log_end (s) - start + space_step (s))
                 : log_end (s) - start >= PURGE_LOG_BYTES))
        break;
      encode_msg_key (get_be32 (idbuf), head, key);
      dbt_init (&mk, key, sizeof key);
      ret = s->messages_db->del (s->messages_db, txn, &mk, 0);
      if (ret != 0 && ret != DB_NOTFOUND)
        goto abort_cursor;
    }
  if (head < tail)
    {
      put_be64 (range, head);
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
    add_log_debt (s, log_end (s) - start);
  s->space.spent += worst;
  return;

abort_cursor:
  cur->close (cur);
abort:
  g_warning ("purging a deleted queue: %s", db_strerror (ret));
  txn->abort (txn);
  s->purge_pending = FALSE;   /* retried at the next start */
}

static void
run_op (McqStore *s, McqOp *op)
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
      if (!settle (s, FALSE, &op->error))
        op->status = MCQ_OP_FAILED;
      break;
    case MCQ_OP_ARCHIVE:
      if (!settle (s, TRUE, &op->error))
        op->status = MCQ_OP_FAILED;
      break;
    default:
      g_assert_not_reached ();
    }
}


/* Runs a finished batch's callbacks on the main context. */
static void
complete_batch (Completion *c)
{
  McqOp *op = c->first;

  while (op != NULL)
    {
      McqOp *next = op->next;
      op->next = NULL;
      g_atomic_int_dec_and_test (&c->store->pending);
      op->done (op);
      op = next;
    }
  if (c->changed && c->store->watch != NULL)
    c->store->watch (c->store->watch_data);
  g_free (c);
}

/* Finished batches reach the main context through one long-lived source:
 * the store and sync threads push them on a lock-free stack and wake the
 * context only when the stack was empty, since the main thread takes the
 * whole stack at once.  (g_main_context_invoke cost a source allocation,
 * an attach under the context lock and a wake-up for every batch.) */
static void
deliver (McqStore *s, Completion *c, gboolean wake)
{
  Completion *old = __atomic_load_n (&s->done, __ATOMIC_RELAXED);

  do
    c->next = old;
  while (!__atomic_compare_exchange_n (&s->done, &old, c, TRUE, __ATOMIC_RELEASE,
                                       __ATOMIC_RELAXED));
  if (old == NULL && wake)
    g_main_context_wakeup (NULL);
}

static gboolean
deliverer_ready (GSource *source)
{
  McqStore *s = *(McqStore **) (source + 1);
  return __atomic_load_n (&s->done, __ATOMIC_ACQUIRE) != NULL;
}

static gboolean
deliverer_prepare (GSource *source, gint *timeout)
{
  *timeout = -1;
  return deliverer_ready (source);
}

static gboolean
deliverer_dispatch (GSource *source, GSourceFunc cb, gpointer data)
{
  McqStore *s = *(McqStore **) (source + 1);
  Completion *c = __atomic_exchange_n (&s->done, NULL, __ATOMIC_ACQUIRE), *fifo = NULL;

  /* Oldest first. */
  while (c != NULL)
    {
      Completion *next = c->next;
      c->next = fifo;
      fifo = c;
      c = next;
    }
  while (fifo != NULL)
    {
      Completion *next = fifo->next;
      complete_batch (fifo);
      fifo = next;
    }
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs deliverer_funcs = {
  .prepare = deliverer_prepare,
  .check = deliverer_ready,
  .dispatch = deliverer_dispatch,
};

static gboolean
op_commits (const McqOp *op)
{
  return op->type == MCQ_OP_SET || op->type == MCQ_OP_GET || op->type == MCQ_OP_DELETE;
}

/* Ops whose reply may leave once their commit is written (not yet synced). */
static gboolean
op_released_early (const McqStore *s, const McqOp *op)
{
  return s->cfg.no_sync || op->type == MCQ_OP_GET || op->type == MCQ_OP_STATS_QUEUE;
}

/* Fails every op of the list (with keep_gets, every one but the gets). */
static void
fail_all (McqOp *first, gboolean keep_gets, int ret, const char *what)
{
  for (McqOp *o = first; o != NULL; o = o->next)
    if (o->status != MCQ_OP_FAILED && !(keep_gets && o->type == MCQ_OP_GET))
      {
        o->status = MCQ_OP_FAILED;
        db_fail (ret, &o->error, what);
      }
}

static Completion *
completion_new (McqStore *s, McqOp *first, gboolean changed)
{
  Completion *c = g_new (Completion, 1);

  c->store = s;
  c->first = first;
  c->changed = changed;
  return c;
}

static void
post (McqStore *s, McqOp *first, gboolean changed, gboolean wake)
{
  if (first != NULL || changed)
    deliver (s, completion_new (s, first, changed), wake);
}

static gboolean
op_in_segment (const McqOp *op)
{
  return (op->type == MCQ_OP_SET || op->type == MCQ_OP_GET) && op->status != MCQ_OP_FAILED;
}

/* Looks at the free space again (see mcq_space_look) and publishes the
 * pressure. */
static void
space_look (McqStore *s, gboolean force)
{
  guint gen = __atomic_load_n (&s->ckp_gen, __ATOMIC_RELAXED);

  g_atomic_int_set (&s->space_pressure,
                    mcq_space_look (&s->space, force, gen, s->env, s->messages_db));
}

/* At start: the space model and a first look; short of space, the log
 * files recovery no longer needs are removed before anything else is
 * written. */
static void
space_open (McqStore *s)
{
  g_autoptr(GError) err = NULL;
  McqSpaceGeometry g = {
    s->page_size, s->log_file_bytes, !s->cfg.no_sync,
    (s->cfg.max_body != 0 ? s->cfg.max_body : 1024 * 1024) + MSG_HEADER_SIZE,
  };

  mcq_space_init (&s->space, &g, s->cfg.home);
  space_look (s, TRUE);
  if (!g_atomic_int_get (&s->space_pressure))
    return;
  if (!archive (s, &err))
    g_warning ("removing old log files on a full disk: %s", err->message);
  s->settled_log_file = (guint32) (log_end (s) / s->log_file_bytes);
  space_look (s, TRUE);
}

/* Before a batch that writes: if its worst case does not fit in the
 * room, it runs carefully: one op per transaction, each set admitted on
 * a fresh look (space_admit), the log settled between them, starting
 * with what is owed. */
static void
space_plan (McqStore *s, McqOp **batch, guint n)
{
  guint64 set_log = 0, set_db = 0, keys = 0;
  guint others = 0;

  for (guint i = 0; i < n; i++)
    if (batch[i]->type == MCQ_OP_SET)
      {
        set_log += mcq_space_log_bytes (&s->space.geom, batch[i]->body->len);
        set_db += mcq_space_db_bytes (&s->space.geom, batch[i]->body->len);
      }
    else if (batch[i]->type == MCQ_OP_GET)
      keys += batch[i]->nkeys;
    else
      others++;
  guint64 worst = mcq_space_worst (&s->space, set_log, set_db, keys, others);

  space_look (s, FALSE);
  s->space_careful = s->space.room - (gint64) s->space.spent < (gint64) worst;
  if (!s->space_careful)
    s->space.spent += worst;
  else if (g_atomic_int_get (&s->space_pressure) ||
           (guint32) (log_end (s) / s->log_file_bytes) != s->settled_log_file)
    settle_if_owed (s, 1);
}

/* Careful batches: a set runs only if it fits (mcq_space_fits) on a
 * fresh look, else it fails with G_IO_ERROR_NO_SPACE: what is left is
 * kept for the gets that drain the disk, and for recovery. */
static void
space_admit (McqStore *s, McqOp *op)
{
  guint64 cost;

  space_look (s, TRUE);
  if (op->type != MCQ_OP_SET ||
      mcq_space_fits (&s->space, s->space.look.log_offset, op->body->len, &cost))
    return;
  g_atomic_int_set (&s->space_pressure, 1);
  op->status = MCQ_OP_FAILED;
  g_clear_error (&op->error);
  mcq_space_refuse (&s->space, op->body->len - MSG_HEADER_SIZE, cost, &op->error);
}

/* Berkeley DB keeps the pages of consumed messages on messages.db's free
 * list rather than giving them back to the file system.  Once a disk has
 * filled up with messages that were then consumed, the file still takes
 * that room, and sets stayed refused for good (24 MiB tmpfs, 1,357 10 KB
 * messages stored and taken back: 6,140 KiB free against the 6,144 kept,
 * through checkpoints and restarts).  So while sets are refused and the
 * file is over twice what its queues hold, it is compacted (DB_FREE_SPACE:
 * records move to lower pages and the free end of the file goes back to
 * the file system), at most every COMPACT_EVERY_S (looking once a
 * second whether it should).  That also undoes the
 * page reserve (reserve_pages) until the next start, costing speed only.
 * Moving a record logs it again: the compaction runs only if that log
 * (counted as twice the queues' bytes) fits in the room past the reserve,
 * or is no more than one drain step, which the reserve holds; the log
 * is settled right after. */
#define COMPACT_EVERY_S 10
static void
compact_if_mostly_free (McqStore *s)
{
  g_autofree char *path = g_build_filename (s->cfg.home, "messages.db", NULL);
  gint64 now = g_get_monotonic_time ();
  /* What the queues hold: bodies, plus key, header and the btree's own
   * few bytes for each message. */
  guint64 held = s->depth * (MSG_KEY_SIZE + MSG_HEADER_SIZE + 16) + s->page_size;
  guint64 start, log;
  GHashTableIter iter;
  gpointer value;
  GStatBuf st;
  DB_COMPACT c = { 0 };
  int ret;

  /* A deleted queue's messages are still records: purged first. */
  if (s->purge_pending ||
      (s->compacted_at != 0 && now - s->compacted_at < COMPACT_EVERY_S * G_USEC_PER_SEC) ||
      (s->compact_checked_at != 0 && now - s->compact_checked_at < G_USEC_PER_SEC))
    return;
  s->compact_checked_at = now;
  g_hash_table_iter_init (&iter, s->queues);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    held += ((Queue *) value)->bytes;
  if (g_stat (path, &st) != 0 || (guint64) st.st_size <= 2 * (PAGE_RESERVE_BYTES + held))
    return;
  space_look (s, TRUE);
  log = mcq_space_log_bytes (&s->space.geom, 2 * held);
  if (log > space_step (s) && !mcq_space_fits_log (&s->space, log))
    return;
  s->compacted_at = now;
  start = log_end (s);
  ret = s->messages_db->compact (s->messages_db, NULL, NULL, NULL, &c, DB_FREE_SPACE, NULL);
  if (ret != 0)
    g_warning ("compacting messages.db to free disk space: %s", db_strerror (ret));
  else
    g_info ("compacted messages.db to free disk space: %u pages given back",
            (guint) c.compact_pages_truncated);
  /* The free pages left, if any, are no longer known. */
  s->space.db_free = 0;
  if (start != 0 && log_end (s) > start)
    add_log_debt (s, log_end (s) - start);
  settle_if_owed (s, 1);
  space_look (s, TRUE);
}

/* Runs one batch (at most BATCH_MAX ops) and passes its ops on: to the
 * main context once their commits are written, or to the sync thread. */
static void
run_batch (McqStore *s, McqOp **batch, guint n)
{
  McqOp *op, *early = NULL, *late = NULL, **early_tail = &early, **late_tail = &late;
  gboolean unwritten = FALSE, need_sync = FALSE;
  guint last_commit = 0, i;

  for (i = 0; i < n; i++)
    {
      if (op_commits (batch[i]))
        last_commit = i + 1;
      need_sync |= !s->cfg.no_sync && op_commits (batch[i]) && batch[i]->type != MCQ_OP_GET;
    }

  if (last_commit > 0)
    wait_for_checkpoint (s);

  /* Short of space, a batch that writes runs carefully, starting with a
   * checkpoint and log removal: that is what turns consumed messages
   * back into free space, and it keeps the gets that drain a full disk
   * from filling it with their own log records. */
  s->space_careful = FALSE;
  if (last_commit > 0)
    space_plan (s, batch, n);
  if (g_atomic_int_get (&s->space_pressure))
    compact_if_mostly_free (s);

  /* Runs of sets and gets become segments (one transaction each); the
   * last commit of the batch writes the log to the kernel, so every
   * reply below is released only after its commit has left the
   * process. */
  for (i = 0; i < n;)
    {
      if (s->space_careful && op_in_segment (batch[i]))
        space_admit (s, batch[i]);
      if (op_in_segment (batch[i]))
        {
          guint j = i;
          /* Short of space, one op per transaction, so that the log
           * can be settled between them. */
          while (j < n && op_in_segment (batch[j]) && (j == i || !space_tight (s)))
            j++;
          u_int32_t flags = j == last_commit ? DB_TXN_WRITE_NOSYNC : DB_TXN_NOSYNC;
          if (!run_segment (s, batch + i, j - i, flags))
            unwritten = TRUE;
          else
            unwritten = flags != DB_TXN_WRITE_NOSYNC;
          i = j;
          settle_if_pressed (s);
        }
      else
        {
          if (batch[i]->status != MCQ_OP_FAILED)   /* else refused above */
            run_op (s, batch[i]);
          /* A delete that committed wrote the whole log buffer; one
           * of a queue that does not exist committed nothing, so
           * what earlier segments left unwritten stays so. */
          if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_OK)
            unwritten = FALSE;
          else if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_FAILED)
            unwritten = TRUE;
          i++;
          settle_if_pressed (s);
        }
    }

  for (i = 0; i < n; i++)
    {
      op = batch[i];
      op->next = NULL;
      if (op_released_early (s, op))
        {
          *early_tail = op;
          early_tail = &op->next;
        }
      else
        {
          *late_tail = op;
          late_tail = &op->next;
        }
    }

  /* Normally the batch's last commit has written everything and the
   * gets can be answered now, before the sync.  If that commit failed,
   * earlier ones may still sit in the log buffer: flush first. */
  gboolean changed = publish (s);
  if (unwritten)
    {
      int ret = s->env->log_flush (s->env, NULL);
      if (ret != 0)
        {
          /* The commits stand (they are in the log buffer; the next flush
           * that succeeds writes them), so the gets keep their messages:
           * answering them with an error would lose the messages they
           * took, while answering them risks only a message coming back
           * if the daemon dies before the log is written (at least once).
           * Sets and deletes get the error, since their reply would claim
           * a write that did not happen; a set retried by its client may
           * then be stored twice. */
          g_warning ("flushing the log: %s", db_strerror (ret));
          fail_all (late, FALSE, ret, "flushing the log");
          fail_all (early, TRUE, ret, "writing the log");
        }
    }
  post (s, early, FALSE, FALSE);
  /* The sync thread fsyncs and releases these while this thread
   * already runs the next batch. */
  if (need_sync && !unwritten)
    g_async_queue_push (s->sync_inbox, completion_new (s, late, changed));
  else
    post (s, late, changed, FALSE);
}

/* Group commit, pipelined: every batch that needs durability is queued
 * here once written; one log_flush (fsync) covers all the batches waiting,
 * and only then are their replies released.  Meanwhile the main thread
 * goes on running transactions, so the disk's sync latency is not
 * serialised with the work of the next batch.
 *
 * Measured and left out: a plain fdatasync of the current log file here
 * instead of log_flush (so this thread takes no Berkeley DB mutex) gave
 * +3-5% ops/s, within noise, but Berkeley DB, not knowing the log was
 * synced, then fsynced it itself 2-3 times as often on the main thread;
 * raising this thread's priority (nice -10) changed nothing.
 *
 * Where the time of a durable set goes (50 connections, set+get, 124k
 * ops/s, timestamps per op and batch): 39 us from its submission to the
 * hand-over, 105 us until this thread starts its flush (mostly the flush
 * before still running), 245 us in log_flush, 56 us until the main thread
 * runs its completion; the client saw 590 us for a set and 212 us for a
 * get.  (At 110k, in an earlier build: 72, 171 and 49 us from the
 * hand-over on.)  At 50 connections durable mode is bound by that
 * latency, not by CPU: with 100 connections it made 138k ops/s.  Also measured and
 * left out: waking this thread for every set read while it is idle
 * (more, smaller fsyncs: 21.5k instead of 18.5k in 5 s, no more ops/s);
 * releasing finished batches between two connections' reads instead of
 * once per loop iteration (+1.7%, noise); spinning here for up to 150 us
 * before sleeping on the queue (113k -> 91-101k: the other CPU runs the
 * clients); holding batches back while a flush runs, to make them bigger
 * (8.6 -> 8.1 us CPU per op, but gets wait too: 113k -> 91-96k);
 * checkpointing every 64 MiB of log instead of CHECKPOINT_LOG_KB, so that
 * fewer database fsyncs share the disk with these (3 alternating runs:
 * 129.1k, 124.8k, 129.7k against 129.4k, 123.8k, 127.8k: nothing).
 * Starting writeback at the batch's write (sync_file_range) takes ~55 us
 * off a 9 KB write's time to durable when the fsync comes 70 us later
 * (standalone test: 216 -> 160 us).  In the daemon, 2 alternating runs
 * each: called by the main thread after each hand-over, fdatasync fell
 * from 234-248 to 182-195 us, but CPU per op rose 7.2-7.7 -> 8.1-8.5 us and
 * gets waited longer (208-214 -> 243-275 us): 122-127k -> 110-118k ops/s;
 * called by a thread of its own, woken per hand-over: 106-111k against
 * 121-125k (fdatasync no faster, the clients short of CPU).  Left out.
 * Waiting a fixed time after a batch arrives before flushing, so that
 * more sets share the fsync: 50 us 122k, 100 us 106k, 150 us 101k, 200
 * us 93k against 121k without.
 * Two sync threads, the second fdatasyncing the newest log file itself
 * so that a batch need not wait for the flush before it: 114.7k ops/s
 * against 115.5k with one (5 alternating runs; two standalone writers
 * here get 1.4x the syncs, each 40% slower).  Making each log file
 * ahead, zero-filled and synced by a thread of its own, instead of
 * DB_LOG_ZERO filling it on the main thread under the log lock (~0.5 ms
 * per 2 MiB file, ~20 files a second): p99 1.87 -> 1.50 ms but 0.975x
 * the ops/s (8 paired runs, 3 won).  Both left out.
 * This thread sending each set's STORED itself once the flush covers it
 * (the main thread offering the socket when nothing else was owed on it),
 * instead of handing it back: 120.2k against 132.9k ops/s (4 alternating
 * runs each), since the sends (~3 us each, ~18 per flush) delay the next
 * flush.  Log writes opened O_DSYNC (DB_LOG_DSYNC, with or without
 * DB_LOG_DIRECT; every write left to this thread's flush, since a
 * synchronous write on the main thread would stall it): 77-79k against
 * 121-127k, since Berkeley DB holds the log's mutex through the write and
 * the main thread's commits wait on it.  (Standalone, a 4 KiB O_DIRECT|
 * O_DSYNC write is 101-115 us against 125-136 us for write+fdatasync.)
 * Both left out.
 * Pinning the main thread (alone) to one of the 2 CPUs gave +8-10%, but
 * only on the CPU that does not take the disk's interrupts (on the other:
 * nothing); the whole daemon on one CPU fell to 86-90k.  Keeping the main
 * thread off the interrupt CPU cost one connection a third of its
 * throughput, so it is this thread that goes to the interrupt CPU instead
 * (see placement.c).  This thread runs under SCHED_BATCH (see
 * sync_thread_init). */

/* The sync thread wakes up three times per flush (a batch to sync, the
 * write-back done, the cache flush done), and the scheduler, placing it
 * next to the thread that woke it, preempted the main thread for it 5,200
 * times per second at 114k ops/s (durable set+get, 50 connections), each
 * time switching the main thread out and back in.  Under SCHED_BATCH a wake-up
 * does not preempt: it runs when the main thread yields or on the other
 * CPU.  4 alternating 4 s runs each: 107.9k -> 117.6k ops/s, 9.05 -> 8.13
 * us CPU per op; one connection 9.1-9.4k -> 11.6k ops/s, p99 289-371 ->
 * 230 us.  (SCHED_IDLE: 100-107k.  SCHED_FIFO, which wakes it at once:
 * 84-108k against 113-122k, the main thread pinned to the other CPU or
 * not.)  Any thread may choose it, no privilege needed; if refused, the
 * thread runs as before.  In durable mode the thread also binds itself to
 * the CPUs that take the disk's interrupts, where each fsync completes
 * (see placement.c). */
static void
sync_thread_init (McqStore *s)
{
  if (!s->cfg.no_sync && s->cfg.cpu_placement)
    mcq_placement_apply (s->cfg.home);
#ifdef SCHED_BATCH
  struct sched_param param = { 0 };
  if (sched_setscheduler (0, SCHED_BATCH, &param) != 0)
    g_debug ("sync thread: SCHED_BATCH refused: %s", g_strerror (errno));
#endif
}

static gpointer
sync_thread (gpointer data)
{
  McqStore *s = data;
  gboolean stopping = FALSE;

  sync_thread_init (s);

  while (!stopping)
    {
      g_autoptr(GPtrArray) group = g_ptr_array_new ();
      Completion *c = g_async_queue_pop (s->sync_inbox);
      int ret;

      for (; c != NULL; c = g_async_queue_try_pop (s->sync_inbox))
        {
          if (c == &s->sync_stop)
            {
              stopping = TRUE;
              break;
            }
          g_ptr_array_add (group, c);
        }
      if (group->len == 0)
        continue;
      ret = s->env->log_flush (s->env, NULL);
      if (ret != 0)
        g_warning ("flushing the log: %s", db_strerror (ret));
      else
        mcq_store_mark_log (s->mark, s->env);
      for (guint i = 0; i < group->len; i++)
        {
          c = group->pdata[i];
          if (ret != 0)
            fail_all (c->first, FALSE, ret, "flushing the log");
          deliver (s, c, TRUE);
        }
    }
  return NULL;
}

/* Checkpoints and trickle writes run here, never on the main thread, so a
 * long flush of the cache does not hold replies back. */
static gpointer
maint_thread (gpointer data)
{
  McqStore *s = data;
  gint64 now = g_get_monotonic_time ();
  gint64 next_ckp = s->cfg.checkpoint_interval_s ? now + s->cfg.checkpoint_interval_s * G_USEC_PER_SEC : G_MAXINT64;
  gint64 next_trickle = s->cfg.trickle_interval_s ? now + s->cfg.trickle_interval_s * G_USEC_PER_SEC : G_MAXINT64;

  gboolean again = FALSE;

  g_mutex_lock (&s->maint_lock);
  while (!s->maint_stop)
    {
      gint64 deadline = MIN (MIN (next_ckp, next_trickle), now + G_USEC_PER_SEC);
      McqOp *asked;
      gboolean stop;

      if (!again && !s->ckp_wanted && s->maint_ops == NULL && !s->maint_stop)
        g_cond_wait_until (&s->maint_cond, &s->maint_lock, deadline);
      again = FALSE;
      s->ckp_wanted = FALSE;
      asked = s->maint_ops;
      s->maint_ops = NULL;
      s->maint_ops_tail = &s->maint_ops;
      stop = s->maint_stop;
      if (stop && asked == NULL)
        break;
      now = g_get_monotonic_time ();
      g_mutex_unlock (&s->maint_lock);
      if (asked != NULL)
        {
          for (McqOp *op = asked; op != NULL; op = op->chain)
            {
              op->next = op->chain;
              run_op (s, op);
            }
          post (s, asked, FALSE, TRUE);
        }
      if (stop)
        {
          g_mutex_lock (&s->maint_lock);
          break;
        }
      if (now >= next_trickle)
        {
          int wrote = 0;
          s->env->memp_trickle (s->env, (int) s->cfg.trickle_percent, &wrote);
          if (wrote > 0)
            g_debug ("trickle wrote %d pages", wrote);
          next_trickle = now + s->cfg.trickle_interval_s * G_USEC_PER_SEC;
        }
      /* Besides the -C timer, checkpoint whenever CHECKPOINT_LOG_KB of
       * log has accumulated (recovery after a crash replays the log written
       * since the last checkpoint, so this bounds the restart time however
       * fast messages arrive), and at once while sets are refused for
       * space: the checkpoint lets old log files be removed. */
      guint64 debt = __atomic_load_n (&s->log_debt, __ATOMIC_RELAXED);
      gboolean due = now >= next_ckp || log_debt_due (s) ||
                     (g_atomic_int_get (&s->space_pressure) && debt > 0);
      if (due)
        {
          g_autoptr(GError) err = NULL;
          if (!settle (s, FALSE, &err))
            g_warning ("%s", err->message);
          else
            {
              g_debug ("checkpoint done");
              /* The log may have grown past the threshold again while
               * this ran (that wake-up found nobody waiting): go on at
               * once.  Not after a failure, which would spin. */
              again = log_debt_due (s);
            }
          if (now >= next_ckp)
            next_ckp = s->cfg.checkpoint_interval_s ? now + s->cfg.checkpoint_interval_s * G_USEC_PER_SEC
                                                    : G_MAXINT64;
        }
      g_mutex_lock (&s->maint_lock);
    }
  g_mutex_unlock (&s->maint_lock);
  return NULL;
}

void
mcq_store_close (McqStore *s)
{
  g_autoptr(GError) err = NULL;

  if (s == NULL)
    return;
  hand_over (s);
  g_async_queue_push (s->sync_inbox, &s->sync_stop);
  g_thread_join (s->sync);

  g_mutex_lock (&s->maint_lock);
  s->maint_stop = TRUE;
  g_cond_signal (&s->maint_cond);
  g_mutex_unlock (&s->maint_lock);
  g_thread_join (s->maint_thread);

  /* Completions the other threads posted but the loop has not run yet. */
  while (g_atomic_int_get (&s->pending) > 0 && g_main_context_iteration (NULL, FALSE))
    ;
  /* What is left carries no op, only a "queues changed" notice. */
  for (Completion *c = __atomic_exchange_n (&s->done, NULL, __ATOMIC_ACQUIRE), *next; c != NULL; c = next)
    {
      next = c->next;
      if (c->first != NULL)
        complete_batch (c);
      else
        g_free (c);
    }

  if (!s->cfg.no_sync)
    s->env->log_flush (s->env, NULL);
  {
    gboolean clean = checkpoint (s, &err);
    if (!clean)
      g_warning ("%s", err->message);
    mcq_store_mark_close (s->mark, s->env, clean);
  }
  mcq_quarantine_close (s->quarantine);
  s->purge_db->close (s->purge_db, 0);
  s->messages_db->close (s->messages_db, 0);
  s->queues_db->close (s->queues_db, 0);
  s->env->close (s->env, 0);
  g_source_destroy (s->flusher);
  g_source_unref (s->flusher);
  g_source_destroy (s->deliverer);
  g_source_unref (s->deliverer);
  g_async_queue_unref (s->sync_inbox);
  g_hash_table_destroy (s->queues);
  g_hash_table_destroy (s->dirty);
  g_hash_table_destroy (s->published);
  g_array_unref (s->seg_undo);
  g_mutex_clear (&s->pub_lock);
  g_mutex_clear (&s->maint_lock);
  g_mutex_clear (&s->ckp_lock);
  g_mutex_clear (&s->debt_lock);
  g_cond_clear (&s->debt_cond);
  g_cond_clear (&s->maint_cond);
  mcq_space_clear (&s->space);
  g_free (s->cfg.home);
  g_free (s);
}

static gint
compare_info (gconstpointer a, gconstpointer b)
{
  return strcmp ((*(McqQueueInfo *const *) a)->name, (*(McqQueueInfo *const *) b)->name);
}

GPtrArray *
mcq_store_snapshot (McqStore *s)
{
  GPtrArray *out = g_ptr_array_new_with_free_func (queue_info_free);
  GHashTableIter it;
  gpointer v;

  g_mutex_lock (&s->pub_lock);
  g_ptr_array_set_size (out, 0);
  g_hash_table_iter_init (&it, s->published);
  while (g_hash_table_iter_next (&it, NULL, &v))
    {
      McqQueueInfo *copy = g_memdup2 (v, sizeof (McqQueueInfo));
      copy->name = g_strdup (copy->name);
      g_ptr_array_add (out, copy);
    }
  g_mutex_unlock (&s->pub_lock);
  g_ptr_array_sort (out, compare_info);
  return out;
}

gboolean
mcq_store_queue_info (McqStore *s, const char *name, McqQueueInfo *out)
{
  McqQueueInfo *info;

  g_mutex_lock (&s->pub_lock);
  info = g_hash_table_lookup (s->published, name);
  if (info != NULL)
    {
      *out = *info;
      out->name = NULL;
    }
  g_mutex_unlock (&s->pub_lock);
  return info != NULL;
}

void
mcq_store_watch (McqStore *s, McqStoreWatchFunc func, gpointer user_data)
{
  s->watch = func;
  s->watch_data = user_data;
}

gboolean
mcq_store_durable (McqStore *s)
{
  return !s->cfg.no_sync;
}

const char *
mcq_store_home (McqStore *s)
{
  return s->cfg.home;
}
