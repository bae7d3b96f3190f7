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
                                  bytes at once (DB_LOG_ZERO) */
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

/* File-system bytes that writing `bytes` more log takes, the log being
 * `offset` bytes into its current file: whole new files when they are
 * preallocated, else the bytes themselves. */
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
