/* reply.h — the memcache text replies memcacheq sends, formatted.
 * Pure: each function appends exact bytes to a GByteArray; no sockets, no
 * connection state, no storage calls.  The parser's error lines stay in protocol.c. */
#pragma once

#include <glib.h>
#include "store.h"

/* The fixed one-line replies. */
typedef enum {
  MCQ_REPLY_STORED,
  MCQ_REPLY_DELETED,
  MCQ_REPLY_NOT_FOUND,
  MCQ_REPLY_OK,
  MCQ_REPLY_RESET,
  MCQ_REPLY_END,
  MCQ_REPLY_VERSION,            /* "VERSION <version>" */
} McqReplyLine;

/* The line for kind, with its "\r\n"; static storage. */
const char *mcq_reply_line_text (McqReplyLine kind);

/* Appends the line for kind. */
void mcq_reply_line (GByteArray *out, McqReplyLine kind);

/* Appends text as it is (an error line the parser chose, say). */
void mcq_reply_text (GByteArray *out, const char *text);

/* Appends one message of a get: "VALUE <key> <flags> <bytes>[ <cas>]\r\n",
 * the data, "\r\n". */
void mcq_reply_value (GByteArray *out, const char *key, guint32 flags,
                      const void *data, size_t len, gboolean with_cas, guint64 cas);

/* Appends a get's whole reply: a VALUE block for each key whose message
 * is there (data != NULL), in key order, then "END\r\n".  keys holds the
 * names back to back, each NUL-terminated (McqOp.keys' layout); msgs[i]
 * belongs to the i-th name.  Returns the number of VALUE blocks. */
guint mcq_reply_values (GByteArray *out, const char *keys, size_t keys_len,
                        const McqMessage *msgs, guint nmsgs, gboolean with_cas);

/* Appends "STAT <name> <enqueued>/<dequeued>\r\n" per queue, then "END\r\n". */
void mcq_reply_queue_stats (GByteArray *out, const McqQueueStat *stats, guint n);

/* What "stats" reports, gathered by the caller. */
typedef struct {
  long pid;
  gint64 uptime_s;
  gint64 time_s;                /* wall clock */
  gint64 user_s, user_us;       /* rusage */
  gint64 system_s, system_us;
  guint curr_conns;
  guint64 total_conns;
  guint conn_structures;
  guint64 get_cmds, get_hits, set_cmds, set_hits;
  guint64 bytes_read, bytes_written;
  guint threads;
  guint64 curr_queues, curr_items;
  gboolean durable;
  guint64 damaged_messages;
} McqStatsReport;

/* Appends the "STAT <name> <value>\r\n" lines of st in memcached's order
 * (memcacheq's own last), then "END\r\n". */
void mcq_reply_stats (GByteArray *out, const McqStatsReport *st);

/* Appends the SERVER_ERROR line for a request the store failed: message
 * with any '\r' or '\n' made a space, after "out of disk space: " when
 * no_space. */
void mcq_reply_failure (GByteArray *out, const char *message, gboolean no_space);
