/* store-private.h — the McqStore shared by the store-*.c files: its fields,
 * grouped by the thread that owns them, and the functions one store file
 * offers the others.  Not for use outside the store. */
#pragma once

#include <gio/gio.h>
#include <db.h>
#include <string.h>

#include "store.h"
#include "store-check.h"
#include "store-format.h"
#include "store-quarantine.h"
#include "store-space.h"

/*
 * Layout.
 *  queues.db  (btree) name              -> queue record (see store-format.h)
 *  messages.db (btree) id:u32 seq:u64 BE -> flags, enqueued-at (µs), checksum, body
 *                                           (see store-format.h)
 *  purge.db   (btree) id:u32 BE          -> head:u64 tail:u64 of a deleted queue
 *  integrity.db (btree)                  -> damaged records set aside (see
 *                                           store-quarantine.h)
 *
 * A queue holds the messages [head, tail).  Big-endian keys make the btree's
 * byte order the FIFO order, and appends land on the rightmost leaf.  Every
 * set or get changes the message and the queue's record in one transaction,
 * so the lifetime counters can never disagree with the messages.  Ids are
 * never reused, so a deleted queue's leftover messages are unreachable.
 */

#define MSG_KEY_SIZE MCQ_REC_KEY_SIZE
#define MSG_HEADER_SIZE MCQ_REC_HEADER
/* A batch is at most this many ops (see pipeline_hand_over). */
#define BATCH_MAX 64
/* Log written since the last checkpoint that makes the next one due. */
#define CHECKPOINT_LOG_KB (16 * 1024)
/* Log bytes a set or a get writes besides the message itself (key and data
 * items, their headers, the commit and the queue record; figures:
 * doc/performance.md). */
#define LOG_OP_OVERHEAD 224

typedef struct {
  char *name;
  guint32 id;
  guint64 head, tail;
  guint64 enqueued, dequeued;
  guint64 bytes;
  gint64 head_time;            /* enqueue time of the head message, 0 if empty */
  guint64 leaf_drained;        /* leaf bytes taken from its head, not yet counted
                                  as free pages (mcq_space_leaf_pages_freed) */
  guint seg_epoch;             /* == McqStore.seg.epoch once touched by the segment */
} Queue;

/* A queue's state before the open segment first changed it. */
typedef struct {
  Queue *q;
  Queue saved;
  gboolean created;
} Undo;

/* A finished batch on its way back to the main context. */
typedef struct _Completion Completion;
struct _Completion {
  struct _McqStore *store;
  struct _McqOp *first;
  gboolean changed;
  Completion *next;            /* in McqStore.pipeline.done */
};

struct _McqStore {
  /* Set at open, read-only after. */
  McqStoreConfig cfg;
  DB_ENV *env;
  DB *queues_db;
  DB *messages_db;
  DB *purge_db;
  McqQuarantine *quarantine;   /* integrity.db */
  McqStoreMark *mark;          /* memcacheq.state: see store-check.h */
  guint64 log_file_bytes;      /* each log file's size */
  guint64 page_size;           /* messages.db's, as its file has it (-A only sets it
                                  for a new file) */
  GThread *owner;              /* the thread that opened the store: the only
                                * one that may run transactions (txn_start) */

  /* Main thread only: the queues as the committed transactions left them. */
  GHashTable *queues;          /* name -> Queue* */
  guint32 next_id;
  guint64 depth;               /* messages in all queues */
  gboolean purge_pending;      /* purge.db may hold deleted queues' messages */
  GHashTable *dirty;           /* names changed since the last store_publish */

  /* Main thread only: the open segment (store-txn.c). */
  struct {
    DB_TXN *txn;
    DBC *cursor;               /* its cursor on messages_db for gets, or NULL */
    GArray *undo;              /* Undo, one per queue the segment touched */
    guint epoch;
    guint32 next_id;           /* the queues' state when it began */
    guint64 depth;
    guint64 bytes;             /* log volume it adds (estimate, for the log debt) */
    guint64 damaged;           /* messages it passed over (see pass_over) */
    guint64 log;               /* log it writes, as the space model counts it */
    gint64 db_free;            /* its change to room.space.db_free */
    gint64 now;                /* wall clock when it began: its sets' enqueue
                                * time (one clock read per segment) */
  } seg;

  /* Group commit (store-commit.c): the outbox is the main thread's; done is
   * pushed by any thread and taken by the main thread; the sync inbox is
   * read by the sync thread. */
  struct {
    McqOp *outbox, **outbox_tail;  /* submitted, not yet handed over */
    guint outbox_len;
    GSource *flusher;
    Completion *done;          /* atomic: finished batches, newest first */
    GSource *deliverer;        /* runs them on the main context */
    GAsyncQueue *sync_inbox;   /* Completion* waiting for an fsync */
    GThread *sync_thread;
    Completion sync_stop;      /* sentinel */
    gint pending;              /* atomic: ops submitted, not yet completed */
  } pipeline;

  /* The maintenance thread (store-maint.c); the fields under lock are
   * shared with the threads that wake it. */
  struct {
    GThread *thread;
    GMutex lock;
    GCond cond;
    gboolean stop;             /* lock */
    gboolean ckp_wanted;       /* lock: the log passed the threshold */
    McqOp *ops, **ops_tail;    /* lock: checkpoints clients asked for */
  } maint;

  /* Checkpoints (store-maint.c), run by the maintenance and main threads. */
  struct {
    GMutex lock;               /* one checkpoint (and debt settlement) at a time */
    guint64 log_debt;          /* atomic: bytes committed since the last checkpoint */
    GMutex debt_lock;          /* with debt_cond: writers waiting for a checkpoint */
    GCond debt_cond;
    guint gen;                 /* debt_lock: checkpoints settled so far */
    guint gave_up;             /* debt_lock: gen when a wait last timed out */
    gint failing;              /* atomic: the last checkpoint failed */
  } ckp;

  /* Free space (store-room.c): main thread only, but for pressure. */
  struct {
    McqSpace space;            /* see store-space.h */
    gint pressure;             /* atomic: a set of the largest size could be refused */
    gboolean careful;          /* too little room for this batch's worst case:
                                  one op per transaction */
    guint32 settled_log_file;  /* the log file at the last log removal */
    gint64 compact_checked_at; /* see room_compact_if_mostly_free */
    gint64 compacted_at;
  } room;

  /* What other threads may read (store.c): a snapshot as of the last batch. */
  struct {
    GMutex lock;               /* guards queues */
    GHashTable *queues;        /* name -> McqQueueInfo* */
    guint64 queue_count;       /* atomic, for status lines */
    guint64 total_depth;       /* atomic */
    McqStoreWatchFunc watch;   /* main thread: told after a batch changed queues */
    gpointer watch_data;
  } pub;
};

static inline void
dbt_init (DBT *d, void *data, size_t size)
{
  memset (d, 0, sizeof *d);
  d->data = data;
  d->size = (u_int32_t) size;
}

/* Short of space: a set of the largest size would be refused, or this
 * batch's worst case does not fit in the room left.  Main thread only. */
static inline gboolean
room_tight (McqStore *s)
{
  return g_atomic_int_get (&s->room.pressure) != 0 || s->room.careful;
}

/* Short of space (room_tight), every transaction is one request, and once
 * the log has moved to a new file, or written one drain step, a checkpoint
 * and the removal of the log files it frees come before anything more is
 * written.  The reserve covers one step from any log position. */
static inline guint64
room_step (McqStore *s)
{
  return mcq_space_step_bytes (&s->room.space.geom);
}

/* store.c */
/* Sets *error from Berkeley DB's ret (G_IO_ERROR_NO_SPACE for a full disk)
 * and returns FALSE. */
gboolean store_db_fail (int ret, GError **error, const char *what);
void store_mark_dirty (McqStore *s, const char *name);
/* Copies the queues changed since the last call to the snapshot other
 * threads read; whether any had changed. */
gboolean store_publish (McqStore *s);

/* store-txn.c: transactions, main thread only. */
/* Begins a transaction; asserts that the caller is the owner thread. */
int txn_start (McqStore *s, DB_TXN **txn);
/* The enqueue time of message (id, seq), from its header only; 0 if absent. */
gint64 txn_read_enqueue_time (McqStore *s, DB_TXN *txn, guint32 id, guint64 seq);
/* Runs ops[0..n) (sets and gets) as one transaction committed with flags;
 * on failure each again in its own, so only the op at fault fails.
 * Returns whether every commit was made with flags. */
gboolean txn_run_segment (McqStore *s, McqOp **ops, guint n, u_int32_t flags);
/* Runs a delete, a stats-queue, or a checkpoint op. */
void txn_run_op (McqStore *s, McqOp *op);
/* Removes one bounded chunk of a deleted queue's messages. */
void txn_purge_step (McqStore *s);

/* store-commit.c: batches and group commit. */
/* Creates the flusher and deliverer sources and starts the sync thread. */
void pipeline_open (McqStore *s);
/* Runs what is in the outbox and stops the sync thread once it has synced
 * every batch given to it. */
void pipeline_stop (McqStore *s);
/* Once the threads are stopped: runs every completion still owed. */
void pipeline_drain (McqStore *s);
/* Frees the sources and the sync inbox (NULL-tolerant teardown). */
void pipeline_free (McqStore *s);
/* Runs every op of the outbox, in batches of at most BATCH_MAX. */
void pipeline_hand_over (McqStore *s);
/* Queues the ops chained from first (and a "queues changed" notice) for
 * the main context; wake: from another thread. */
void pipeline_post (McqStore *s, McqOp *first, gboolean changed, gboolean wake);

/* store-maint.c: checkpoints and the maintenance thread. */
/* Sets up the maintenance and checkpoint locks (maint_clear frees them). */
void maint_init (McqStore *s);
void maint_clear (McqStore *s);
/* Starts the maintenance thread. */
void maint_open (McqStore *s);
/* Stops the maintenance thread once the ops given to it have run. */
void maint_close (McqStore *s);
/* Runs a checkpoint op on the maintenance thread, after every op before it. */
void maint_submit (McqStore *s, McqOp *op);
/* Counts log committed since the last checkpoint; wakes the maintenance
 * thread when a checkpoint becomes due. */
void maint_add_log_debt (McqStore *s, guint64 bytes);
gboolean maint_checkpoint (McqStore *s, GError **error);
/* A checkpoint, then the removal of the log files recovery no longer needs. */
gboolean maint_archive (McqStore *s, GError **error);
/* Checkpoints (removing old logs with remove_logs) and forgets the log
 * debt it covered; one at a time. */
gboolean maint_settle (McqStore *s, gboolean remove_logs, GError **error);
void maint_settle_if_owed (McqStore *s, guint64 min_debt);
void maint_settle_if_pressed (McqStore *s);
/* Where the log ends (bytes since the first log file); 0 if unknown. */
guint64 maint_log_end (McqStore *s);
void maint_wait_for_checkpoint (McqStore *s);

/* store-room.c: free space, main thread only. */
void room_open (McqStore *s);
void room_look (McqStore *s, gboolean force);
void room_reserve_pages (McqStore *s);
void room_plan (McqStore *s, McqOp **batch, guint n);
void room_admit (McqStore *s, McqOp *op);
void room_compact_if_mostly_free (McqStore *s);
