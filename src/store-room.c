/* store-room.c — the store's use of the free-space model (store-space.h):
 * looks at the disk, refusal of sets when short, the careful batch, the
 * page reserve of messages.db and its compaction. */
#include "store-private.h"

#include <glib/gstdio.h>

/* Free pages kept at the low end of messages.db's free list.  Berkeley DB
 * fsyncs the log on the spot (on the main thread) whenever it gives the
 * file's last page back, which a short queue emptying and refilling its
 * leaves at the end of the file would do all the time.  So each start puts
 * PAGE_RESERVE_BYTES of filler records (one overflow page each, queue id 0)
 * and deletes them highest first: the free list is a stack, and the churn
 * reuses the lowest pages.  The last filler stays as an anchor, so that
 * the others are never the file's last page.  A failure costs only speed
 * (figures: doc/performance.md). */
#define PAGE_RESERVE_BYTES (512 * 1024)

void
room_reserve_pages (McqStore *s)
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
  room_look (s, TRUE);
  if (s->room.space.room < (gint64) (2 * s->log_file_bytes + 8 * n * page_size))
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
      mcq_rec_key (0, i, key);
      dbt_init (&k, key, sizeof key);
      dbt_init (&v, filler, page_size / 2);
      /* The anchor (i == n) is put once, when the file has none yet. */
      ret = s->messages_db->put (s->messages_db, txn, &k, &v, i == n ? DB_NOOVERWRITE : 0);
      if (ret != 0 && !(i == n && ret == DB_KEYEXIST))
        goto fail;
    }
  for (i = n - 1; i >= 1; i--)
    {
      mcq_rec_key (0, i, key);
      dbt_init (&k, key, sizeof key);
      if ((ret = s->messages_db->del (s->messages_db, txn, &k, 0)) != 0)
        goto fail;
    }
  ret = txn->commit (txn, 0);
  txn = NULL;
  if (ret == 0)
    {
      s->room.space.db_free += (n - 1) * page_size;   /* one overflow page each */
      return;
    }
fail:
  if (txn != NULL)
    txn->abort (txn);
  g_warning ("reserving free pages in messages.db: %s", db_strerror (ret));
  mcq_quarantine_note_error (ret);
}

/* Looks at the free space again (see mcq_space_look) and publishes the
 * pressure. */
void
room_look (McqStore *s, gboolean force)
{
  guint gen = __atomic_load_n (&s->ckp.gen, __ATOMIC_RELAXED);

  g_atomic_int_set (&s->room.pressure,
                    mcq_space_look (&s->room.space, force, gen, s->env, s->messages_db));
}

/* At start: the space model and a first look; short of space, the log
 * files recovery no longer needs are removed before anything else is
 * written. */
void
room_open (McqStore *s)
{
  g_autoptr(GError) err = NULL;
  McqSpaceGeometry g = {
    s->page_size, s->log_file_bytes, !s->cfg.no_sync,
    (s->cfg.max_body != 0 ? s->cfg.max_body : 1024 * 1024) + MSG_HEADER_SIZE,
  };

  mcq_space_init (&s->room.space, &g, s->cfg.home);
  room_look (s, TRUE);
  if (!g_atomic_int_get (&s->room.pressure))
    return;
  if (!maint_archive (s, &err))
    g_warning ("removing old log files on a full disk: %s", err->message);
  s->room.settled_log_file = (guint32) (maint_log_end (s) / s->log_file_bytes);
  room_look (s, TRUE);
}

/* Before a batch that writes: if its worst case does not fit in the
 * room, it runs carefully: one op per transaction, each set admitted on
 * a fresh look (room_admit), the log settled between them, starting
 * with what is owed. */
void
room_plan (McqStore *s, McqOp **batch, guint n)
{
  guint64 set_log = 0, set_db = 0, keys = 0;
  guint others = 0;

  for (guint i = 0; i < n; i++)
    if (batch[i]->type == MCQ_OP_SET)
      {
        set_log += mcq_space_log_bytes (&s->room.space.geom, batch[i]->body->len);
        set_db += mcq_space_db_bytes (&s->room.space.geom, batch[i]->body->len);
      }
    else if (batch[i]->type == MCQ_OP_GET)
      keys += batch[i]->nkeys;
    else
      others++;
  guint64 worst = mcq_space_worst (&s->room.space, set_log, set_db, keys, others);

  room_look (s, FALSE);
  s->room.careful = s->room.space.room - (gint64) s->room.space.spent < (gint64) worst;
  if (!s->room.careful)
    s->room.space.spent += worst;
  else if (g_atomic_int_get (&s->room.pressure) ||
           (guint32) (maint_log_end (s) / s->log_file_bytes) != s->room.settled_log_file)
    maint_settle_if_owed (s, 1);
}

/* Careful batches: a set runs only if it fits (mcq_space_fits) on a
 * fresh look, else it fails with G_IO_ERROR_NO_SPACE: what is left is
 * kept for the gets that drain the disk, and for recovery. */
void
room_admit (McqStore *s, McqOp *op)
{
  guint64 cost;

  room_look (s, TRUE);
  if (op->type != MCQ_OP_SET ||
      mcq_space_fits (&s->room.space, s->room.space.look.log_offset, op->body->len, &cost))
    return;
  g_atomic_int_set (&s->room.pressure, 1);
  op->status = MCQ_OP_FAILED;
  g_clear_error (&op->error);
  mcq_space_refuse (&s->room.space, op->body->len - MSG_HEADER_SIZE, cost, &op->error);
}

/* Berkeley DB keeps consumed messages' pages on messages.db's free list,
 * so a disk once filled with messages since consumed could keep sets
 * refused for good.  While sets are refused and the file is over twice
 * what the queues hold, it is compacted (DB_FREE_SPACE gives the free end
 * of the file back), at most every COMPACT_EVERY_S, looking once a second.
 * It undoes the page reserve until the next start (speed only).  Moving a
 * record logs it again: it runs only if that log (counted as twice the
 * queues' bytes) fits past the reserve or is within one drain step, and
 * the log is settled right after. */
#define COMPACT_EVERY_S 10
void
room_compact_if_mostly_free (McqStore *s)
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
      (s->room.compacted_at != 0 && now - s->room.compacted_at < COMPACT_EVERY_S * G_USEC_PER_SEC) ||
      (s->room.compact_checked_at != 0 && now - s->room.compact_checked_at < G_USEC_PER_SEC))
    return;
  s->room.compact_checked_at = now;
  g_hash_table_iter_init (&iter, s->queues);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    held += ((Queue *) value)->bytes;
  if (g_stat (path, &st) != 0 || (guint64) st.st_size <= 2 * (PAGE_RESERVE_BYTES + held))
    return;
  room_look (s, TRUE);
  log = mcq_space_log_bytes (&s->room.space.geom, 2 * held);
  if (log > room_step (s) && !mcq_space_fits_log (&s->room.space, log))
    return;
  s->room.compacted_at = now;
  start = maint_log_end (s);
  ret = s->messages_db->compact (s->messages_db, NULL, NULL, NULL, &c, DB_FREE_SPACE, NULL);
  if (ret != 0)
    g_warning ("compacting messages.db to free disk space: %s", db_strerror (ret));
  else
    g_info ("compacted messages.db to free disk space: %u pages given back",
            (guint) c.compact_pages_truncated);
  /* The free pages left, if any, are no longer known. */
  s->room.space.db_free = 0;
  if (start != 0 && maint_log_end (s) > start)
    maint_add_log_debt (s, maint_log_end (s) - start);
  maint_settle_if_owed (s, 1);
  room_look (s, TRUE);
}
