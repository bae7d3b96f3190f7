/* main.c — memcacheq's entry point: options → home → sockets → privileges →
 * store → main loop, the signals, and the orderly shutdown on SIGTERM,
 * SIGINT or SIGUSR1.  Everything it wires together lives in its own module. */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "connection.h"
#include "dbus.h"
#include "home.h"
#include "i18n.h"
#include "listener.h"
#include "log.h"
#include "options.h"
#include "sdglue.h"
#include "server.h"
#include "store.h"

#define SHUTDOWN_GRACE_US (10 * G_USEC_PER_SEC)
#define DRAIN_QUIET_US (200 * 1000)
#define STATUS_INTERVAL_S 5

static const char license_text[] =
  "memcacheq " MCQ_VERSION "\n"
  "Copyright (c) the memcacheq developers.\n"
  "Licensed under the BSD 3-Clause license: redistribution and use in source and\n"
  "binary forms, with or without modification, are permitted provided that the\n"
  "copyright notice, the conditions and the disclaimer are retained; the names of\n"
  "the authors may not be used to endorse derived products.  This software is\n"
  "provided \"as is\", without any warranty.\n";

typedef struct Daemon Daemon;

/* A signal that shuts the daemon down, with its name for the log. */
typedef struct {
  Daemon *daemon;
  int signo;
  const char *name;
} StopSignal;

/* Everything the daemon owns; daemon_clear tears it down, in order. */
struct Daemon {
  GMainLoop *loop;
  McqServer server;
  McqListener *listener;
  McqHome *home;
  char *home_path;
  McqDbus *dbus;
  const char *pidfile;          /* written, so removed at exit; NULL otherwise */
  int activated;                /* sockets passed by the service manager */
  int notify_fd;                /* -d: the waiting parent's pipe, or -1 */
  gboolean root_kept;
  gboolean serving;             /* the main loop ran: connections must be drained */
  guint status_source;
  const char *stopped_by;       /* the first stop signal's name, NULL until one came */
  StopSignal stop_signals[3];
};

static int
fail (const char *message)
{
  g_printerr ("memcacheq: %s\n", message);
  return 1;
}

static gboolean
on_stop_signal (gpointer data)
{
  StopSignal *s = data;

  if (s->daemon->stopped_by == NULL)
    s->daemon->stopped_by = s->name;
  g_main_loop_quit (s->daemon->loop);
  return G_SOURCE_CONTINUE;
}

/* SIGTERM and SIGINT, and SIGUSR1 as in memcached, shut down cleanly
 * (see drain); signals repeated meanwhile change nothing. */
static void
watch_stop_signals (Daemon *d)
{
  static const struct { int signo; const char *name; } stop[] = {
    { SIGTERM, "SIGTERM" }, { SIGINT, "SIGINT" }, { SIGUSR1, "SIGUSR1" },
  };

  G_STATIC_ASSERT (G_N_ELEMENTS (stop) == G_N_ELEMENTS (d->stop_signals));
  for (guint i = 0; i < G_N_ELEMENTS (stop); i++)
    {
      d->stop_signals[i] = (StopSignal) { d, stop[i].signo, stop[i].name };
      g_unix_signal_add (stop[i].signo, on_stop_signal, &d->stop_signals[i]);
    }
}

/* Signals that mean nothing to memcacheq are ignored, from the start, so
 * that none of them ends the daemon without its drain: SIGHUP (nothing to
 * reload), SIGPIPE (a client that went away is just disconnected), SIGUSR2
 * and SIGALRM. */
static void
ignore_meaningless_signals (void)
{
  static const int ignored[] = { SIGHUP, SIGPIPE, SIGUSR2, SIGALRM };
  struct sigaction sa = { .sa_handler = SIG_IGN };

  sigemptyset (&sa.sa_mask);
  for (guint i = 0; i < G_N_ELEMENTS (ignored); i++)
    sigaction (ignored[i], &sa, NULL);
}

static char *
status_line (McqServer *srv)
{
  /* TRANSLATORS: the status line systemctl status shows: queue count,
   * messages in all queues, open connections, then "durable" or "no-sync". */
  return g_strdup_printf (_("%llu queues, %llu messages, %u connections, %s"),
                          (unsigned long long) mcq_store_queue_count (srv->store),
                          (unsigned long long) mcq_store_total_depth (srv->store),
                          srv->curr_conns, mcq_store_durable (srv->store) ? _("durable") : _("no-sync"));
}

static gboolean
on_status_tick (gpointer data)
{
  g_autofree char *line = status_line (data);
  mcq_sd_status (line);
  return G_SOURCE_CONTINUE;
}

static gboolean
drop_privileges (const char *user, const char *unix_path, GError **error)
{
  struct passwd *pw = getpwnam (user);

  if (pw == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, _("-u/--user: no such user “%s”"), user);
      return FALSE;
    }
  /* The unix socket, made as root, goes to the user, or the user could
   * not connect to it (mode 0700 by default) nor remove it at exit. */
  if (unix_path != NULL && chown (unix_path, pw->pw_uid, pw->pw_gid) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno),
                   _("-u/--user: cannot give the socket %s to “%s”: %s"), unix_path, user,
                   g_strerror (errno));
      return FALSE;
    }
  if (initgroups (pw->pw_name, pw->pw_gid) != 0 || setgid (pw->pw_gid) != 0 ||
      setuid (pw->pw_uid) != 0)
    {
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errno),
                   _("-u/--user: cannot switch to “%s”: %s"), user, g_strerror (errno));
      return FALSE;
    }
  return TRUE;
}

/* Forks; the parent waits until the child reports it is serving (or has
 * failed) and exits with that status, so "memcacheq -d" in a script returns
 * only once the daemon is usable. */
static int
daemonize (void)
{
  int fds[2];
  pid_t pid;
  char status = 1;

  if (pipe2 (fds, O_CLOEXEC) != 0)
    return -1;
  pid = fork ();
  if (pid < 0)
    return -1;
  if (pid > 0)
    {
      close (fds[1]);
      if (read (fds[0], &status, 1) != 1)
        status = 1;
      _exit (status);
    }
  close (fds[0]);
  setsid ();
  return fds[1];
}

static void
daemon_ready (int notify_fd, char status)
{
  int null;

  if (notify_fd < 0)
    return;
  if (status == 0 && (null = open ("/dev/null", O_RDWR)) >= 0)
    {
      dup2 (null, STDIN_FILENO);
      dup2 (null, STDOUT_FILENO);
      dup2 (null, STDERR_FILENO);
      if (null > STDERR_FILENO)
        close (null);
    }
  if (write (notify_fd, &status, 1) != 1)
    g_debug ("the parent process is gone");
  close (notify_fd);
}

static gboolean
write_pidfile (const char *path, GError **error)
{
  g_autofree char *text = g_strdup_printf ("%ld\n", (long) getpid ());
  g_autoptr(GError) local = NULL;

  if (!g_file_set_contents (path, text, -1, &local))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, _("-P/--pidfile: %s"), local->message);
      return FALSE;
    }
  return TRUE;
}

/* --dbus */
static GBusType
bus_type (const McqOptions *o)
{
  switch (mcq_options_dbus (o))
    {
    case MCQ_DBUS_SYSTEM:
      return G_BUS_TYPE_SYSTEM;
    case MCQ_DBUS_SESSION:
      return G_BUS_TYPE_SESSION;
    case MCQ_DBUS_NONE:
    default:
      return G_BUS_TYPE_NONE;
    }
}

static gboolean
tick (gpointer data)
{
  return G_SOURCE_CONTINUE;
}

/* With the sockets closed: requests already on their way are answered for
 * a quiet period; then each connection stops taking messages and closes once
 * its client has what it is owed; the deadline closes the rest. */
static void
drain (McqServer *srv)
{
  gint64 start = g_get_monotonic_time ();
  guint ticker = g_timeout_add (10, tick, NULL);
  g_autoptr(GList) conns = NULL;

  while (g_get_monotonic_time () < start + DRAIN_QUIET_US && srv->conns != NULL)
    g_main_context_iteration (NULL, TRUE);
  conns = g_list_copy (srv->conns);
  for (GList *l = conns; l != NULL; l = l->next)
    if (g_list_find (srv->conns, l->data))
      mcq_connection_drain (l->data);
  while ((srv->conns != NULL || mcq_store_pending (srv->store) > 0) &&
         g_get_monotonic_time () < start + SHUTDOWN_GRACE_US)
    g_main_context_iteration (NULL, TRUE);
  g_source_remove (ticker);
  mcq_connection_close_all (srv);
}

/* The one teardown path of everything the daemon owns, in the order the
 * shutdown needs: no new work (bus, sockets), drain, then the store. */
static void
daemon_clear (Daemon *d)
{
  g_clear_handle_id (&d->status_source, g_source_remove);
  g_clear_pointer (&d->dbus, mcq_dbus_stop);
  g_clear_pointer (&d->listener, mcq_listener_free);
  if (d->serving)
    {
      drain (&d->server);
      mcq_sd_watchdog_stop ();
      d->serving = FALSE;
    }
  g_clear_pointer (&d->server.store, mcq_store_close);
  g_clear_pointer (&d->server.auth, mcq_auth_free);
  if (d->pidfile != NULL)
    unlink (d->pidfile);
  d->pidfile = NULL;
  g_clear_pointer (&d->loop, g_main_loop_unref);
  g_clear_pointer (&d->home, mcq_home_release);
  g_clear_pointer (&d->home_path, g_free);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Daemon, daemon_clear)

/* Berkeley DB allocates the whole cache when the environment opens and
 * fails there with a panic that names no option: check -m first. */
static gboolean
check_cache_fits (const McqOptions *o, GError **error)
{
  long pages = sysconf (_SC_PHYS_PAGES), page_size = sysconf (_SC_PAGESIZE);
  unsigned long long memory_mb = pages > 0 && page_size > 0
    ? (unsigned long long) pages * (unsigned long long) page_size / (1024 * 1024) : 0;

  if (memory_mb > 0 && o->cache_mb > memory_mb)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   _("-m/--cache-size: %llu MiB is more than this machine's memory (%llu MiB)"),
                   (unsigned long long) o->cache_mb, memory_mb);
      return FALSE;
    }
  return TRUE;
}

/* Logging at -v's level, the warnings for options without effect, and the
 * resource limits: -r's core size, and as many descriptors (one per
 * connection) as the hard limit allows. */
static void
set_up_process (const McqOptions *o)
{
  g_autoptr(GPtrArray) warnings = NULL;
  struct rlimit rl;

  mcq_log_setup (o->verbosity);
  warnings = mcq_options_warnings (o);
  for (guint i = 0; i < warnings->len; i++)
    g_warning ("%s", (const char *) warnings->pdata[i]);

  if (o->core_unlimited && getrlimit (RLIMIT_CORE, &rl) == 0)
    {
      rl.rlim_cur = rl.rlim_max;
      if (setrlimit (RLIMIT_CORE, &rl) != 0)
        g_warning (_("-r/--enable-coredumps: %s"), g_strerror (errno));
    }

  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
    {
      rl.rlim_cur = rl.rlim_max;
      setrlimit (RLIMIT_NOFILE, &rl);
    }
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < (rlim_t) o->max_conns + 32)
    g_warning (_("-c/--max-conns %u is above the open file limit (%lu); connections past "
                 "it will wait"), o->max_conns, (unsigned long) rl.rlim_cur);
}

/* -Y is read while still root when started as root, so the file can stay
 * private to root. */
static gboolean
load_auth (Daemon *d, const McqOptions *o, GError **error)
{
  if (o->auth_file == NULL)
    return TRUE;
  d->server.auth = mcq_auth_load (o->auth_file, error);
  if (d->server.auth == NULL)
    return FALSE;
  g_info (_("clients must authenticate first: %u user:password line(s) in %s"),
          mcq_auth_count (d->server.auth), o->auth_file);
  return TRUE;
}

/* The sockets passed by the service manager, else -s and -l/-p.  Before
 * the privileges go: a privileged port must be bound as root. */
static gboolean
open_sockets (Daemon *d, const McqOptions *o, GError **error)
{
  d->listener = mcq_listener_new ();
  d->activated = mcq_listener_adopt_activated (d->listener, error);
  if (d->activated < 0)
    return FALSE;
  if (d->activated > 0)
    {
      if (o->port_given || o->listen_addr || o->unix_path)
        g_info (_("using the %d socket(s) passed by the service manager; -p/-l/-s are not used"),
                d->activated);
      return TRUE;
    }
  if (o->unix_path && !mcq_listener_add_unix (d->listener, o->unix_path, o->unix_mask, error))
    return FALSE;
  if ((o->unix_path == NULL || o->port_given) && o->port != 0 &&
      !mcq_listener_add_tcp (d->listener, o->listen_addr ? o->listen_addr : "127.0.0.1",
                             (guint16) o->port, error))
    return FALSE;
  if (mcq_listener_describe (d->listener)[0] == '\0')
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                           _("nothing to listen on: -p 0 was given without -s"));
      return FALSE;
    }
  return TRUE;
}

/* -u when started as root; root without -u is warned about once the start
 * has succeeded (root_kept). */
static gboolean
switch_user (Daemon *d, const McqOptions *o, GError **error)
{
  if (getuid () == 0 || geteuid () == 0)
    {
      if (o->user == NULL)
        d->root_kept = TRUE;
      else if (!drop_privileges (o->user, d->activated > 0 ? NULL : o->unix_path, error))
        return FALSE;
    }
  else if (o->user != NULL)
    g_warning (_("-u/--user is ignored: memcacheq was not started as root"));
  return TRUE;
}

/* Locks the home, forks for -d (the parent waits for daemon_ready), opens
 * the store and writes -P's pid file.  A failure after the fork is reported
 * to the waiting parent. */
static gboolean
open_store (Daemon *d, const McqOptions *o, GError **error)
{
  McqStoreConfig cfg = { 0 };
  g_autoptr(GError) cause = NULL;

  d->home_path = mcq_options_home (o);
  d->home = mcq_home_acquire (d->home_path, error);
  if (d->home == NULL)
    return FALSE;
  if (o->daemonize)
    {
      d->notify_fd = daemonize ();
      if (d->notify_fd < 0)
        {
          g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, _("-d/--daemon: cannot fork"));
          return FALSE;
        }
      mcq_home_write_pid (d->home);
    }

  cfg.home = d->home_path;
  cfg.cache_bytes = o->cache_mb * 1024 * 1024;
  cfg.page_size = o->page_size;
  cfg.log_buffer_bytes = o->log_buffer_kb * 1024;
  cfg.checkpoint_interval_s = o->checkpoint_s;
  cfg.trickle_interval_s = o->trickle_s;
  cfg.trickle_percent = o->trickle_percent;
  cfg.no_sync = o->no_sync;
  cfg.log_auto_remove = o->log_auto_remove;
  cfg.cpu_placement = !o->no_cpu_placement;
  cfg.max_body = o->max_body;
  d->server.store = mcq_store_open (&cfg, &cause);
  if (d->server.store == NULL)
    {
      /* TRANSLATORS: the reason the database cannot be opened, then the directory. */
      g_set_error (error, cause->domain, cause->code, _("%s (home %s)"), cause->message,
                   d->home_path);
      daemon_ready (d->notify_fd, 1);
      return FALSE;
    }
  d->server.max_body = o->max_body;
  d->server.max_conns = o->max_conns;
  d->server.client_timeout_s = o->client_timeout_s;
  d->server.start_time = g_get_real_time () / G_USEC_PER_SEC;
  d->server.start_monotonic = g_get_monotonic_time ();

  if (o->pidfile && !write_pidfile (o->pidfile, error))
    {
      daemon_ready (d->notify_fd, 1);
      return FALSE;
    }
  d->pidfile = o->pidfile;
  return TRUE;
}

/* Starts serving: the stop signals, the sockets, the bus (connected in the
 * background; never a reason not to serve), systemd's READY=1, status and
 * watchdog, the "ready" line, and the release of a waiting -d parent. */
static void
start_serving (Daemon *d, const McqOptions *o)
{
  g_autofree char *status = NULL;

  /* Warned only once startup has succeeded, so that a failing start
   * prints exactly one line: the reason. */
  if (d->root_kept)
    g_warning (_("running as root; use -u/--user to run as an unprivileged user"));

  d->loop = g_main_loop_new (NULL, FALSE);
  watch_stop_signals (d);
  mcq_listener_start (d->listener, &d->server);
  d->dbus = mcq_dbus_start (&d->server, bus_type (o));
  status = status_line (&d->server);
  mcq_sd_ready (status);
  mcq_sd_watchdog_start ();
  d->serving = TRUE;
  d->status_source = g_timeout_add_seconds (STATUS_INTERVAL_S, on_status_tick, &d->server);
  /* TRANSLATORS: the version, the sockets ("127.0.0.1:22201, unix:/run/x"),
   * the database directory, then the durability mode. */
  g_message (_("memcacheq %s ready on %s; home %s; %s"), MCQ_VERSION,
             mcq_listener_describe (d->listener), d->home_path,
             mcq_store_durable (d->server.store) ? _("durable (STORED after fsync)") : _("no-sync (-N)"));
  daemon_ready (d->notify_fd, 0);
}

int
main (int argc, char **argv)
{
  g_auto(McqOptions) opts;
  g_auto(Daemon) d = { .notify_fd = -1 };
  g_autoptr(GError) error = NULL;

  mcq_i18n_init ();
  ignore_meaningless_signals ();
  mcq_options_init (&opts);
  if (!mcq_options_parse (&opts, &argc, &argv, &error) || !mcq_options_check (&opts, &error))
    return fail (error->message);
  if (opts.show_version)
    {
      g_print ("memcacheq %s\n", MCQ_VERSION);
      return 0;
    }
  if (opts.show_license)
    {
      g_print ("%s", license_text);
      return 0;
    }
  if (!check_cache_fits (&opts, &error))
    return fail (error->message);
  set_up_process (&opts);
  if (!load_auth (&d, &opts, &error) || !open_sockets (&d, &opts, &error) ||
      !switch_user (&d, &opts, &error) || !open_store (&d, &opts, &error))
    return fail (error->message);

  start_serving (&d, &opts);
  g_main_loop_run (d.loop);

  mcq_sd_stopping ();
  /* TRANSLATORS: the signal's name, e.g. SIGTERM. */
  g_message (_("%s received, shutting down: finishing in-flight requests"), d.stopped_by);
  daemon_clear (&d);
  g_message (_("stopped cleanly"));
  return 0;
}
