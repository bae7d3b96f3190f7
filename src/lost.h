/* lost.h — counts, by queue, the messages held in a run of memcache reply
 * bytes that were not sent in full, and logs them as lost.  Pure: works on
 * bytes, no sockets. */
#pragma once

#include <glib.h>

/* A table queue name -> count, for the functions below. */
GHashTable *mcq_lost_new (void);

/* Counts one message of queue name[0..len). */
void mcq_lost_add (GHashTable *lost, const char *name, size_t len);

/* Walks the whole reply records of p[0..len), which must start at a
 * record (a line, or a VALUE line and its data block).  Returns where the
 * last record that ends by `sent` ends, and counts in lost (unless NULL)
 * the queue of every VALUE record that ends after `sent`. */
size_t mcq_lost_scan (const guint8 *p, size_t len, size_t sent, GHashTable *lost);

/* Logs one warning naming each queue of lost and its count; nothing if
 * lost is empty. */
void mcq_lost_warn (GHashTable *lost);
