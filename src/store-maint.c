/* store-maint.c — checkpoints: the log debt that makes one due, the wait
 * that slows writers outrunning it, log removal, and the maintenance thread
 * that runs checkpoints and trickle writes off the main thread. */
#include "store-private.h"

#include <stdlib.h>

/* Past this much log since the last checkpoint, batches that write wait
 * (up to LOG_DEBT_WAIT_S) for the running checkpoint: it bounds the log a
 * restart after a crash replays to under a second (figures:
 * doc/performance.md). */
#define LOG_DEBT_MAX_KB (8 * CHECKPOINT_LOG_KB)
#define LOG_DEBT_WAIT_S 5

/* A checkpoint asked for by a client runs on the maintenance thread (it
 * may take seconds, and touches no queue), after every op submitted
 * before it has run. */
void
maint_submit (McqStore *s, McqOp *op)
{
  op->chain = NULL;
  g_mutex_lock (&s->maint.lock);
  *s->maint.ops_tail = op;
  s->maint.ops_tail = &op->chain;
  g_cond_signal (&s->maint.cond);
  g_mutex_unlock (&s->maint.lock);
}

/* Whether the log written since the last checkpoint has reached kb KiB. */
static gboolean
log_debt_past (McqStore *s, guint64 kb)
{
  return __atomic_load_n (&s->ckp.log_debt, __ATOMIC_RELAXED) >= kb * 1024;
}

static gboolean
log_debt_due (McqStore *s)
{
  return log_debt_past (s, CHECKPOINT_LOG_KB);
}

/* Counts log written since the last checkpoint.  Crossing the checkpoint
 * threshold wakes the maintenance thread at once, not at its next tick:
 * a restart after a crash replays all the log since the last checkpoint. */
void
maint_add_log_debt (McqStore *s, guint64 bytes)
{
  gboolean was_due = log_debt_due (s);

  __atomic_add_fetch (&s->ckp.log_debt, bytes, __ATOMIC_RELAXED);
  if (!was_due && log_debt_due (s))
    {
      /* A flag, not only a signal: the thread may be between two waits. */
      g_mutex_lock (&s->maint.lock);
      s->maint.ckp_wanted = TRUE;
      g_cond_signal (&s->maint.cond);
      g_mutex_unlock (&s->maint.lock);
    }
}

gboolean
maint_checkpoint (McqStore *s, GError **error)
{
  int ret = s->env->txn_checkpoint (s->env, 0, 0, 0);
  if (ret != 0)
    return store_db_fail (ret, error, "checkpoint");
  mcq_store_mark_log (s->mark, s->env);
  return TRUE;
}

/* Checkpoints (and, with remove_logs, deletes the log files recovery no
 * longer needs), then forgets the log debt the checkpoint covered. */
gboolean
maint_settle (McqStore *s, gboolean remove_logs, GError **error)
{
  gboolean ok;

  g_mutex_lock (&s->ckp.lock);
  guint64 debt = __atomic_load_n (&s->ckp.log_debt, __ATOMIC_RELAXED);
  ok = remove_logs ? maint_archive (s, error) : maint_checkpoint (s, error);
  if (ok)
    __atomic_sub_fetch (&s->ckp.log_debt, debt, __ATOMIC_RELAXED);
  g_atomic_int_set (&s->ckp.failing, !ok);
  g_mutex_unlock (&s->ckp.lock);
  g_mutex_lock (&s->ckp.debt_lock);
  s->ckp.gen++;
  g_cond_broadcast (&s->ckp.debt_cond);
  g_mutex_unlock (&s->ckp.debt_lock);
  return ok;
}

/* Short of space: a checkpoint with log removal once at least min_debt
 * bytes of log have been committed since the last one.  A failure is only
 * logged: the requests go on, on what space is left.  Main thread. */
void
maint_settle_if_owed (McqStore *s, guint64 min_debt)
{
  g_autoptr(GError) err = NULL;

  if (__atomic_load_n (&s->ckp.log_debt, __ATOMIC_RELAXED) < min_debt)
    return;
  if (!maint_settle (s, TRUE, &err))
    g_debug ("checkpoint under space pressure: %s", err->message);
  else
    s->room.settled_log_file = (guint32) (maint_log_end (s) / s->log_file_bytes);
}

/* Short of space, after each transaction: settles once the log has
 * moved to a new file (the reserve holds one more) or written a step. */
void
maint_settle_if_pressed (McqStore *s)
{
  if (!room_tight (s))
    return;
  if ((guint32) (maint_log_end (s) / s->log_file_bytes) != s->room.settled_log_file)
    maint_settle_if_owed (s, 1);
  else
    maint_settle_if_owed (s, room_step (s));
}

/* Where the log ends (bytes since the first log file), including what is
 * still in the log buffer; 0 if unknown. */
guint64
maint_log_end (McqStore *s)
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
void
maint_wait_for_checkpoint (McqStore *s)
{
  gint64 deadline;

  /* The common case, once per batch: far from the limit, take no lock. */
  if (!log_debt_past (s, LOG_DEBT_MAX_KB))
    return;
  deadline = g_get_monotonic_time () + LOG_DEBT_WAIT_S * G_USEC_PER_SEC;
  g_mutex_lock (&s->ckp.debt_lock);
  while (log_debt_past (s, LOG_DEBT_MAX_KB) && !g_atomic_int_get (&s->ckp.failing) &&
         s->ckp.gave_up != s->ckp.gen)
    if (!g_cond_wait_until (&s->ckp.debt_cond, &s->ckp.debt_lock, deadline))
      s->ckp.gave_up = s->ckp.gen;
  g_mutex_unlock (&s->ckp.debt_lock);
}

gboolean
maint_archive (McqStore *s, GError **error)
{
  char **unused = NULL;
  int ret;

  if (!maint_checkpoint (s, error))
    return FALSE;
  /* DB_ARCH_REMOVE deletes the log files no longer needed for recovery. */
  ret = s->env->log_archive (s->env, &unused, DB_ARCH_REMOVE);
  free (unused);
  if (ret != 0)
    return store_db_fail (ret, error, "log archive");
  return TRUE;
}

static gint64
next_time (gint64 now, guint interval_s)
{
  return interval_s != 0 ? now + (gint64) interval_s * G_USEC_PER_SEC : G_MAXINT64;
}

/* Runs the checkpoint ops clients asked for and posts their replies. */
static void
run_asked (McqStore *s, McqOp *asked)
{
  for (McqOp *op = asked; op != NULL; op = op->chain)
    {
      op->next = op->chain;
      txn_run_op (s, op);
    }
  pipeline_post (s, asked, FALSE, TRUE);
}

static void
trickle (McqStore *s)
{
  int wrote = 0;

  s->env->memp_trickle (s->env, (int) s->cfg.trickle_percent, &wrote);
  if (wrote > 0)
    g_debug ("trickle wrote %d pages", wrote);
}

/* Checkpoints when the -C timer says so, whenever CHECKPOINT_LOG_KB of log
 * has accumulated (bounding what recovery replays however fast messages
 * arrive), and at once while sets are refused for space (the checkpoint
 * lets old log files go).  Returns whether another is due already. */
static gboolean
checkpoint_if_due (McqStore *s, gint64 now, gint64 *next_ckp)
{
  g_autoptr(GError) err = NULL;
  guint64 debt = __atomic_load_n (&s->ckp.log_debt, __ATOMIC_RELAXED);
  gboolean again = FALSE;

  if (now < *next_ckp && !log_debt_due (s) &&
      !(g_atomic_int_get (&s->room.pressure) && debt > 0))
    return FALSE;
  if (!maint_settle (s, FALSE, &err))
    g_warning ("%s", err->message);
  else
    {
      g_debug ("checkpoint done");
      /* The log may have passed the threshold again meanwhile (that
       * wake-up found nobody waiting).  Not after a failure: it would spin. */
      again = log_debt_due (s);
    }
  if (now >= *next_ckp)
    *next_ckp = next_time (now, s->cfg.checkpoint_interval_s);
  return again;
}

/* Checkpoints and trickle writes run here, never on the main thread, so a
 * long flush of the cache does not hold replies back.  On stop, the ops
 * given to it run first. */
static gpointer
maint_thread (gpointer data)
{
  McqStore *s = data;
  gint64 now = g_get_monotonic_time ();
  gint64 next_ckp = next_time (now, s->cfg.checkpoint_interval_s);
  gint64 next_trickle = next_time (now, s->cfg.trickle_interval_s);
  gboolean again = FALSE, stop = FALSE;

  while (!stop)
    {
      gint64 deadline = MIN (MIN (next_ckp, next_trickle), now + G_USEC_PER_SEC);
      McqOp *asked;

      g_mutex_lock (&s->maint.lock);
      if (!again && !s->maint.ckp_wanted && s->maint.ops == NULL && !s->maint.stop)
        g_cond_wait_until (&s->maint.cond, &s->maint.lock, deadline);
      s->maint.ckp_wanted = FALSE;
      asked = s->maint.ops;
      s->maint.ops = NULL;
      s->maint.ops_tail = &s->maint.ops;
      stop = s->maint.stop;
      g_mutex_unlock (&s->maint.lock);
      again = FALSE;
      now = g_get_monotonic_time ();
      if (asked != NULL)
        run_asked (s, asked);
      if (stop)
        break;
      if (now >= next_trickle)
        {
          trickle (s);
          next_trickle = next_time (now, s->cfg.trickle_interval_s);
        }
      again = checkpoint_if_due (s, now, &next_ckp);
    }
  return NULL;
}

void
maint_init (McqStore *s)
{
  g_mutex_init (&s->maint.lock);
  g_cond_init (&s->maint.cond);
  s->maint.ops_tail = &s->maint.ops;
  g_mutex_init (&s->ckp.lock);
  g_mutex_init (&s->ckp.debt_lock);
  g_cond_init (&s->ckp.debt_cond);
  s->ckp.gave_up = G_MAXUINT;
}

void
maint_clear (McqStore *s)
{
  g_mutex_clear (&s->maint.lock);
  g_cond_clear (&s->maint.cond);
  g_mutex_clear (&s->ckp.lock);
  g_mutex_clear (&s->ckp.debt_lock);
  g_cond_clear (&s->ckp.debt_cond);
}

void
maint_open (McqStore *s)
{
  s->maint.thread = g_thread_new ("mcq-maint", maint_thread, s);
}

void
maint_close (McqStore *s)
{
  g_mutex_lock (&s->maint.lock);
  s->maint.stop = TRUE;
  g_cond_signal (&s->maint.cond);
  g_mutex_unlock (&s->maint.lock);
  g_thread_join (g_steal_pointer (&s->maint.thread));
}
