/* connection-internal.h — what connection.c and slot.c share: the
 * connection and slot structures and the calls between the two files.
 * Only those two include it. */
#pragma once

#include "connection.h"
#include "budget.h"
#include "protocol.h"
#include "store.h"

/* The most a connection holds ahead of a get before that get waits for
 * the client to read (see mcq_conn_limit and slot.c); it grows with -B so
 * one maximal reply always fits. */
#define OUT_LIMIT_MIN (16 * 1024 * 1024)

typedef struct _Slot Slot;

struct _McqConnection {
  guint32 want;                 /* EPOLL* events currently asked for */
  McqServer *server;
  int fd;
  int refs;                     /* the socket, plus one per op in the store */

  GByteArray *in;               /* NULL unless a request is incomplete */
  size_t in_off;
  guint64 discard;              /* bytes still to drop (swallowed body) */
  gboolean skip_line;           /* then drop through the next '\n' */
  McqAuthState auth;            /* until it passes, requests go to mcq_auth_parse */
  size_t need;                  /* length of the incomplete request, if known */
  McqBudgetClaim claim;         /* its share of the partial budget, or its place in line */
  gint64 incomplete_since;      /* monotonic µs; 0 unless a request is unfinished */

  GQueue slots;                 /* Slot*, in request order */
  GByteArray *out;              /* NULL until there is something to send */
  size_t out_off;
  size_t out_peak;
  gsize taken;                  /* bytes of messages taken by gets, not yet in out */
  gsize held;                   /* bytes held by slots: set bodies, replies (Slot.held) */
  guint parked;                 /* gets waiting for the client to read (Slot.park) */

  gint64 last_write;            /* monotonic µs of the last write progress */
  gboolean read_closed;         /* peer sent EOF, or quit, or fatal error */
  gboolean draining;            /* shutdown: close as soon as nothing is owed */
  gboolean closed;              /* socket gone; waiting for ops to finish */
  guint linger_timer;           /* closing: our side shut, see conn_finish */
  gint64 linger_until;
};

struct _Slot {
  GList link;                   /* in McqConnection.slots; no allocation */
  Slot *next_free;
  McqConnection *conn;
  McqOp op;
  McqCommand cmd;
  gboolean pending;
  gboolean noreply;
  gboolean with_cas;
  GByteArray *reply;            /* immediate reply, or formatted on completion */
  gsize taken;                  /* this get's share of McqConnection.taken */
  gsize held;                   /* its share of McqConnection.held */
  gboolean park;                /* get refused room before taking anything: runs
                                   again once the client has read (see slot.c) */
  gboolean parked;              /* ... and its store op has finished */
  guint cmds, hits;             /* for the stats counters, added when the reply
                                   leaves its turn (mcq_slots_release_replies) */
};

/* Bytes of output not yet sent. */
static inline size_t
mcq_conn_out_pending (const McqConnection *c)
{
  return c->out ? c->out->len - c->out_off : 0;
}

/* The most a connection may hold: reading stops there (conn_held), and a
 * get waits there (slot_room). */
static inline guint64
mcq_conn_limit (const McqConnection *c)
{
  return MAX ((guint64) OUT_LIMIT_MIN, 2 * c->server->max_body + 65536);
}

/* connection.c */

/* Moves finished replies to the output, writes what the socket takes and
 * decides which events to wait for; may close c (never frees it). */
void mcq_conn_update (McqConnection *c);

/* Drops a reference (one per op in the store, one for the socket); the
 * last frees c and everything it holds. */
void mcq_conn_unref (McqConnection *c);

/* slot.c */

/* Starts c's next request: a store op, or a reply that needs none. */
void mcq_slot_handle_request (McqConnection *c, const McqRequest *req);

/* Owes text (with its "\r\n") as the reply to a request that needs no store op. */
void mcq_slot_immediate (McqConnection *c, const char *text);

/* Moves the replies of finished requests at the head of c's slots to its
 * output, in request order, counting them for the stats. */
void mcq_slots_release_replies (McqConnection *c);

/* The client has read everything owed: the gets that waited for room
 * run again, in request order. */
void mcq_slots_unpark (McqConnection *c);

/* At close: logs the messages in the unsent output and in the replies
 * still waiting their turn (dropping those replies, so never twice). */
void mcq_slots_report_lost (McqConnection *c);

/* Keeps a finished slot (and its op's small buffers) for reuse, or frees it. */
void mcq_slot_free (Slot *s);
