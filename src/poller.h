/* poller.h — one epoll set holding every connection socket, polled by the
 * GLib main loop as a single GSource (see poller.c).  Main thread only. */
#pragma once

#include <glib.h>

/* Told that fd's target has events (EPOLL* bits) ready. */
typedef void (*McqPollerFunc) (gpointer target, guint32 events);

/* Sets the function ready sockets are handed to; call before the first
 * watch.  Calling it again with the same function changes nothing. */
void mcq_poller_init (McqPollerFunc func);

/* Adds fd to the set (op EPOLL_CTL_ADD) or changes its events
 * (EPOLL_CTL_MOD), level-triggered; events for it reach the function with
 * target.  FALSE if the kernel refuses (logged unless there is no set at all),
 * e.g. no epoll instance or past fs.epoll.max_user_watches. */
gboolean mcq_poller_watch (int fd, int op, guint32 events, gpointer target);

/* Takes fd out of the set; call before closing it. */
void mcq_poller_forget (int fd);
