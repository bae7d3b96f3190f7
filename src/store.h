/* store.h — the queue store: the only module that talks to Berkeley DB.
 * Requests (McqOp) run as transactions on the main thread, in batches; in
 * durable mode a sync thread makes them durable in groups; they complete
 * on the main context. */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef struct _McqStore McqStore;

typedef struct {
  char *home;                  /* the BDB environment directory */
  guint64 cache_bytes;         /* -m */
  guint32 page_size;           /* -A; 0 = BDB's choice */
  guint32 log_buffer_bytes;    /* -L */
  guint checkpoint_interval_s; /* -C; 0 = only at shutdown */
  guint trickle_interval_s;    /* -T; 0 = never */
  guint trickle_percent;       /* -e */
  gboolean no_sync;            /* -N */
  gboolean log_auto_remove;    /* -R */
  gboolean cpu_placement;      /* durable mode: the sync thread on the CPUs of the
                                  disk's interrupts (see placement.h) */
  guint64 max_body;            /* -B: the largest message, which sizes the free
                                  space kept for draining; 0 = 1 MiB */
} McqStoreConfig;

typedef enum {
  MCQ_OP_SET,
  MCQ_OP_GET,
  MCQ_OP_DELETE,
  MCQ_OP_STATS_QUEUE,
  MCQ_OP_CHECKPOINT,
  MCQ_OP_ARCHIVE,
} McqOpType;

typedef enum {
  MCQ_OP_OK,
  MCQ_OP_NOT_FOUND,            /* DELETE of a queue that does not exist */
  MCQ_OP_FAILED,               /* see McqOp.error */
} McqOpStatus;

/* One message taken by a GET; data is NULL when the queue was empty. */
typedef struct {
  guint32 flags;
  guint64 seq;
  const guint8 *data;          /* points into McqOp.values */
  size_t len;
  size_t offset;               /* store-internal: where data starts in values */
} McqMessage;

typedef struct {
  char *name;
  guint64 enqueued;
  guint64 dequeued;
} McqQueueStat;

typedef struct _McqOp McqOp;
typedef void (*McqOpDoneFunc) (McqOp *op);
/* GET only: asked on the main thread before each message is taken
 * (bytes > 0: TRUE to take it, FALSE to leave it queued and answer that
 * key as empty), and told of taken messages given back to their queue
 * because the transaction failed (bytes < 0; the return is ignored). */
typedef gboolean (*McqOpRoomFunc) (McqOp *op, gssize bytes);

struct _McqOp {
  McqOpType type;
  McqOpDoneFunc done;          /* runs on the main context when the op is durable */
  McqOpRoomFunc room;          /* GET, optional: see McqOpRoomFunc */
  gpointer user_data;

  /* input */
  GByteArray *keys;            /* names, each NUL-terminated, in order */
  guint nkeys;
  guint32 flags;               /* SET */
  GByteArray *body;            /* SET: set with mcq_op_set_body */

  /* output */
  McqOpStatus status;
  GError *error;
  GArray *messages;            /* GET: McqMessage per key, in key order */
  GByteArray *values;          /* GET: the bytes the messages point into; kept
                                  across reuse, so gets allocate nothing */
  GArray *queue_stats;         /* STATS_QUEUE: McqQueueStat sorted by name */

  McqOp *next;                 /* store-internal batch link */
  McqOp *chain;                /* store-internal hand-over link */
};

/* Opens (creating and recovering as needed) the environment in cfg->home
 * and starts its threads.  The home must already be locked. */
McqStore *mcq_store_open (const McqStoreConfig *cfg, GError **error);

/* Queues op; op->done runs later on the default main context, never
 * inside this call.  The op must stay alive until then.  Main thread
 * only: the ops queued run in a batch as soon as a full batch (64) of
 * them is queued (inside this call) or when the main loop next prepares
 * to poll. */
void mcq_store_submit (McqStore *store, McqOp *op);

/* Ops submitted and not yet completed on the main context. */
guint mcq_store_pending (McqStore *store);

/* Resets an op's input and output for reuse; frees what it held. */
void mcq_op_clear (McqOp *op);

/* Frees everything the op holds (not the op itself). */
void mcq_op_release (McqOp *op);

/* Sets a SET op's message (copied). */
void mcq_op_set_body (McqOp *op, guint32 flags, const void *data, size_t len);

/* Adds one key to op->keys. */
void mcq_op_add_key (McqOp *op, const char *key, size_t len);

/* Walks op->keys: *pos starts at 0; returns NULL at the end. */
const char *mcq_op_next_key (const McqOp *op, size_t *pos);

/* Stops the thread after every submitted op, checkpoints, closes. */
void mcq_store_close (McqStore *store);

/* One queue's figures, as published after each batch of transactions. */
typedef struct {
  char *name;
  guint64 enqueued;
  guint64 dequeued;
  guint64 depth;
  guint64 bytes;               /* sum of the queued bodies */
  gint64 head_time;            /* real time (µs) the oldest message was stored; 0 if empty */
} McqQueueInfo;

/* Every queue's figures as of the last completed batch, sorted by name
 * (McqQueueInfo*, freed with the array).  Safe from the main thread; it
 * never waits for a transaction. */
GPtrArray *mcq_store_snapshot (McqStore *store);

/* One queue's figures (out->name is left NULL); FALSE if no such queue. */
gboolean mcq_store_queue_info (McqStore *store, const char *name, McqQueueInfo *out);

/* func runs on the main context after each batch that changed any queue
 * (created, deleted, counters moved).  Callers coalesce as they see fit. */
typedef void (*McqStoreWatchFunc) (gpointer user_data);
void mcq_store_watch (McqStore *store, McqStoreWatchFunc func, gpointer user_data);

gboolean mcq_store_durable (McqStore *store);
const char *mcq_store_home (McqStore *store);

/* Cheap, lock-free figures for status lines. */
guint64 mcq_store_queue_count (McqStore *store);
guint64 mcq_store_total_depth (McqStore *store);

/* Messages passed over since the store opened because their record was
 * damaged or missing (each set aside in integrity.db and logged).  Any
 * thread. */
guint64 mcq_store_damaged (McqStore *store);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (McqStore, mcq_store_close)
