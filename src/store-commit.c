/* store-commit.c — group commit: ops are run in batches on the main thread,
 * the sync thread fsyncs the log once for every batch waiting, and finished
 * batches come back to the main context to release their replies. */
#include "store-private.h"
#include "placement.h"

#include <errno.h>
#include <sched.h>

static void run_batch (McqStore *s, McqOp **batch, guint n);

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
 * the store and sync threads push them on a lock-free stack and wake the
 * context only when the stack was empty, since the main thread takes the
 * whole stack at once.  (g_main_context_invoke cost a source allocation,
 * an attach under the context lock and a wake-up for every batch.) */
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
    maint_wait_for_checkpoint (s);

  /* Short of space, a batch that writes runs carefully, starting with a
   * checkpoint and log removal: that is what turns consumed messages
   * back into free space, and it keeps the gets that drain a full disk
   * from filling it with their own log records. */
  s->room.careful = FALSE;
  if (last_commit > 0)
    room_plan (s, batch, n);
  if (g_atomic_int_get (&s->room.pressure))
    room_compact_if_mostly_free (s);

  /* Runs of sets and gets become segments (one transaction each); the
   * last commit of the batch writes the log to the kernel, so every
   * reply below is released only after its commit has left the
   * process. */
  for (i = 0; i < n;)
    {
      if (s->room.careful && op_in_segment (batch[i]))
        room_admit (s, batch[i]);
      if (op_in_segment (batch[i]))
        {
          guint j = i;
          /* Short of space, one op per transaction, so that the log
           * can be settled between them. */
          while (j < n && op_in_segment (batch[j]) && (j == i || !room_tight (s)))
            j++;
          u_int32_t flags = j == last_commit ? DB_TXN_WRITE_NOSYNC : DB_TXN_NOSYNC;
          if (!txn_run_segment (s, batch + i, j - i, flags))
            unwritten = TRUE;
          else
            unwritten = flags != DB_TXN_WRITE_NOSYNC;
          i = j;
          maint_settle_if_pressed (s);
        }
      else
        {
          if (batch[i]->status != MCQ_OP_FAILED)   /* else refused above */
            txn_run_op (s, batch[i]);
          /* A delete that committed wrote the whole log buffer; one
           * of a queue that does not exist committed nothing, so
           * what earlier segments left unwritten stays so. */
          if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_OK)
            unwritten = FALSE;
          else if (op_commits (batch[i]) && batch[i]->status == MCQ_OP_FAILED)
            unwritten = TRUE;
          i++;
          maint_settle_if_pressed (s);
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
  gboolean changed = store_publish (s);
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
  pipeline_post (s, early, FALSE, FALSE);
  /* The sync thread fsyncs and releases these while this thread
   * already runs the next batch. */
  if (need_sync && !unwritten)
    g_async_queue_push (s->pipeline.sync_inbox, completion_new (s, late, changed));
  else
    pipeline_post (s, late, changed, FALSE);
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
