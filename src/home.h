/* home.h — the database home directory: creating it, checking it is usable,
 * and holding the lock that keeps a second memcacheq out of it. */
#pragma once

#include <glib.h>

typedef struct _McqHome McqHome;

/* Creates `path` if needed, checks it is a writable directory and locks
 * it.  Fails with a message naming the problem (and the other process's
 * pid when the home is in use). */
McqHome *mcq_home_acquire (const char *path, GError **error);

/* Records our pid in the lock file (after daemonizing). */
void mcq_home_write_pid (McqHome *home);

void mcq_home_release (McqHome *home);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (McqHome, mcq_home_release)
