/* options.c — command-line options of memcacheq and their validation.
 * Every option of memcacheq 0.2.1 is accepted; each is either implemented
 * or named in a warning (or an error) saying why it does nothing here. */
#include "options.h"

#include <string.h>

#include "config.h"
#include "i18n.h"
#include "protocol.h"
#include "switches.h"

#define DEFAULT_PORT 22201
#define DEFAULT_MAX_BODY (1024 * 1024)
#define MAX_MAX_BODY (1024 * 1024 * 1024)
/* Log files are four times the log buffer (at least 2 MiB), each new one
 * is zero-filled on the main thread in durable mode, and three of them are
 * kept free on disk (see store-room.c): 16 MiB of buffer already means 64 MiB
 * files and a 192 MiB reserve, and a bigger buffer buys nothing, since
 * every batch writes its commits out at once. */
#define MAX_LOG_BUFFER_KB (16 * 1024)

void
mcq_options_init (McqOptions *o)
{
  memset (o, 0, sizeof *o);
  o->port = DEFAULT_PORT;
  o->unix_mask = 0700;
  o->max_conns = 1024;
  o->client_timeout_s = 60;
  o->threads = 4;
  o->cache_mb = 64;
  o->page_size = 4096;
  o->log_buffer_kb = 32;
  o->checkpoint_s = 300;
  o->trickle_s = 30;
  o->trickle_percent = 60;
  o->stats_dump_s = 30;
  o->extent_pages = 16384;
  o->max_body = DEFAULT_MAX_BODY;
  o->deadlock_ms = 100;
  o->given = g_ptr_array_new_with_free_func (g_free);
}

void
mcq_options_clear (McqOptions *o)
{
  g_free (o->listen_addr);
  g_free (o->unix_path);
  g_free (o->user);
  g_free (o->pidfile);
  g_free (o->home);
  g_free (o->dbus);
  g_free (o->auth_file);
  g_clear_pointer (&o->given, g_ptr_array_unref);
}

gboolean
mcq_option_parse_uint (const char *name, const char *value, guint64 min, guint64 max,
                       guint64 *out, GError **error)
{
  guint64 v;

  if (!mcq_parse_u64 (value, strlen (value), &v) || v < min || v > max)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   _("%s: invalid value “%s”: expected a whole number from %llu to %llu"),
                   name, value, (unsigned long long) min, (unsigned long long) max);
      return FALSE;
    }
  *out = v;
  return TRUE;
}

/* One table drives both GOption and the numeric checks. */
typedef struct {
  char short_name;
  const char *long_name;
  gsize offset;                 /* into McqOptions */
  int kind;                     /* 'u' guint, 'U' guint64, 'o' octal guint */
  guint64 min, max;
  const char *arg;
  const char *help;
} NumericOption;

#define OFF(field) G_STRUCT_OFFSET (McqOptions, field)

static const NumericOption numeric_options[] = {
  { 'p', "port", OFF (port), 'u', 0, 65535, N_("PORT"), N_("TCP port to listen on (default 22201; 0: none)") },
  { 'U', "udp-port", OFF (udp_port), 'u', 0, 65535, N_("PORT"), N_("UDP port: only 0 is accepted, UDP is not offered") },
  { 'a', "unix-mask", OFF (unix_mask), 'o', 0, 0777, N_("MODE"), N_("octal permissions of the unix socket (default 0700)") },
  { 'c', "max-conns", OFF (max_conns), 'u', 1, 1048576, N_("N"), N_("most simultaneous connections (default 1024)") },
  { 0, "client-timeout", OFF (client_timeout_s), 'u', 1, 86400, N_("SECONDS"), N_("cut off a client that leaves a request unfinished, or reads none of the replies waiting for it, for this long (default 60)") },
  { 't', "threads", OFF (threads), 'u', 1, 1024, N_("N"), N_("accepted for compatibility; one thread serves every connection and runs every transaction") },
  { 'm', "cache-size", OFF (cache_mb), 'U', 1, 1024 * 1024, N_("MB"), N_("Berkeley DB cache size in MiB (default 64)") },
  { 'A', "page-size", OFF (page_size), 'u', 512, 65536, N_("BYTES"), N_("database page size, a power of two from 512 to 65536 (default 4096)") },
  { 'L', "log-buffer", OFF (log_buffer_kb), 'u', 1, MAX_LOG_BUFFER_KB, N_("KB"), N_("transaction log buffer in KiB, at most 16384 (default 32)") },
  { 'C', "checkpoint-interval", OFF (checkpoint_s), 'u', 0, 86400 * 7, N_("SECONDS"), N_("seconds between timed checkpoints (default 300; 0: none); one also runs every 16 MiB of log and at shutdown") },
  { 'T', "trickle-interval", OFF (trickle_s), 'u', 0, 86400, N_("SECONDS"), N_("seconds between cache trickle writes (default 30; 0: never)") },
  { 'e', "trickle-percent", OFF (trickle_percent), 'u', 1, 100, N_("PERCENT"), N_("percent of the cache trickle keeps clean (default 60)") },
  { 'S', "stats-interval", OFF (stats_dump_s), 'u', 0, 86400, N_("SECONDS"), N_("accepted for compatibility; counters are saved in every transaction") },
  { 'E', "extent-pages", OFF (extent_pages), 'u', 1, G_MAXUINT32, N_("PAGES"), N_("accepted for compatibility; applies to DB_QUEUE, which memcacheq does not use") },
  { 'B', "max-body", OFF (max_body), 'U', 1, MAX_MAX_BODY, N_("BYTES"), N_("largest message body in bytes (default 1048576)") },
  { 'D', "deadlock-interval", OFF (deadlock_ms), 'u', 1, 3600000, N_("MS"), N_("accepted for compatibility; there are no lock waits to break") },
};

static gboolean
on_numeric (const char *option_name, const char *value, gpointer data, GError **error)
{
  McqOptions *o = data;
  const NumericOption *def = NULL;
  guint64 v;

  for (guint i = 0; i < G_N_ELEMENTS (numeric_options); i++)
    {
      const NumericOption *n = &numeric_options[i];
      if ((option_name[1] != '-' && n->short_name != 0 && option_name[1] == n->short_name &&
           option_name[2] == '\0') ||
          (option_name[1] == '-' && strcmp (option_name + 2, n->long_name) == 0))
        def = n;
    }
  g_return_val_if_fail (def != NULL, FALSE);

  g_autofree char *name = def->short_name != 0 ? g_strdup_printf ("-%c/--%s", def->short_name, def->long_name)
                                               : g_strdup_printf ("--%s", def->long_name);
  if (def->kind == 'o')
    {
      char *end = NULL;
      guint64 m = g_ascii_strtoull (value, &end, 8);
      if (*value == '\0' || *end != '\0' || m > def->max || strspn (value, "01234567") != strlen (value))
        {
          g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                       _("%s: invalid value “%s”: expected an octal mode such as 0700"), name, value);
          return FALSE;
        }
      v = m;
    }
  else if (!mcq_option_parse_uint (name, value, def->min, def->max, &v, error))
    return FALSE;

  if (def->kind == 'U')
    *(guint64 *) G_STRUCT_MEMBER_P (o, def->offset) = v;
  else
    *(guint *) G_STRUCT_MEMBER_P (o, def->offset) = (guint) v;
  if (def->short_name == 'p')
    o->port_given = TRUE;
  if (def->short_name != 0)
    g_ptr_array_add (o->given, g_strdup_printf ("%c", def->short_name));
  return TRUE;
}

static gboolean
on_verbose (const char *option_name, const char *value, gpointer data, GError **error)
{
  McqOptions *o = data;
  o->verbosity++;
  return TRUE;
}

gboolean
mcq_options_parse (McqOptions *o, int *argc, char ***argv, GError **error)
{
  g_autoptr(GOptionContext) ctx = g_option_context_new (NULL);
  GOptionGroup *group;
  GArray *entries = g_array_new (TRUE, TRUE, sizeof (GOptionEntry));
  const GOptionEntry fixed[] = {
    { "listen", 'l', 0, G_OPTION_ARG_STRING, &o->listen_addr, N_("address to listen on (default 127.0.0.1)"), N_("ADDR") },
    { "unix-socket", 's', 0, G_OPTION_ARG_FILENAME, &o->unix_path, N_("listen on this unix stream socket instead of TCP"), N_("PATH") },
    { "home", 'H', 0, G_OPTION_ARG_FILENAME, &o->home, N_("database home directory (default $STATE_DIRECTORY or $XDG_STATE_HOME/memcacheq)"), N_("DIR") },
    { "no-sync", 'N', 0, G_OPTION_ARG_NONE, &o->no_sync, N_("do not sync the log on commit: faster, but a crash may lose acknowledged messages"), NULL },
    { "auto-remove-logs", 'R', 0, G_OPTION_ARG_NONE, &o->log_auto_remove, N_("accepted for compatibility; log files are always removed once recovery no longer needs them"), NULL },
    { "daemon", 'd', 0, G_OPTION_ARG_NONE, &o->daemonize, N_("run in the background once ready"), NULL },
    { "enable-coredumps", 'r', 0, G_OPTION_ARG_NONE, &o->core_unlimited, N_("raise the core file size limit to the maximum"), NULL },
    { "user", 'u', 0, G_OPTION_ARG_STRING, &o->user, N_("switch to this user when started as root"), N_("USER") },
    { "pidfile", 'P', 0, G_OPTION_ARG_FILENAME, &o->pidfile, N_("write the process id to this file"), N_("FILE") },
    { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, on_verbose, N_("more log output (-vv: debug)"), NULL },
    { "license", 'i', 0, G_OPTION_ARG_NONE, &o->show_license, N_("print the license and exit"), NULL },
    { "version", 'V', 0, G_OPTION_ARG_NONE, &o->show_version, N_("print the version and exit"), NULL },
    { "dbus", 0, 0, G_OPTION_ARG_STRING, &o->dbus, N_("publish queue statistics on this D-Bus bus: system (default), session or none"), N_("BUS") },
    { "auth-file", 'Y', 0, G_OPTION_ARG_FILENAME, &o->auth_file, N_("clients must first authenticate as a user:password line of this file (memcached's ASCII authentication)"), N_("FILE") },
    { "no-cpu-placement", 0, 0, G_OPTION_ARG_NONE, &o->no_cpu_placement, N_("let the fsync thread run on any allowed CPU (durable mode otherwise binds it to the CPUs that take the home disk's interrupts)"), NULL },
  };

  g_array_append_vals (entries, fixed, G_N_ELEMENTS (fixed));
  for (guint i = 0; i < G_N_ELEMENTS (numeric_options); i++)
    {
      const NumericOption *n = &numeric_options[i];
      GOptionEntry e = { n->long_name, n->short_name, 0, G_OPTION_ARG_CALLBACK,
                         (gpointer) on_numeric, n->help, n->arg };
      g_array_append_val (entries, e);
    }

  group = g_option_group_new ("memcacheq", N_("memcacheq options"), N_("memcacheq options"), o, NULL);
  g_option_group_set_translation_domain (group, GETTEXT_PACKAGE);
  g_option_group_add_entries (group, (GOptionEntry *) entries->data);
  g_option_context_set_main_group (ctx, group);
  /* The context translates the summary and the description itself. */
  g_option_context_set_translation_domain (ctx, GETTEXT_PACKAGE);
  g_option_context_set_summary (ctx,
      N_("A persistent message queue speaking the memcache text protocol.\n"
         "“set QUEUE 0 0 LEN” appends a message, “get QUEUE” takes the oldest one."));
  g_option_context_set_description (ctx,
      N_("Messages are kept in a transactional Berkeley DB environment; by default\n"
         "STORED is sent only once the message is on disk.  Report bugs to the memcacheq project."));

  gboolean ok = mcq_option_check_switches ((const GOptionEntry *) entries->data, *argc, *argv, error) &&
                g_option_context_parse (ctx, argc, argv, error);
  g_array_unref (entries);
  if (ok && *argc > 1)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                   _("unexpected argument “%s” (see --help)"), (*argv)[1]);
      return FALSE;
    }
  return ok;
}

static gboolean
given (const McqOptions *o, char c)
{
  for (guint i = 0; i < o->given->len; i++)
    if (((const char *) o->given->pdata[i])[0] == c)
      return TRUE;
  return FALSE;
}

gboolean
mcq_options_check (const McqOptions *o, GError **error)
{
  if (o->udp_port != 0)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   _("-U/--udp-port: UDP is not supported by memcacheq (a queue needs "
                     "reliable delivery); use TCP or a unix socket"));
      return FALSE;
    }
  if ((o->page_size & (o->page_size - 1)) != 0)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   _("-A/--page-size: %u is not a power of two"), o->page_size);
      return FALSE;
    }
  if (o->home != NULL && o->home[0] == '\0')
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, _("-H/--home: empty path"));
      return FALSE;
    }
  if (o->unix_path != NULL && o->unix_path[0] == '\0')
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                           _("-s/--unix-socket: empty path"));
      return FALSE;
    }
  if (o->auth_file != NULL && o->auth_file[0] == '\0')
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, _("-Y/--auth-file: empty path"));
      return FALSE;
    }
  if (o->dbus != NULL && g_strcmp0 (o->dbus, "system") != 0 &&
      g_strcmp0 (o->dbus, "session") != 0 && g_strcmp0 (o->dbus, "none") != 0)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   _("--dbus: invalid value “%s”: expected system, session or none"), o->dbus);
      return FALSE;
    }
  return TRUE;
}

McqDbusChoice
mcq_options_dbus (const McqOptions *o)
{
  if (g_strcmp0 (o->dbus, "session") == 0)
    return MCQ_DBUS_SESSION;
  if (g_strcmp0 (o->dbus, "none") == 0)
    return MCQ_DBUS_NONE;
  return MCQ_DBUS_SYSTEM;
}

GPtrArray *
mcq_options_warnings (const McqOptions *o)
{
  GPtrArray *w = g_ptr_array_new_with_free_func (g_free);

  if (given (o, 't'))
    g_ptr_array_add (w, g_strdup (_("-t/--threads is ignored: one thread serves every connection "
                                    "and runs every transaction; two helpers sync the log and checkpoint")));
  if (given (o, 'S'))
    g_ptr_array_add (w, g_strdup (_("-S/--stats-interval is ignored: queue counters are saved in "
                                    "the same transaction as every message")));
  if (given (o, 'E'))
    g_ptr_array_add (w, g_strdup (_("-E/--extent-pages is ignored: it applies to DB_QUEUE "
                                    "databases, which memcacheq does not use")));
  if (given (o, 'D'))
    g_ptr_array_add (w, g_strdup (_("-D/--deadlock-interval is ignored: one thread runs every "
                                    "transaction, so none ever waits for a lock")));
  if (o->log_auto_remove)
    g_ptr_array_add (w, g_strdup (_("-R/--auto-remove-logs is always on: log files that recovery "
                                    "no longer needs are removed after every checkpoint")));
  return w;
}

char *
mcq_options_home (const McqOptions *o)
{
  const char *state;

  if (o->home != NULL)
    return g_strdup (o->home);
  state = g_getenv ("STATE_DIRECTORY");
  if (state != NULL && state[0] != '\0')
    {
      /* systemd lists several directories separated by ':'; ours is first. */
      const char *colon = strchr (state, ':');
      return colon ? g_strndup (state, (gsize) (colon - state)) : g_strdup (state);
    }
  /* What g_get_user_state_dir () gives, which needs GLib 2.72: the
   * XDG base directory spec ignores a relative XDG_STATE_HOME. */
  state = g_getenv ("XDG_STATE_HOME");
  if (state != NULL && g_path_is_absolute (state))
    return g_build_filename (state, "memcacheq", NULL);
  return g_build_filename (g_get_home_dir (), ".local", "state", "memcacheq", NULL);
}
