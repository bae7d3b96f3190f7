/* server.h — the state every connection shares: the store, limits and the
 * memcache-style counters reported by "stats".  Owned by main.c; only the
 * main thread touches it. */
#pragma once

#include <glib.h>
#include "auth.h"
#include "store.h"

typedef struct {
  guint64 get_cmds, get_hits, set_cmds, set_hits;
  guint64 bytes_read, bytes_written;
} McqCounters;

typedef struct _McqServer {
  McqStore *store;
  McqAuth *auth;                /* --auth-file, or NULL: no authentication */
  guint64 max_body;
  guint max_conns;
  guint client_timeout_s;       /* --client-timeout */
  gint64 start_time;            /* wall clock, seconds */
  gint64 start_monotonic;       /* microseconds */

  guint curr_conns;
  guint64 total_conns;
  guint conn_structures;
  McqCounters counters;
  GList *conns;                 /* McqConnection*, for shutdown */
} McqServer;
