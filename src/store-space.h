/* store-space.h — the store's disk-space model: what a message takes in the
 * Berkeley DB log and in messages.db, how much free space is held back so
 * that the queues can always be drained and the store recovered, and a
 * measurement of the home's free space as the store will see it. */
#pragma once

#include <glib.h>
#include <db.h>

typedef struct {
  guint64 page_size;           /* messages.db's */
  guint64 log_file_bytes;      /* each log file's size */
  gboolean log_prealloc;       /* durable mode: a new log file takes all its
                                  bytes at once (DB_LOG_ZERO); else the rest
                                  of the current file is counted as owed */
  guint64 max_record;          /* largest record: the largest body (-B) and
                                  its header */
} McqSpaceGeometry;

/* Log bytes that storing, or removing, one record of record_len bytes
 * writes, with the transaction's own records: an upper bound. */
guint64 mcq_space_log_bytes (const McqSpaceGeometry *g, guint64 record_len);

/* Bytes of messages.db that one record of record_len bytes occupies
 * (whole overflow pages for a big one): an upper bound. */
guint64 mcq_space_db_bytes (const McqSpaceGeometry *g, guint64 record_len);

/* Bytes of messages.db that removing a record of record_len bytes puts
 * on the file's free list for reuse: its overflow pages. */
guint64 mcq_space_db_freed (const McqSpaceGeometry *g, guint64 record_len);

/* Removing a record small enough for a leaf page frees no page itself,
 * but a queue's leaf pages are emptied, and freed, as its head moves on:
 * adds the record to *drained (the queue's count) and returns the bytes
 * of whole pages that are now surely free, which leaves two pages'
 * worth in *drained (the head's page, and one shared with another queue). */
guint64 mcq_space_leaf_pages_freed (const McqSpaceGeometry *g, guint64 record_len,
                                    guint64 *drained);

/* File-system bytes that writing `bytes` more log takes, the log being
 * `offset` bytes into its current file: the whole new files it opens
 * (a file that grows as it is written is counted whole as well, its
 * rest being owed from the start; see McqSpace). */
guint64 mcq_space_log_growth (const McqSpaceGeometry *g, guint64 offset, guint64 bytes);

/* Log bytes one step of draining may write under space pressure (one
 * largest message's removal): the reserve covers one such step from any
 * log position, and a checkpoint after it. */
guint64 mcq_space_step_bytes (const McqSpaceGeometry *g);

/* Free space held back from sets: room for one drain step and the
 * checkpoint that follows it (which lets the old log files go), and for
 * recovery's own checkpoint after a crash. */
guint64 mcq_space_reserve (const McqSpaceGeometry *g);

/* The home's space as the store will see it. */
typedef struct {
  guint64 avail;               /* free bytes for us (statvfs) */
  guint64 db_unwritten;        /* pages messages.db has in the cache beyond
                                  what its file has allocated: they take
                                  space when the cache writes them */
  guint32 log_file;            /* the current log file's number */
  guint64 log_offset;          /* and where the log ends in it */
} McqSpaceLook;

/* Measures the home (statvfs), the log's end and messages.db (its cache
 * pages against its file's blocks).  FALSE if the file system cannot be
 * asked. */
gboolean mcq_space_measure (const char *home, DB_ENV *env, DB *messages_db,
                            const char *messages_path, McqSpaceLook *out);

/* The store's running account of its space (main thread only). */
typedef struct {
  McqSpaceGeometry geom;
  char *home, *messages_path;
  McqSpaceLook look;           /* the last measurement, */
  gint64 looked_at;            /*   its time (monotonic), */
  guint ckp_gen;               /*   the checkpoints settled by then, */
  gint64 room;                 /*   free space past the reserve and the
                                    cache's unwritten pages, */
  guint64 spent;               /* and the most commits since may have taken */
  guint64 db_free;             /* overflow pages known to be on messages.db's
                                  free list, which sets reuse */
} McqSpace;

void mcq_space_init (McqSpace *sp, const McqSpaceGeometry *g, const char *home);
void mcq_space_clear (McqSpace *sp);

/* Measures again, unless !force and the last look is recent, no checkpoint
 * (ckp_gen) has run since and what was spent since is under a quarter of
 * the room.  Returns whether a set of the largest message could be
 * refused (pressure). */
gboolean mcq_space_look (McqSpace *sp, gboolean force, guint ckp_gen, DB_ENV *env,
                         DB *messages_db);

/* Whether a set of record_len bytes, the log being at offset in its file,
 * leaves the reserve whole (*cost, if not NULL: what it may take).  Its
 * pages past those known free must fit in the room; its log may dip
 * into the reserve for a moment, since the checkpoint that follows (or,
 * after a crash, recovery's) removes the log files it filled. */
gboolean mcq_space_fits (const McqSpace *sp, guint64 offset, guint64 record_len, guint64 *cost);

/* Whether log_bytes more log, from where the last look found the log,
 * fit in the room past the reserve and what was spent since. */
gboolean mcq_space_fits_log (const McqSpace *sp, guint64 log_bytes);

/* The most a batch that writes these may take: each set's log and
 * pages, each get key the removal of a largest message, anything else a
 * small record; its log from the worst position. */
guint64 mcq_space_worst (const McqSpace *sp, guint64 set_log, guint64 set_db, guint64 get_keys,
                         guint others);

/* The G_IO_ERROR_NO_SPACE error of a refused set. */
void mcq_space_refuse (const McqSpace *sp, guint64 body_len, guint64 cost, GError **error);
