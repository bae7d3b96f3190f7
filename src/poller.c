/* poller.c — the connections' epoll set as one GLib source.
 * Owns the epoll fd and its GSource: the main loop polls that single fd,
 * and each dispatch hands the ready sockets to the connection code. */
#include "poller.h"

#include <errno.h>
#include <sys/epoll.h>

#include "i18n.h"

/* The loop stays GLib's; the source only tells it which sockets are ready,
 * so an iteration costs what the ready connections cost, not a poll(2)
 * over every open socket, and a change of interest is one epoll_ctl. */
#define POLLER_EVENTS 64

typedef struct {
  GSource source;
  int epfd;
} Poller;

static Poller *poller;
static McqPollerFunc poller_func;

static gboolean
poller_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  Poller *p = (Poller *) source;
  struct epoll_event ev[POLLER_EVENTS];
  int n = epoll_wait (p->epfd, ev, POLLER_EVENTS, 0);

  /* Handling one connection never frees another, so every pointer in
   * ev[] stays valid through the loop (a connection closing itself has
   * left the set and appears at most once). */
  for (int i = 0; i < n; i++)
    poller_func (ev[i].data.ptr, ev[i].events);
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs poller_funcs = {
  .dispatch = poller_dispatch,
};

void
mcq_poller_init (McqPollerFunc func)
{
  poller_func = func;
}

/* The poller, created on first use; NULL if the kernel refused an epoll
 * instance (the caller refuses the connection, the daemon goes on). */
static Poller *
poller_get (void)
{
  if (poller == NULL)
    {
      int epfd = epoll_create1 (EPOLL_CLOEXEC);
      GSource *source;

      if (epfd < 0)
        {
          g_warning (_("cannot create an epoll instance: %s"), g_strerror (errno));
          return NULL;
        }
      source = g_source_new (&poller_funcs, sizeof (Poller));
      poller = (Poller *) source;
      poller->epfd = epfd;
      g_source_add_unix_fd (source, epfd, G_IO_IN);
      g_source_set_name (source, "mcq-connections");
      /* GLib "blocks" a non-recursive source while dispatching it, taking
       * its fd out of the poll set and putting it back, which wakes the
       * context twice per dispatch.  The dispatch never runs the loop
       * itself, so recursion cannot happen: opt out. */
      g_source_set_can_recurse (source, TRUE);
      g_source_attach (source, NULL);
    }
  return poller;
}

gboolean
mcq_poller_watch (int fd, int op, guint32 events, gpointer target)
{
  /* No EPOLLRDHUP: level-triggered, it would fire without end once the
   * peer half-closes while replies are still owed; a read of 0 bytes
   * (EPOLLIN) tells the same thing when we are reading. */
  struct epoll_event ev = { .events = events, .data.ptr = target };
  Poller *p = poller_get ();

  if (p != NULL && epoll_ctl (p->epfd, op, fd, &ev) == 0)
    return TRUE;
  if (p != NULL)
    g_warning (_("cannot watch a connection: %s"), g_strerror (errno));
  return FALSE;
}

void
mcq_poller_forget (int fd)
{
  if (poller != NULL)
    epoll_ctl (poller->epfd, EPOLL_CTL_DEL, fd, NULL);
}
