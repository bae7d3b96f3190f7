/* protocol.h — the memcache text protocol as memcacheq speaks it.
 * Pure parsing: bytes in, one request (or "need more", or an error reply) out.
 * No sockets, no main loop, no storage; safe to fuzz. */
#pragma once

#include <glib.h>
#include <stdint.h>

#define MCQ_KEY_MAX 250
/* A request line whose content (without its "\r\n" or "\n") is longer
 * than this is a runaway: the connection gets an error and is closed.  A
 * multi-get naming 64 maximal keys still fits. */
#define MCQ_LINE_MAX 16384
/* A declared body length above this makes the line malformed, as in
 * memcached (INT_MAX - 2): answering "too large" would oblige us to skip
 * that many bytes, and a client that never sends them would have every
 * later request swallowed.  Larger than any -B allows. */
#define MCQ_DECLARED_BODY_MAX ((guint64) G_MAXINT32 - 2)

typedef enum {
  MCQ_CMD_SET,
  MCQ_CMD_GET,          /* also "gets": see McqRequest.with_cas */
  MCQ_CMD_DELETE,
  MCQ_CMD_STATS,        /* general stats */
  MCQ_CMD_STATS_QUEUE,
  MCQ_CMD_STATS_RESET,
  MCQ_CMD_VERSION,
  MCQ_CMD_VERBOSITY,
  MCQ_CMD_QUIT,
  MCQ_CMD_DB_CHECKPOINT,
  MCQ_CMD_DB_ARCHIVE,
} McqCommand;

typedef enum {
  MCQ_PARSE_NEED_MORE,  /* nothing consumed; call again with more bytes */
  MCQ_PARSE_REQUEST,    /* a complete request; consume `consumed` bytes */
  MCQ_PARSE_ERROR,      /* reply `error`, consume `consumed`, then skip `discard` more bytes */
  MCQ_PARSE_FATAL,      /* reply `error` and close the connection */
} McqParseStatus;

typedef struct {
  const char *ptr;
  size_t len;
} McqSpan;

typedef struct {
  McqCommand cmd;
  McqSpan key;          /* SET, DELETE: the queue; GET: all keys, space separated */
  guint32 flags;        /* SET */
  guint64 bytes;        /* SET */
  McqSpan body;         /* SET: points into the input buffer */
  guint nkeys;          /* GET */
  gboolean with_cas;    /* GET: the request was "gets" */
  gboolean noreply;     /* SET, DELETE, VERBOSITY */
  guint32 verbosity;    /* VERBOSITY */
} McqRequest;

typedef struct {
  McqParseStatus status;
  size_t consumed;      /* bytes of the input the caller may drop now */
  guint64 discard;      /* ERROR only: further bytes to drop as they arrive */
  gboolean skip_line;   /* ERROR only: after `discard`, drop through the next '\n' */
  const char *error;    /* ERROR/FATAL: the reply line, with "\r\n" */
  gboolean noreply;     /* ERROR only: the line ends in "noreply", so no reply
                           is sent (the client reads none; an error line would
                           be taken as the reply to its next request) */
  size_t need;          /* NEED_MORE only: the whole request's length once its
                           line is complete (a set and its body), else 0 */
} McqParseResult;

/* Parses the request at the start of buf[0..len).  max_body is the largest
 * accepted set body.  On MCQ_PARSE_REQUEST, *req points into buf. */
McqParseResult mcq_parse_request (const char *buf, size_t len, guint64 max_body,
                                  McqRequest *req);

/* Iterates over the keys of a GET request: *pos starts at 0.  Returns FALSE
 * when there are no more keys. */
gboolean mcq_request_next_key (const McqRequest *req, size_t *pos, McqSpan *key);

/* Returns NULL if key is acceptable as a queue name, else the error reply. */
const char *mcq_check_key (const char *key, size_t len);

/* Strict decimal parsers used for the protocol and for option values: no
 * sign (but mcq_parse_i64's '-'), no spaces, no overflow; any number of
 * leading zeros, so "007" and "0000000000000000000000007" both read 7. */
gboolean mcq_parse_u64 (const char *s, size_t len, guint64 *out);
gboolean mcq_parse_i64 (const char *s, size_t len, gint64 *out);
