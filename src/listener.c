/* listener.c — owns the listening sockets and the accept path.
 * Activated sockets are used exactly as systemd passed them; otherwise TCP
 * and unix stream sockets are opened here.  UDP is not offered. */
#include <gio/gio.h>
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "connection.h"
#include "i18n.h"

#define BACKLOG 1024
#define ACCEPT_BATCH 64

typedef struct {
  int fd;
  guint source;
  gboolean is_tcp;
  char *unlink_path;            /* unix socket we created */
} Socket;

struct _McqListener {
  GArray *socks;                /* Socket */
  GString *description;
  McqServer *server;
  guint pause_source;
};

McqListener *
mcq_listener_new (void)
{
  McqListener *l = g_new0 (McqListener, 1);
  l->socks = g_array_new (FALSE, TRUE, sizeof (Socket));
  l->description = g_string_new (NULL);
  return l;
}

static void
describe (McqListener *l, const char *what)
{
  if (l->description->len > 0)
    g_string_append (l->description, ", ");
  g_string_append (l->description, what);
}

static void
add_socket (McqListener *l, int fd, gboolean is_tcp, const char *unlink_path)
{
  Socket s = { .fd = fd, .is_tcp = is_tcp, .unlink_path = g_strdup (unlink_path) };
  g_array_append_val (l->socks, s);
}

static char *
describe_fd (int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char host[NI_MAXHOST], serv[NI_MAXSERV];

  if (getsockname (fd, (struct sockaddr *) &ss, &len) != 0)
    return g_strdup_printf ("fd %d", fd);
  if (ss.ss_family == AF_UNIX)
    return g_strdup_printf ("unix:%s", ((struct sockaddr_un *) &ss)->sun_path);
  if (getnameinfo ((struct sockaddr *) &ss, len, host, sizeof host, serv, sizeof serv,
                   NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return g_strdup_printf ("fd %d", fd);
  if (ss.ss_family == AF_INET6)
    return g_strdup_printf ("[%s]:%s", host, serv);
  return g_strdup_printf ("%s:%s", host, serv);
}

int
mcq_listener_adopt_activated (McqListener *l, GError **error)
{
  char **names = NULL;
  int n = sd_listen_fds_with_names (1, &names);

  if (n < 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                   _("reading the sockets passed by the service manager: %s"), g_strerror (-n));
      return -1;
    }
  for (int i = 0; i < n; i++)
    {
      int fd = SD_LISTEN_FDS_START + i;
      g_autofree char *what = NULL;

      if (sd_is_socket (fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                       _("socket %d (%s) passed by the service manager is not a listening "
                         "stream socket; memcacheq serves TCP and unix stream sockets only (no UDP)"),
                       fd, names && names[i] ? names[i] : _("unnamed"));
          g_strfreev (names);
          return -1;
        }
      g_unix_set_fd_nonblocking (fd, TRUE, NULL);
      fcntl (fd, F_SETFD, FD_CLOEXEC);
      add_socket (l, fd, sd_is_socket (fd, AF_UNIX, SOCK_STREAM, 1) <= 0, NULL);
      what = describe_fd (fd);
      if (names && names[i] && strcmp (names[i], "unknown") != 0)
        {
          g_autofree char *named = g_strdup_printf ("%s (%s)", what, names[i]);
          describe (l, named);
        }
      else
        describe (l, what);
    }
  g_strfreev (names);
  return n;
}

gboolean
mcq_listener_add_tcp (McqListener *l, const char *address, guint16 port, GError **error)
{
  struct addrinfo hints = { 0 }, *res = NULL;
  char portstr[8];
  int ret, opened = 0, last_errno = 0;

  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  g_snprintf (portstr, sizeof portstr, "%u", port);
  if ((ret = getaddrinfo (address, portstr, &hints, &res)) != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   _("-l/--listen: cannot resolve “%s”: %s"), address ? address : "*", gai_strerror (ret));
      return FALSE;
    }
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
    {
      int fd = socket (ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      int one = 1;

      if (fd < 0)
        {
          last_errno = errno;
          continue;
        }
      setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (ai->ai_family == AF_INET6)
        setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      if (bind (fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen (fd, BACKLOG) != 0)
        {
          last_errno = errno;
          close (fd);
          continue;
        }
      add_socket (l, fd, TRUE, NULL);
      g_autofree char *what = describe_fd (fd);
      describe (l, what);
      opened++;
    }
  freeaddrinfo (res);
  if (opened == 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (last_errno),
                   _("cannot listen on %s port %u: %s"), address ? address : "*", port,
                   g_strerror (last_errno));
      return FALSE;
    }
  return TRUE;
}

gboolean
mcq_listener_add_unix (McqListener *l, const char *path, guint mode, GError **error)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct stat st;
  int fd;

  if (strlen (path) >= sizeof sa.sun_path)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   _("-s/--unix-socket: path “%s” is too long"), path);
      return FALSE;
    }
  strcpy (sa.sun_path, path);

  /* A socket file left by a previous run is replaced, but only if nobody
   * answers on it; anything that is not a socket is left alone. */
  if (lstat (path, &st) == 0)
    {
      if (!S_ISSOCK (st.st_mode))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                       _("-s/--unix-socket: “%s” exists and is not a socket"), path);
          return FALSE;
        }
      fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0 && connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0)
        {
          close (fd);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
                       _("-s/--unix-socket: “%s” is in use by another server"), path);
          return FALSE;
        }
      if (fd >= 0)
        close (fd);
      unlink (path);
    }

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind (fd, (struct sockaddr *) &sa, sizeof sa) != 0 ||
      chmod (path, mode) != 0 || listen (fd, BACKLOG) != 0)
    {
      int saved = errno;
      if (fd >= 0)
        close (fd);
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved),
                   _("-s/--unix-socket: cannot listen on “%s”: %s"), path, g_strerror (saved));
      return FALSE;
    }
  add_socket (l, fd, FALSE, path);
  g_autofree char *what = g_strdup_printf ("unix:%s", path);
  describe (l, what);
  return TRUE;
}

static gboolean on_accept (int fd, GIOCondition cond, gpointer data);

static void
watch_all (McqListener *l)
{
  for (guint i = 0; i < l->socks->len; i++)
    {
      Socket *s = &g_array_index (l->socks, Socket, i);
      if (s->source == 0)
        s->source = g_unix_fd_add (s->fd, G_IO_IN, on_accept, l);
    }
}

static void
unwatch_all (McqListener *l)
{
  for (guint i = 0; i < l->socks->len; i++)
    g_clear_handle_id (&g_array_index (l->socks, Socket, i).source, g_source_remove);
}

static gboolean
resume_accepting (gpointer data)
{
  McqListener *l = data;
  l->pause_source = 0;
  watch_all (l);
  return G_SOURCE_REMOVE;
}

static gboolean
on_accept (int fd, GIOCondition cond, gpointer data)
{
  McqListener *l = data;
  McqServer *srv = l->server;
  gboolean is_tcp = TRUE;

  for (guint i = 0; i < l->socks->len; i++)
    if (g_array_index (l->socks, Socket, i).fd == fd)
      is_tcp = g_array_index (l->socks, Socket, i).is_tcp;

  for (int i = 0; i < ACCEPT_BATCH; i++)
    {
      int c = accept4 (fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0)
        {
          if (errno == EINTR || errno == ECONNABORTED)
            continue;
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            {
              /* Out of descriptors: stop accepting for a moment instead of
               * spinning on a socket that stays readable. */
              g_warning (_("cannot accept a connection: %s; pausing for 100 ms"), g_strerror (errno));
              unwatch_all (l);
              if (l->pause_source == 0)
                l->pause_source = g_timeout_add (100, resume_accepting, l);
              return G_SOURCE_REMOVE;
            }
          break;
        }
      if (srv->curr_conns >= srv->max_conns)
        {
          g_info (_("refusing a connection: %u open (-c %u)"), srv->curr_conns, srv->max_conns);
          mcq_connection_refuse (c, "SERVER_ERROR too many open connections\r\n");
          continue;
        }
      if (is_tcp)
        {
          int one = 1;
          setsockopt (c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
      mcq_connection_new (srv, c);
    }
  return G_SOURCE_CONTINUE;
}

void
mcq_listener_start (McqListener *l, McqServer *server)
{
  l->server = server;
  watch_all (l);
}

const char *
mcq_listener_describe (McqListener *l)
{
  return l->description->str;
}

void
mcq_listener_free (McqListener *l)
{
  if (l == NULL)
    return;
  unwatch_all (l);
  g_clear_handle_id (&l->pause_source, g_source_remove);
  for (guint i = 0; i < l->socks->len; i++)
    {
      Socket *s = &g_array_index (l->socks, Socket, i);
      close (s->fd);
      if (s->unlink_path)
        unlink (s->unlink_path);
      g_free (s->unlink_path);
    }
  g_array_unref (l->socks);
  g_string_free (l->description, TRUE);
  g_free (l);
}
