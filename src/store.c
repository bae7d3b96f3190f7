/* store.c — persistent FIFO queues in one transactional Berkeley DB
 * environment: opening and closing it, the public API (mcq_store_*, mcq_op_*),
 * and the snapshot of the queues that stats and D-Bus read. */
#include "store-private.h"
#include "store-audit.h"

#include <glib/gstdio.h>
#include <errno.h>
#include <stdlib.h>

/* Each log file's size (or four log buffers if -L is larger), so that the
 * disk reserve covers whole new ones. */
#define LOG_FILE_BYTES (2 * 1024 * 1024)

static void
queue_free (gpointer p)
{
  Queue *q = p;
  g_free (q->name);
  g_free (q);
}

/* ---- errors -------------------------------------------------------------- */

gboolean
store_db_fail (int ret, GError **error, const char *what)
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
    return store_db_fail (ret, error, file);
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
    return store_db_fail (ret, error, file);
  if (s->cfg.page_size != 0 && (ret = db->set_pagesize (db, s->cfg.page_size)) != 0)
    {
      db->close (db, 0);
      return store_db_fail (ret, error, "page size");
    }
  /* Not DB_REVSPLITOFF: it keeps emptied pages from ever being given back,
   * so the file grows with every fill-and-drain (figures:
   * doc/performance.md). */
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
      return store_db_fail (ret, error, file);
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
gboolean
store_publish (McqStore *s)
{
  GHashTableIter it;
  gpointer name;
  gboolean changed = g_hash_table_size (s->dirty) > 0;

  if (!changed)
    return FALSE;
  g_mutex_lock (&s->pub.lock);
  g_hash_table_iter_init (&it, s->dirty);
  while (g_hash_table_iter_next (&it, &name, NULL))
    {
      Queue *q = g_hash_table_lookup (s->queues, name);
      McqQueueInfo *info;

      if (q == NULL)
        {
          g_hash_table_remove (s->pub.queues, name);
          continue;
        }
      info = g_hash_table_lookup (s->pub.queues, name);
      if (info == NULL)
        {
          info = g_new0 (McqQueueInfo, 1);
          info->name = g_strdup (name);
          g_hash_table_insert (s->pub.queues, info->name, info);
        }
      fill_info (q, info);
    }
  g_mutex_unlock (&s->pub.lock);
  g_hash_table_remove_all (s->dirty);
  __atomic_store_n (&s->pub.queue_count, (guint64) g_hash_table_size (s->queues), __ATOMIC_RELAXED);
  __atomic_store_n (&s->pub.total_depth, s->depth, __ATOMIC_RELAXED);
  return TRUE;
}

void
store_mark_dirty (McqStore *s, const char *name)
{
  if (!g_hash_table_contains (s->dirty, name))
    g_hash_table_add (s->dirty, g_strdup (name));
}

static gboolean
load_queues (McqStore *s, GError **error)
{
  DBC *cur = NULL;
  DBT k, v;
  int ret;

  if ((ret = s->queues_db->cursor (s->queues_db, NULL, &cur, 0)) != 0)
    return store_db_fail (ret, error, "queues.db");
  dbt_init (&k, NULL, 0);
  dbt_init (&v, NULL, 0);
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      Queue *q;
      if (v.size != MCQ_QREC_SIZE || k.size == 0 || k.size > 250)
        {
          cur->close (cur);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                       "queues.db holds a malformed record (%u bytes)", v.size);
          return FALSE;
        }
      q = g_new0 (Queue, 1);
      McqQueueRec r;
      mcq_qrec_decode (v.data, &r);
      q->id = r.id;
      q->head = r.head;
      q->tail = r.tail;
      q->enqueued = r.enqueued;
      q->dequeued = r.dequeued;
      q->bytes = r.bytes;
      q->name = g_strndup (k.data, k.size);
      s->next_id = MAX (s->next_id, q->id + 1);
      s->depth += q->tail - q->head;
      g_hash_table_insert (s->queues, q->name, q);
      store_mark_dirty (s, q->name);
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return store_db_fail (ret, error, "queues.db");

  if ((ret = s->purge_db->cursor (s->purge_db, NULL, &cur, 0)) != 0)
    return store_db_fail (ret, error, "purge.db");
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      if (k.size == 4)
        s->next_id = MAX (s->next_id, mcq_get_be32 (k.data) + 1);
      s->purge_pending = TRUE;
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return store_db_fail (ret, error, "purge.db");

  GHashTableIter it;
  gpointer v_q;
  g_hash_table_iter_init (&it, s->queues);
  while (g_hash_table_iter_next (&it, NULL, &v_q))
    {
      Queue *q = v_q;
      if (q->head != q->tail)
        q->head_time = txn_read_enqueue_time (s, NULL, q->id, q->head);
    }
  store_publish (s);
  return TRUE;
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
    return store_db_fail (ret, error, "integrity.db");
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
    return store_db_fail (ret, error, "integrity.db");
  return TRUE;
abort:
  txn->abort (txn);
  return FALSE;
}

/* Frees whatever part of s was made: the whole of it after mcq_store_close
 * has stopped the threads, or what a failed open had made.  NULL allowed. */
static void
store_free (McqStore *s)
{
  if (s == NULL)
    return;
  pipeline_free (s);
  mcq_quarantine_close (s->quarantine);
  if (s->purge_db != NULL)
    s->purge_db->close (s->purge_db, 0);
  if (s->messages_db != NULL)
    s->messages_db->close (s->messages_db, 0);
  if (s->queues_db != NULL)
    s->queues_db->close (s->queues_db, 0);
  if (s->env != NULL)
    s->env->close (s->env, 0);
  g_clear_pointer (&s->queues, g_hash_table_destroy);
  g_clear_pointer (&s->dirty, g_hash_table_destroy);
  g_clear_pointer (&s->pub.queues, g_hash_table_destroy);
  g_clear_pointer (&s->seg.undo, g_array_unref);
  g_mutex_clear (&s->pub.lock);
  maint_clear (s);
  mcq_space_clear (&s->room.space);
  g_free (s->cfg.home);
  g_free (s);
}

static McqStore *
store_new (const McqStoreConfig *cfg)
{
  McqStore *s = g_new0 (McqStore, 1);

  s->cfg = *cfg;
  s->cfg.home = g_strdup (cfg->home);
  s->next_id = 1;
  s->owner = g_thread_self ();
  s->queues = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, queue_free);
  s->dirty = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  s->seg.undo = g_array_new (FALSE, FALSE, sizeof (Undo));
  s->pub.queues = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, queue_info_free);
  g_mutex_init (&s->pub.lock);
  maint_init (s);
  return s;
}

/* Sets up the environment before it is opened: cache, log buffer, and
 * log files small enough that the disk reserve covers whole new ones. */
static void
env_configure (McqStore *s)
{
  DB_ENV *env = s->env;
  const McqStoreConfig *cfg = &s->cfg;

  env->set_errcall (env, bdb_errcall);
  env->set_cachesize (env, (u_int32_t) (cfg->cache_bytes >> 30),
                      (u_int32_t) (cfg->cache_bytes & ((1u << 30) - 1)), 1);
  if (cfg->log_buffer_bytes != 0)
    env->set_lg_bsize (env, cfg->log_buffer_bytes);
  /* Commits never sync on their own: durable mode syncs whole batches
   * with log_flush, -N never does. */
  env->set_flags (env, DB_TXN_NOSYNC, 1);
  /* Log files recovery no longer needs go after each checkpoint, so a
   * store's disk use follows its depth and consuming frees a full disk. */
  env->log_set_config (env, DB_LOG_AUTO_REMOVE, 1);
  /* Durable mode zero-fills each new log file, so fdatasync never has a
   * new file size to commit (figures: doc/performance.md); -N never
   * syncs, and would only write every log byte twice. */
  if (!cfg->no_sync)
    env->log_set_config (env, DB_LOG_ZERO, 1);
  s->log_file_bytes = MAX ((guint64) LOG_FILE_BYTES, 4 * (guint64) cfg->log_buffer_bytes);
  g_assert (s->log_file_bytes <= G_MAXUINT32);   /* options cap -L well below */
  env->set_lg_max (env, (u_int32_t) s->log_file_bytes);
}

/* Opens (and recovers) the environment.  DB_PRIVATE: the home lock makes
 * this process its only user.  DB_RECOVER: a kill -9 loses nothing that
 * was flushed.  No DB_INIT_LOCK: only the owner thread runs transactions,
 * one at a time (txn_start asserts it); the other threads only flush,
 * checkpoint, trickle and archive, which take no locks (figures:
 * doc/performance.md).  A second thread running transactions would need
 * the lock subsystem back. */
static gboolean
env_open (McqStore *s, GError **error)
{
  int ret;

  if ((ret = db_env_create (&s->env, 0)) != 0)
    return store_db_fail (ret, error, "creating the Berkeley DB environment");
  env_configure (s);
  ret = s->env->open (s->env, s->cfg.home,
                      DB_CREATE | DB_INIT_LOG | DB_INIT_MPOOL | DB_INIT_TXN |
                      DB_RECOVER | DB_PRIVATE | DB_THREAD, 0600);
  if (ret != 0)
    return store_db_fail (ret, error, "opening the Berkeley DB environment");
  return TRUE;
}

static gboolean
databases_open (McqStore *s, GError **error)
{
  u_int32_t page_size = 4096;

  if (!open_db (s, &s->queues_db, "queues.db", error) ||
      !open_db (s, &s->messages_db, "messages.db", error) ||
      !open_db (s, &s->purge_db, "purge.db", error) ||
      !mcq_store_audit_queues (s->env, s->queues_db, s->messages_db, s->purge_db, error) ||
      !load_queues (s, error) ||
      !open_integrity (s, error))
    return FALSE;
  s->messages_db->get_pagesize (s->messages_db, &page_size);
  s->page_size = page_size;
  return TRUE;
}

McqStore *
mcq_store_open (const McqStoreConfig *cfg, GError **error)
{
  McqStore *s = store_new (cfg);

  if (!mcq_store_check_files (s->cfg.home, error) ||
      !env_open (s, error) ||
      !databases_open (s, error))
    {
      store_free (s);
      return NULL;
    }
  room_open (s);
  room_reserve_pages (s);
  s->mark = mcq_store_mark_open (s->cfg.home, s->env);
  pipeline_open (s);
  maint_open (s);
  return s;
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

void
mcq_store_submit (McqStore *s, McqOp *op)
{
  g_atomic_int_inc (&s->pipeline.pending);
  op->status = MCQ_OP_OK;
  op->chain = NULL;
  *s->pipeline.outbox_tail = op;
  s->pipeline.outbox_tail = &op->chain;
  if (++s->pipeline.outbox_len >= BATCH_MAX)
    pipeline_hand_over (s);
}

guint
mcq_store_pending (McqStore *s)
{
  return (guint) g_atomic_int_get (&s->pipeline.pending);
}

guint64
mcq_store_queue_count (McqStore *s)
{
  return __atomic_load_n (&s->pub.queue_count, __ATOMIC_RELAXED);
}

guint64
mcq_store_total_depth (McqStore *s)
{
  return __atomic_load_n (&s->pub.total_depth, __ATOMIC_RELAXED);
}

guint64
mcq_store_damaged (McqStore *s)
{
  return mcq_quarantine_count (s->quarantine);
}

/* Stops the threads once every op submitted has completed, then flushes,
 * checkpoints and marks the store clean (if the checkpoint succeeded). */
void
mcq_store_close (McqStore *s)
{
  g_autoptr(GError) err = NULL;
  gboolean clean;

  if (s == NULL)
    return;
  pipeline_stop (s);
  maint_close (s);
  pipeline_drain (s);
  if (!s->cfg.no_sync)
    s->env->log_flush (s->env, NULL);
  clean = maint_checkpoint (s, &err);
  if (!clean)
    g_warning ("%s", err->message);
  mcq_store_mark_close (s->mark, s->env, clean);
  s->mark = NULL;
  store_free (s);
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

  g_mutex_lock (&s->pub.lock);
  g_ptr_array_set_size (out, 0);
  g_hash_table_iter_init (&it, s->pub.queues);
  while (g_hash_table_iter_next (&it, NULL, &v))
    {
      McqQueueInfo *copy = g_memdup2 (v, sizeof (McqQueueInfo));
      copy->name = g_strdup (copy->name);
      g_ptr_array_add (out, copy);
    }
  g_mutex_unlock (&s->pub.lock);
  g_ptr_array_sort (out, compare_info);
  return out;
}

gboolean
mcq_store_queue_info (McqStore *s, const char *name, McqQueueInfo *out)
{
  McqQueueInfo *info;

  g_mutex_lock (&s->pub.lock);
  info = g_hash_table_lookup (s->pub.queues, name);
  if (info != NULL)
    {
      *out = *info;
      out->name = NULL;
    }
  g_mutex_unlock (&s->pub.lock);
  return info != NULL;
}

void
mcq_store_watch (McqStore *s, McqStoreWatchFunc func, gpointer user_data)
{
  s->pub.watch = func;
  s->pub.watch_data = user_data;
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
