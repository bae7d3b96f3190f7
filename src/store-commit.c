/* store-commit.c — group commit: ops are run in batches on the main thread,
 * the sync thread fsyncs the log once for every batch waiting, and finished
 * batches come back to the main context to release their replies. */
#include "store-private.h"
#include "placement.h"

#include <errno.h>
#include <sched.h>

/*
 * Durability.  Commits inside a batch are DB_TXN_NOSYNC (they stay in the
 * log buffer); the batch's last commit is DB_TXN_WRITE_NOSYNC, so one
 * write() hands the whole batch to the kernel before any reply leaves: from
 * then on a kill -9 of the daemon loses nothing, in either mode.  In
 * durable mode the batch then goes to the sync thread, where one log_flush
 * fsyncs it and every other batch waiting before their STOREDs are released
 * (group commit), while the main thread runs the next batch.
 *
 * Replies to gets are released after the write, before the fsync: a
 * dequeue lost to a power cut only makes a message come back (at least
 * once), and holding the reply would widen the window in which a crash
 * takes a message whose reply never left.
 */

static void run_batch (McqStore *s, McqOp **batch, guint n);

/* The ops submitted so far run on the main thread itself, in batches of
 * up to BATCH_MAX: as soon as that many are read, and once per loop
 * iteration (from the flusher source's prepare) for the rest.  Only the
 * fsync happens elsewhere (sync_thread), so nothing here waits for a disk
 * (figures: doc/performance.md). */
void
pipeline_hand_over (McqStore *s)
{
  McqOp *batch[BATCH_MAX], *op = s->pipeline.outbox, *next;
  guint n = 0;

  s->pipeline.outbox = NULL;
  s->pipeline.outbox_tail = &s->pipeline.outbox;
  s->pipeline.outbox_len = 0;
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
  pipeline_hand_over (s);
  *timeout = -1;
  if (s->purge_pending)
    {
      txn_purge_step (s);
      maint_settle_if_pressed (s);
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

/* Runs a finished batch's callbacks on the main context. */
static void
complete_batch (Completion *c)
{
  McqOp *op = c->first;

  while (op != NULL)
    {
      McqOp *next = op->next;
      op->next = NULL;
      g_atomic_int_dec_and_test (&c->store->pipeline.pending);
      op->done (op);
      op = next;
    }
  if (c->changed && c->store->pub.watch != NULL)
    c->store->pub.watch (c->store->pub.watch_data);
  g_free (c);
}

/* Finished batches reach the main context through one long-lived source:
 * any thread pushes them on a lock-free stack and wakes the context only
 * when the stack was empty, since the main thread takes it whole. */
static void
deliver (McqStore *s, Completion *c, gboolean wake)
{
  Completion *old = __atomic_load_n (&s->pipeline.done, __ATOMIC_RELAXED);

  do
    c->next = old;
  while (!__atomic_compare_exchange_n (&s->pipeline.done, &old, c, TRUE, __ATOMIC_RELEASE,
                                       __ATOMIC_RELAXED));
  if (old == NULL && wake)
    g_main_context_wakeup (NULL);
}

static gboolean
deliverer_ready (GSource *source)
{
  McqStore *s = *(McqStore **) (source + 1);
  return __atomic_load_n (&s->pipeline.done, __ATOMIC_ACQUIRE) != NULL;
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
  Completion *c = __atomic_exchange_n (&s->pipeline.done, NULL, __ATOMIC_ACQUIRE), *fifo = NULL;

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
        store_db_fail (ret, &o->error, what);
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

void
pipeline_post (McqStore *s, McqOp *first, gboolean changed, gboolean wake)
{
  if (first != NULL || changed)
    deliver (s, completion_new (s, first, changed), wake);
}

static gboolean
op_in_segment (const McqOp *op)
{
  return (op->type == MCQ_OP_SET || op->type == MCQ_OP_GET) && op->status != MCQ_OP_FAILED;
}

/* Before a batch runs: waits for a checkpoint if writers outran it, and,
 * short of space, plans the batch carefully (room_plan) and compacts.
 * Returns the position after the batch's last op that commits (0: none). */
static guint
batch_prepare (McqStore *s, McqOp **batch, guint n)
{
  guint last_commit = 0;

  for (guint i = 0; i < n; i++)
    if (op_commits (batch[i]))
      last_commit = i + 1;
  if (last_commit > 0)
    maint_wait_for_checkpoint (s);
  s->room.careful = FALSE;
  if (last_commit > 0)
    room_plan (s, batch, n);
  if (g_atomic_int_get (&s->room.pressure))
    room_compact_if_mostly_free (s);
  return last_commit;
}

/* Runs batch[i..] up to the next op that is not a set or a get as one
 * segment (one op only when short of space, so the log can be settled
 * between them); the batch's last commit writes the log to the kernel.
 * Returns the index after the segment; *unwritten: whether commits may
 * still sit in the log buffer. */
static guint
batch_run_segment (McqStore *s, McqOp **batch, guint i, guint n, guint last_commit,
                   gboolean *unwritten)
{
  guint j = i;
  u_int32_t flags;

  while (j < n && op_in_segment (batch[j]) && (j == i || !room_tight (s)))
    j++;
  flags = j == last_commit ? DB_TXN_WRITE_NOSYNC : DB_TXN_NOSYNC;
  if (!txn_run_segment (s, batch + i, j - i, flags))
    *unwritten = TRUE;
  else
    *unwritten = flags != DB_TXN_WRITE_NOSYNC;
  return j;
}

/* Runs every op of the batch; returns whether commits may still sit in
 * the log buffer (the last one failed, or none wrote it). */
static gboolean
batch_run (McqStore *s, McqOp **batch, guint n, guint last_commit)
{
  gboolean unwritten = FALSE;

  for (guint i = 0; i < n;)
    {
      if (s->room.careful && op_in_segment (batch[i]))
        room_admit (s, batch[i]);
      if (op_in_segment (batch[i]))
        i = batch_run_segment (s, batch, i, n, last_commit, &unwritten);
      else
        {
          if (batch[i]->status != MCQ_OP_FAILED)   /* else refused above */
            txn_run_op (s, batch[i]);
          /* A delete that committed wrote the whole log buffer; one of a
           * queue that does not exist committed nothing. */
          if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_OK)
            unwritten = FALSE;
          else if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_FAILED)
            unwritten = TRUE;
          i++;
        }
      maint_settle_if_pressed (s);
    }
  return unwritten;
}

/* Chains the batch's ops into those released once written (*early) and
 * those released once synced (*late). */
static void
batch_sort (McqStore *s, McqOp **batch, guint n, McqOp **early, McqOp **late)
{
  McqOp **early_tail = early, **late_tail = late;

  *early = *late = NULL;
  for (guint i = 0; i < n; i++)
    {
      McqOp *op = batch[i];
      McqOp ***tail = op_released_early (s, op) ? &early_tail : &late_tail;

      op->next = NULL;
      **tail = op;
      *tail = &op->next;
    }
}

/* Writes what the failed last commit left in the log buffer.  On failure
 * the commits still stand (the next flush writes them), so gets keep
 * their messages (at worst one comes back: at least once); sets and
 * deletes fail, since their reply would claim a write not made. */
static void
batch_flush (McqStore *s, McqOp *early, McqOp *late)
{
  int ret = s->env->log_flush (s->env, NULL);

  if (ret == 0)
    return;
  g_warning ("flushing the log: %s", db_strerror (ret));
  fail_all (late, FALSE, ret, "flushing the log");
  fail_all (early, TRUE, ret, "writing the log");
}

/* Runs one batch (at most BATCH_MAX ops) and passes its ops on: to the
 * main context once their commits are written, or to the sync thread,
 * which releases them once synced while this thread runs the next batch. */
static void
run_batch (McqStore *s, McqOp **batch, guint n)
{
  McqOp *early, *late;
  gboolean need_sync = FALSE, unwritten, changed;
  guint last_commit = batch_prepare (s, batch, n);

  for (guint i = 0; i < n; i++)
    need_sync |= !s->cfg.no_sync && op_commits (batch[i]) && batch[i]->type != MCQ_OP_GET;
  unwritten = batch_run (s, batch, n, last_commit);
  batch_sort (s, batch, n, &early, &late);
  changed = store_publish (s);
  if (unwritten)
    batch_flush (s, early, late);
  pipeline_post (s, early, FALSE, FALSE);
  if (need_sync && !unwritten)
    g_async_queue_push (s->pipeline.sync_inbox, completion_new (s, late, changed));
  else
    pipeline_post (s, late, changed, FALSE);
}

/* The sync thread runs under SCHED_BATCH, so that its wake-ups (three per
 * flush) never preempt the main thread, and in durable mode on the CPUs
 * that take the disk's interrupts (see placement.c).  Either refused, it
 * runs as before (figures: doc/performance.md). */
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

/* Group commit: one log_flush (fsync) covers every batch waiting, and only
 * then are their replies released, by the main context; a failed flush
 * fails the batches' ops. */
static gpointer
sync_thread (gpointer data)
{
  McqStore *s = data;
  gboolean stopping = FALSE;

  sync_thread_init (s);

  while (!stopping)
    {
      g_autoptr(GPtrArray) group = g_ptr_array_new ();
      Completion *c = g_async_queue_pop (s->pipeline.sync_inbox);
      int ret;

      for (; c != NULL; c = g_async_queue_try_pop (s->pipeline.sync_inbox))
        {
          if (c == &s->pipeline.sync_stop)
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

static GSource *
source_new (McqStore *s, GSourceFuncs *funcs, const char *name)
{
  GSource *source = g_source_new (funcs, sizeof (GSource) + sizeof (McqStore *));

  *(McqStore **) (source + 1) = s;
  g_source_set_name (source, name);
  return source;
}

void
pipeline_open (McqStore *s)
{
  s->pipeline.outbox_tail = &s->pipeline.outbox;
  s->pipeline.flusher = source_new (s, &flusher_funcs, "mcq-store-flusher");
  g_source_set_priority (s->pipeline.flusher, G_PRIORITY_HIGH);
  g_source_attach (s->pipeline.flusher, NULL);
  s->pipeline.deliverer = source_new (s, &deliverer_funcs, "mcq-store-deliverer");
  g_source_attach (s->pipeline.deliverer, NULL);
  s->pipeline.sync_inbox = g_async_queue_new ();
  s->pipeline.sync_thread = g_thread_new ("mcq-sync", sync_thread, s);
}

void
pipeline_stop (McqStore *s)
{
  pipeline_hand_over (s);
  g_async_queue_push (s->pipeline.sync_inbox, &s->pipeline.sync_stop);
  g_thread_join (g_steal_pointer (&s->pipeline.sync_thread));
}

void
pipeline_drain (McqStore *s)
{
  Completion *c, *next;

  /* Completions the other threads posted but the loop has not run yet. */
  while (g_atomic_int_get (&s->pipeline.pending) > 0 && g_main_context_iteration (NULL, FALSE))
    ;
  /* What is left carries no op, only a "queues changed" notice. */
  for (c = __atomic_exchange_n (&s->pipeline.done, NULL, __ATOMIC_ACQUIRE); c != NULL; c = next)
    {
      next = c->next;
      if (c->first != NULL)
        complete_batch (c);
      else
        g_free (c);
    }
}

void
pipeline_free (McqStore *s)
{
  if (s->pipeline.flusher != NULL)
    g_source_destroy (s->pipeline.flusher);
  g_clear_pointer (&s->pipeline.flusher, g_source_unref);
  if (s->pipeline.deliverer != NULL)
    g_source_destroy (s->pipeline.deliverer);
  g_clear_pointer (&s->pipeline.deliverer, g_source_unref);
  g_clear_pointer (&s->pipeline.sync_inbox, g_async_queue_unref);
}
