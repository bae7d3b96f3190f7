/* main.c — memcacheq's entry point: options → home → sockets → privileges →
 * store → main loop, and the orderly shutdown on SIGTERM/SIGINT.  Everything
 * it wires together lives in its own module. */
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

typedef struct {
  GMainLoop *loop;
  McqServer *server;
  int signal_received;
} Daemon;

static int
fail (const char *message)
{
  g_printerr ("memcacheq: %s\n", message);
  return 1;
}

static gboolean
on_stop_signal (gpointer data)
{
  Daemon *d = data;
  d->signal_received = 1;
  g_main_loop_quit (d->loop);
  return G_SOURCE_CONTINUE;
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

/* Shutdown, with the listening sockets already closed (under socket
 * activation the kernel keeps queueing new connections for the next
 * instance).  First a short quiet period in which connections are served
 * as usual, so requests already on their way are answered; then each
 * connection stops reading requests and taking messages, and closes once
 * its client has what it is owed; then whatever is left is closed at the
 * deadline, so a client that never reads cannot hold the daemon up (the
 * messages already taken for it, at most the output bound's worth, go
 * with it).  Until the drain stopped gets from taking, a consumer
 * pipelining gets and reading slower than the daemon sent kept taking
 * messages until the deadline cut them off unsent. */
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

int
main (int argc, char **argv)
{
  g_auto(McqOptions) opts;
  g_autoptr(GError) error = NULL;
  g_autoptr(McqListener) listener = NULL;
  g_autoptr(McqHome) home = NULL;
  g_autoptr(GPtrArray) warnings = NULL;
  g_autofree char *home_path = NULL;
  g_autofree char *status = NULL;
  McqStoreConfig store_cfg = { 0 };
  McqServer server = { 0 };
  McqDbus *dbus = NULL;
  Daemon d = { 0 };
  int activated, notify_fd = -1;

  mcq_i18n_init ();
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

  /* Berkeley DB allocates the whole cache when the environment opens; one
   * larger than the machine's memory failed there with a panic that asked
   * for database recovery and did not name the option. */
  long pages = sysconf (_SC_PHYS_PAGES), page_size = sysconf (_SC_PAGESIZE);
  unsigned long long memory_mb = pages > 0 && page_size > 0
    ? (unsigned long long) pages * (unsigned long long) page_size / (1024 * 1024) : 0;
  if (memory_mb > 0 && opts.cache_mb > memory_mb)
    {
      g_autofree char *msg =
        g_strdup_printf (_("-m/--cache-size: %llu MiB is more than this machine's memory (%llu MiB)"),
                         (unsigned long long) opts.cache_mb, memory_mb);
      return fail (msg);
    }

  mcq_log_setup (opts.verbosity);
  warnings = mcq_options_warnings (&opts);
  for (guint i = 0; i < warnings->len; i++)
    g_warning ("%s", (const char *) warnings->pdata[i]);

  if (opts.core_unlimited)
    {
      struct rlimit rl;
      if (getrlimit (RLIMIT_CORE, &rl) == 0)
        {
          rl.rlim_cur = rl.rlim_max;
          if (setrlimit (RLIMIT_CORE, &rl) != 0)
            g_warning (_("-r/--enable-coredumps: %s"), g_strerror (errno));
        }
    }

  /* Each connection is a descriptor: take what the hard limit allows. */
  {
    struct rlimit rl;
    if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
      {
        rl.rlim_cur = rl.rlim_max;
        setrlimit (RLIMIT_NOFILE, &rl);
      }
    if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t) opts.max_conns + 32)
      g_warning (_("-c/--max-conns %u is above the open file limit (%lu); connections past "
                   "it will wait"), opts.max_conns, (unsigned long) rl.rlim_cur);
  }

  /* Sockets first: a privileged port must be bound before dropping root. */
  listener = mcq_listener_new ();
  activated = mcq_listener_adopt_activated (listener, &error);
  if (activated < 0)
    return fail (error->message);
  if (activated > 0)
    {
      if (opts.port_given || opts.listen_addr || opts.unix_path)
        g_info (_("using the %d socket(s) passed by the service manager; -p/-l/-s are not used"),
                activated);
    }
  else
    {
      if (opts.unix_path && !mcq_listener_add_unix (listener, opts.unix_path, opts.unix_mask, &error))
        return fail (error->message);
      if ((opts.unix_path == NULL || opts.port_given) && opts.port != 0 &&
          !mcq_listener_add_tcp (listener, opts.listen_addr ? opts.listen_addr : "127.0.0.1",
                                 (guint16) opts.port, &error))
        return fail (error->message);
      if (mcq_listener_describe (listener)[0] == '\0')
        return fail (_("nothing to listen on: -p 0 was given without -s"));
    }

  gboolean root_kept = FALSE;
  if (getuid () == 0 || geteuid () == 0)
    {
      if (opts.user != NULL)
        {
          if (!drop_privileges (opts.user, activated > 0 ? NULL : opts.unix_path, &error))
            return fail (error->message);
        }
      else
        root_kept = TRUE;
    }
  else if (opts.user != NULL)
    g_warning (_("-u/--user is ignored: memcacheq was not started as root"));

  home_path = mcq_options_home (&opts);
  home = mcq_home_acquire (home_path, &error);
  if (home == NULL)
    return fail (error->message);

  if (opts.daemonize)
    {
      notify_fd = daemonize ();
      if (notify_fd < 0)
        return fail (_("-d/--daemon: cannot fork"));
      mcq_home_write_pid (home);
    }

  store_cfg.home = home_path;
  store_cfg.cache_bytes = opts.cache_mb * 1024 * 1024;
  store_cfg.page_size = opts.page_size;
  store_cfg.log_buffer_bytes = opts.log_buffer_kb * 1024;
  store_cfg.checkpoint_interval_s = opts.checkpoint_s;
  store_cfg.trickle_interval_s = opts.trickle_s;
  store_cfg.trickle_percent = opts.trickle_percent;
  store_cfg.no_sync = opts.no_sync;
  store_cfg.log_auto_remove = opts.log_auto_remove;
  store_cfg.cpu_placement = !opts.no_cpu_placement;
  store_cfg.max_body = opts.max_body;
  server.store = mcq_store_open (&store_cfg, &error);
  if (server.store == NULL)
    {
      /* TRANSLATORS: the reason the database cannot be opened, then the directory. */
      g_autofree char *msg = g_strdup_printf (_("%s (home %s)"), error->message, home_path);
      daemon_ready (notify_fd, 1);
      return fail (msg);
    }
  server.max_body = opts.max_body;
  server.max_conns = opts.max_conns;
  server.start_time = g_get_real_time () / G_USEC_PER_SEC;
  server.start_monotonic = g_get_monotonic_time ();

  if (opts.pidfile && !write_pidfile (opts.pidfile, &error))
    {
      daemon_ready (notify_fd, 1);
      mcq_store_close (server.store);
      return fail (error->message);
    }

  /* Warned only once startup has succeeded, so that a failing start
   * prints exactly one line: the reason. */
  if (root_kept)
    g_warning (_("running as root; use -u/--user to run as an unprivileged user"));

  d.loop = g_main_loop_new (NULL, FALSE);
  d.server = &server;
  g_unix_signal_add (SIGTERM, on_stop_signal, &d);
  g_unix_signal_add (SIGINT, on_stop_signal, &d);
  signal (SIGPIPE, SIG_IGN);
  signal (SIGHUP, SIG_IGN);

  mcq_listener_start (listener, &server);
  /* Connects in the background; the bus is never a reason not to serve. */
  dbus = mcq_dbus_start (&server, bus_type (&opts));
  status = status_line (&server);
  mcq_sd_ready (status);
  mcq_sd_watchdog_start ();
  guint status_source = g_timeout_add_seconds (STATUS_INTERVAL_S, on_status_tick, &server);
  /* TRANSLATORS: the version, the sockets ("127.0.0.1:22201, unix:/run/x"),
   * the database directory, then the durability mode. */
  g_message (_("memcacheq %s ready on %s; home %s; %s"), MCQ_VERSION,
             mcq_listener_describe (listener), home_path,
             mcq_store_durable (server.store) ? _("durable (STORED after fsync)") : _("no-sync (-N)"));
  daemon_ready (notify_fd, 0);

  g_main_loop_run (d.loop);

  mcq_sd_stopping ();
  g_message (_("shutting down: finishing in-flight requests"));
  g_source_remove (status_source);
  g_clear_pointer (&dbus, mcq_dbus_stop);
  g_clear_pointer (&listener, mcq_listener_free);
  drain (&server);
  mcq_sd_watchdog_stop ();
  mcq_store_close (server.store);
  if (opts.pidfile)
    unlink (opts.pidfile);
  g_main_loop_unref (d.loop);
  g_message (_("stopped cleanly"));
  return 0;
}
