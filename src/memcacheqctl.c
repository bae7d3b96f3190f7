/* memcacheqctl.c — the command-line client of memcacheq's D-Bus interface
 * (data/org.memcacheq.MemcacheQ1.xml): status, queue lists and figures, live
 * rates, DeleteQueue and Checkpoint.  It talks D-Bus only, never memcache. */
#include <gio/gio.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "i18n.h"
#include "switches.h"
#include "textout.h"

#define BUS_NAME "org.memcacheq.MemcacheQ1"
#define DAEMON_PATH "/org/memcacheq/MemcacheQ1"
#define DAEMON_IFACE "org.memcacheq.MemcacheQ1"
#define QUEUE_IFACE "org.memcacheq.MemcacheQ1.Queue"
#define QUEUE_PATH_PREFIX DAEMON_PATH "/queue/"
#define ERROR_NO_SUCH_QUEUE "org.memcacheq.MemcacheQ1.Error.NoSuchQueue"
#define CALL_TIMEOUT_MS 10000

enum {
  EXIT_OK = 0,
  EXIT_FAIL = 1,                /* usage error, or the daemon reported a failure */
  EXIT_UNREACHABLE = 2,         /* no bus, or no memcacheq on it */
  EXIT_NO_QUEUE = 3,
  EXIT_DENIED = 4,              /* the bus policy refused the call */
  EXIT_MAY_STILL_HAPPEN = 5,    /* an action was sent, its answer did not come */
};

typedef struct {
  GDBusConnection *conn;
  const char *bus_label;
  gboolean json;
  int count;
} Ctl;

/* One queue as the daemon publishes it. */
typedef struct {
  char *name;                   /* exact bytes, from the object path */
  char *display_name;           /* the Name property (valid UTF-8) */
  char *path;
  guint64 enqueued, dequeued, depth, bytes, age_us;
} Queue;

static void
queue_free (gpointer p)
{
  Queue *q = p;
  g_free (q->name);
  g_free (q->display_name);
  g_free (q->path);
  g_free (q);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Queue, queue_free)

static int
fail (int code, const char *format, ...) G_GNUC_PRINTF (2, 3);

static int
fail (int code, const char *format, ...)
{
  va_list ap;
  g_autofree char *msg = NULL;

  va_start (ap, format);
  msg = g_strdup_vprintf (format, ap);
  va_end (ap);
  g_printerr ("memcacheqctl: %s\n", msg);
  return code;
}

/* Maps a failed call to a message and an exit status. */
static int
call_failed (Ctl *c, GError *error, const char *queue)
{
  g_autofree char *remote = g_dbus_error_get_remote_error (error);

  if (g_strcmp0 (remote, "org.freedesktop.DBus.Error.ServiceUnknown") == 0 ||
      g_strcmp0 (remote, "org.freedesktop.DBus.Error.NameHasNoOwner") == 0)
    return fail (EXIT_UNREACHABLE, _("memcacheq is not running on the %s bus (nobody owns %s)"),
                 c->bus_label, BUS_NAME);
  if (g_strcmp0 (remote, "org.freedesktop.DBus.Error.NoReply") == 0 ||
      g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ||
      g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CLOSED))
    return fail (EXIT_UNREACHABLE, _("memcacheq on the %s bus does not answer: %s"), c->bus_label,
                 error->message);
  if (g_strcmp0 (remote, ERROR_NO_SUCH_QUEUE) == 0 ||
      (queue != NULL && (g_strcmp0 (remote, "org.freedesktop.DBus.Error.UnknownObject") == 0 ||
                         g_strcmp0 (remote, "org.freedesktop.DBus.Error.UnknownInterface") == 0 ||
                         g_strcmp0 (remote, "org.freedesktop.DBus.Error.UnknownMethod") == 0)))
    return fail (EXIT_NO_QUEUE, _("no such queue: %s"), queue ? queue : "?");
  g_dbus_error_strip_remote_error (error);
  if (g_strcmp0 (remote, "org.freedesktop.DBus.Error.AccessDenied") == 0)
    return fail (EXIT_DENIED, _("permission denied: %s (on the system bus only root may "
                                "delete queues and checkpoint)"), error->message);
  return fail (EXIT_FAIL, "%s", error->message);
}

/* Whether a failed call may have reached the daemon all the same and be
 * carried out later: no answer in time (a stopped or overloaded daemon
 * acts on the request once it runs again), or the connection lost while
 * waiting.  Calls that never left, or were refused, do not count. */
static gboolean
outcome_unknown (GError *error)
{
  g_autofree char *remote = g_dbus_error_get_remote_error (error);

  return g_strcmp0 (remote, "org.freedesktop.DBus.Error.NoReply") == 0 ||
         g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ||
         g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CLOSED);
}

/* s as one word for a shell: as it is when that is safe, else quoted. */
static char *
shell_word (const char *s)
{
  if (*s != '\0' && strspn (s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                             "0123456789_-.,:/=@%+") == strlen (s))
    return g_strdup (s);
  return g_shell_quote (s);
}

/* The memcacheqctl command line that reaches the same daemon, up to and
 * including `command`, for the hints given with EXIT_MAY_STILL_HAPPEN. */
static char *
same_bus_command (Ctl *c, const char *command)
{
  g_autofree char *bus = NULL;

  if (strcmp (c->bus_label, "system") == 0)
    return g_strdup_printf ("memcacheqctl %s", command);
  bus = shell_word (c->bus_label);
  return g_strdup_printf ("memcacheqctl --bus=%s %s", bus, command);
}

static GVariant *
call (Ctl *c, const char *path, const char *iface, const char *method, GVariant *params,
      const char *reply_type, GError **error)
{
  return g_dbus_connection_call_sync (c->conn, BUS_NAME, path, iface, method, params,
                                      reply_type ? G_VARIANT_TYPE (reply_type) : NULL,
                                      G_DBUS_CALL_FLAGS_NO_AUTO_START, CALL_TIMEOUT_MS, NULL,
                                      error);
}

typedef struct {
  GMainLoop *loop;
  GDBusConnection *conn;
  GError *error;
} Connecting;

static void
connected (GObject *source, GAsyncResult *result, gpointer data)
{
  Connecting *k = data;

  k->conn = g_dbus_connection_new_for_address_finish (result, &k->error);
  g_main_loop_quit (k->loop);
}

static gboolean
give_up (gpointer data)
{
  g_cancellable_cancel (data);
  return G_SOURCE_REMOVE;
}

static int
connect_bus (Ctl *c, const char *bus)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *address = NULL;

  if (bus == NULL || strcmp (bus, "system") == 0)
    {
      c->bus_label = "system";
      address = g_dbus_address_get_for_bus_sync (G_BUS_TYPE_SYSTEM, NULL, &error);
    }
  else if (strcmp (bus, "session") == 0)
    {
      c->bus_label = "session";
      address = g_dbus_address_get_for_bus_sync (G_BUS_TYPE_SESSION, NULL, &error);
    }
  else if (strchr (bus, ':') != NULL)
    {
      c->bus_label = bus;
      address = g_strdup (bus);
    }
  else
    return fail (EXIT_FAIL, _("--bus: invalid value “%s”: expected system, session or a "
                              "D-Bus address such as unix:path=/run/dbus/system_bus_socket"), bus);
  if (address == NULL)
    return fail (EXIT_UNREACHABLE, _("cannot find the %s bus: %s"), c->bus_label, error->message);
  /* Asynchronously, with a deadline: a bus that accepts the connection
   * but never answers (a stopped dbus-daemon) held the synchronous call
   * forever, where the help promises exit 2. */
  g_autoptr(GCancellable) cancel = g_cancellable_new ();
  Connecting k = { .loop = g_main_loop_new (NULL, FALSE) };
  guint timer = g_timeout_add (CALL_TIMEOUT_MS, give_up, cancel);
  g_dbus_connection_new_for_address (address,
                                     G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                     G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                     NULL, cancel, connected, &k);
  g_main_loop_run (k.loop);
  g_main_loop_unref (k.loop);
  if (!g_cancellable_is_cancelled (cancel))
    g_source_remove (timer);
  c->conn = k.conn;
  if (c->conn == NULL && g_error_matches (k.error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    {
      g_clear_error (&k.error);
      return fail (EXIT_UNREACHABLE, _("the %s bus does not answer (waited %d s)"), c->bus_label,
                   CALL_TIMEOUT_MS / 1000);
    }
  if (c->conn == NULL)
    {
      int rc = fail (EXIT_UNREACHABLE, _("cannot connect to the %s bus: %s"), c->bus_label,
                     k.error->message);
      g_clear_error (&k.error);
      return rc;
    }
  return EXIT_OK;
}

/* --- formatting ------------------------------------------------------------ */

static char *
format_duration_us (guint64 us)
{
  guint64 s = us / G_USEC_PER_SEC;

  if (us < G_USEC_PER_SEC)
    return g_strdup_printf ("%" G_GUINT64_FORMAT " ms", us / 1000);
  if (s < 60)
    return g_strdup_printf ("%.1f s", (double) us / G_USEC_PER_SEC);
  if (s < 3600)
    return g_strdup_printf ("%" G_GUINT64_FORMAT "m %02" G_GUINT64_FORMAT "s", s / 60, s % 60);
  if (s < 86400)
    return g_strdup_printf ("%" G_GUINT64_FORMAT "h %02" G_GUINT64_FORMAT "m", s / 3600, s / 60 % 60);
  return g_strdup_printf ("%" G_GUINT64_FORMAT "d %02" G_GUINT64_FORMAT "h", s / 86400, s / 3600 % 24);
}

static char *
u64 (guint64 v)
{
  return g_strdup_printf ("%" G_GUINT64_FORMAT, v);
}

/* --- reading the daemon ------------------------------------------------------ */

static guint64
dict_u64 (GVariant *dict, const char *key)
{
  guint64 v = 0;
  g_variant_lookup (dict, key, "t", &v);
  return v;
}

static Queue *
queue_from_props (const char *path, GVariant *props)
{
  Queue *q = g_new0 (Queue, 1);
  g_autofree char *escaped_name = NULL;

  q->path = g_strdup (path);
  if (g_str_has_prefix (path, QUEUE_PATH_PREFIX))
    q->name = (char *) g_dbus_unescape_object_path (path + strlen (QUEUE_PATH_PREFIX));
  if (!g_variant_lookup (props, "Name", "s", &q->display_name))
    q->display_name = g_strdup (q->name ? q->name : "");
  if (q->name == NULL)
    q->name = g_strdup (q->display_name);
  q->enqueued = dict_u64 (props, "Enqueued");
  q->dequeued = dict_u64 (props, "Dequeued");
  q->depth = dict_u64 (props, "Depth");
  q->bytes = dict_u64 (props, "Bytes");
  q->age_us = dict_u64 (props, "OldestMessageAge");
  return q;
}

static gint
compare_queues (gconstpointer a, gconstpointer b)
{
  return strcmp ((*(Queue *const *) a)->name, (*(Queue *const *) b)->name);
}

/* Every queue, sorted by name as "stats queue" sorts them. */
static GPtrArray *
list_queues (Ctl *c, GError **error)
{
  g_autoptr(GVariant) reply = NULL;
  g_autoptr(GVariantIter) objects = NULL;
  GPtrArray *out;
  const char *path;
  GVariant *ifaces;

  reply = call (c, DAEMON_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", NULL,
                "(a{oa{sa{sv}}})", error);
  if (reply == NULL)
    return NULL;
  out = g_ptr_array_new_with_free_func (queue_free);
  g_variant_get (reply, "(a{oa{sa{sv}}})", &objects);
  while (g_variant_iter_next (objects, "{&o@a{sa{sv}}}", &path, &ifaces))
    {
      g_autoptr(GVariant) props = g_variant_lookup_value (ifaces, QUEUE_IFACE, G_VARIANT_TYPE ("a{sv}"));
      if (props != NULL)
        g_ptr_array_add (out, queue_from_props (path, props));
      g_variant_unref (ifaces);
    }
  g_ptr_array_sort (out, compare_queues);
  return out;
}

static char *
queue_path (const char *name)
{
  g_autofree char *escaped = g_dbus_escape_object_path (name);
  return g_strconcat (QUEUE_PATH_PREFIX, escaped, NULL);
}

static void
json_queue (GString *out, const Queue *q)
{
  g_string_append (out, "{\"Name\":");
  mcq_json_append_string (out, q->display_name);
  g_string_append (out, ",\"ObjectPath\":");
  mcq_json_append_string (out, q->path);
  g_string_append_printf (out, ",\"Enqueued\":%" G_GUINT64_FORMAT ",\"Dequeued\":%" G_GUINT64_FORMAT
                          ",\"Depth\":%" G_GUINT64_FORMAT ",\"Bytes\":%" G_GUINT64_FORMAT
                          ",\"OldestMessageAge\":%" G_GUINT64_FORMAT "}",
                          q->enqueued, q->dequeued, q->depth, q->bytes, q->age_us);
}

/* --- commands ---------------------------------------------------------------- */

static int
cmd_status (Ctl *c)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;
  g_autoptr(GVariant) props = NULL;
  const char *version = "", *dir = "";
  guint64 start_us = 0, total = 0, damaged = 0;
  guint32 curr = 0, queues = 0;
  gboolean durable = FALSE;

  reply = call (c, DAEMON_PATH, "org.freedesktop.DBus.Properties", "GetAll",
                g_variant_new ("(s)", DAEMON_IFACE), "(a{sv})", &error);
  if (reply == NULL)
    return call_failed (c, error, NULL);
  props = g_variant_get_child_value (reply, 0);
  g_variant_lookup (props, "Version", "&s", &version);
  g_variant_lookup (props, "StartTime", "t", &start_us);
  g_variant_lookup (props, "CurrentConnections", "u", &curr);
  g_variant_lookup (props, "TotalConnections", "t", &total);
  g_variant_lookup (props, "QueueCount", "u", &queues);
  g_variant_lookup (props, "Durable", "b", &durable);
  g_variant_lookup (props, "StateDirectory", "&s", &dir);
  g_variant_lookup (props, "DamagedMessages", "t", &damaged);

  if (c->json)
    {
      g_autoptr(GString) out = g_string_new ("{\"Version\":");
      mcq_json_append_string (out, version);
      g_string_append_printf (out, ",\"StartTime\":%" G_GUINT64_FORMAT ",\"CurrentConnections\":%u"
                              ",\"TotalConnections\":%" G_GUINT64_FORMAT ",\"QueueCount\":%u"
                              ",\"Durable\":%s,\"DamagedMessages\":%" G_GUINT64_FORMAT
                              ",\"StateDirectory\":",
                              start_us, curr, total, queues, durable ? "true" : "false", damaged);
      mcq_json_append_string (out, dir);
      g_string_append (out, "}");
      g_print ("%s\n", out->str);
    }
  else
    {
      g_autoptr(GDateTime) started = g_date_time_new_from_unix_local ((gint64) (start_us / G_USEC_PER_SEC));
      g_autofree char *when = started ? g_date_time_format (started, "%Y-%m-%d %H:%M:%S %Z") : g_strdup ("?");
      gint64 up = g_get_real_time () - (gint64) start_us;
      g_autofree char *uptime = format_duration_us (up > 0 ? (guint64) up : 0);

      const char *labels[] = {
        _("Version:"), _("Started:"), _("Connections:"), _("Queues:"), _("Durable:"),
        _("State directory:"), _("Damaged messages:"),
      };
      char *values[G_N_ELEMENTS (labels)] = {
        g_strdup (version),
        /* TRANSLATORS: the start time, then how long ago that is ("1h 05m"). */
        g_strdup_printf (_("%s (up %s)"), when, uptime),
        g_strdup_printf (_("%u open, %llu since start"), curr, (unsigned long long) total),
        g_strdup_printf ("%u", queues),
        g_strdup (durable ? _("yes (STORED after fsync)") : _("no (-N/--no-sync)")),
        g_strdup (dir),
        /* TRANSLATORS: messages skipped because their record was damaged. */
        g_strdup_printf (_("%llu since start"), (unsigned long long) damaged),
      };

      mcq_text_print_fields (labels, values, G_N_ELEMENTS (labels));
      for (guint i = 0; i < G_N_ELEMENTS (values); i++)
        g_free (values[i]);
    }
  return EXIT_OK;
}

static int
cmd_list (Ctl *c)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) queues = list_queues (c, &error);

  if (queues == NULL)
    return call_failed (c, error, NULL);
  if (c->json)
    {
      g_autoptr(GString) out = g_string_new ("[");
      for (guint i = 0; i < queues->len; i++)
        {
          if (i > 0)
            g_string_append_c (out, ',');
          json_queue (out, queues->pdata[i]);
        }
      g_string_append (out, "]");
      g_print ("%s\n", out->str);
      return EXIT_OK;
    }
  if (queues->len == 0)
    {
      g_print ("%s\n", _("no queues"));
      return EXIT_OK;
    }
  {
    /* TRANSLATORS: the column headers of "memcacheqctl list"; OLDEST is the
     * age of the oldest message in the queue. */
    const char *header[] = { _("QUEUE"), _("ENQUEUED"), _("DEQUEUED"), _("DEPTH"), _("BYTES"),
                             _("OLDEST"), NULL };
    McqTable t;

    mcq_table_init (&t, header);
    for (guint i = 0; i < queues->len; i++)
      {
        const Queue *q = queues->pdata[i];
        char **row = g_new0 (char *, 7);
        row[0] = mcq_text_printable (q->name);
        row[1] = u64 (q->enqueued);
        row[2] = u64 (q->dequeued);
        row[3] = u64 (q->depth);
        row[4] = u64 (q->bytes);
        row[5] = q->depth > 0 ? format_duration_us (q->age_us) : g_strdup ("-");
        mcq_table_add (&t, row);
      }
    mcq_table_print (&t);
  }
  return EXIT_OK;
}

static int
cmd_stats (Ctl *c, const char *name)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;
  g_autoptr(GVariant) props = NULL;
  g_autofree char *path = queue_path (name);
  g_autoptr(Queue) q = NULL;

  reply = call (c, path, "org.freedesktop.DBus.Properties", "GetAll",
                g_variant_new ("(s)", QUEUE_IFACE), "(a{sv})", &error);
  if (reply == NULL)
    {
      g_autofree char *shown = mcq_text_printable (name);
      return call_failed (c, error, shown);
    }
  props = g_variant_get_child_value (reply, 0);
  q = queue_from_props (path, props);
  if (c->json)
    {
      g_autoptr(GString) out = g_string_new (NULL);
      json_queue (out, q);
      g_print ("%s\n", out->str);
    }
  else
    {
      g_autofree char *shown = mcq_text_printable (q->name);
      g_autofree char *age = q->depth > 0 ? format_duration_us (q->age_us) : g_strdup ("-");
      const char *labels[] = {
        _("Queue:"), _("Object path:"), _("Enqueued:"), _("Dequeued:"), _("Depth:"), _("Bytes:"),
        _("Oldest message age:"),
      };
      char *values[G_N_ELEMENTS (labels)] = {
        g_strdup (shown), g_strdup (q->path), u64 (q->enqueued), u64 (q->dequeued),
        u64 (q->depth), u64 (q->bytes), g_strdup (age),
      };

      mcq_text_print_fields (labels, values, G_N_ELEMENTS (labels));
      for (guint i = 0; i < G_N_ELEMENTS (values); i++)
        g_free (values[i]);
    }
  return EXIT_OK;
}

static int
cmd_delete (Ctl *c, const char *name)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = NULL;

  if (!g_utf8_validate (name, -1, NULL))
    return fail (EXIT_FAIL, _("the queue name is not valid UTF-8, which D-Bus cannot carry; "
                              "delete it with the memcache command \"delete\""));
  reply = call (c, DAEMON_PATH, DAEMON_IFACE, "DeleteQueue", g_variant_new ("(s)", name), "()", &error);
  if (reply == NULL && outcome_unknown (error))
    {
      /* Not "failed": the daemon may delete the queue when it runs again,
       * so the operator is told how to find out. */
      g_autofree char *word = shell_word (name);
      g_autofree char *stats = g_strdup_printf ("stats %s", word);
      g_autofree char *check = same_bus_command (c, stats);
      g_dbus_error_strip_remote_error (error);
      return fail (EXIT_MAY_STILL_HAPPEN,
                   _("memcacheq on the %s bus did not answer (%s), but the delete was sent: "
                     "the queue %s may still be deleted when the daemon runs again. To see "
                     "whether it is still there: %s (exit status 3: it is gone)"),
                   c->bus_label, error->message, name, check);
    }
  if (reply == NULL)
    return call_failed (c, error, name);
  if (c->json)
    {
      g_autoptr(GString) out = g_string_new ("{\"Name\":");
      mcq_json_append_string (out, name);
      g_string_append (out, ",\"Deleted\":true}");
      g_print ("%s\n", out->str);
    }
  else
    g_print (_("deleted queue %s\n"), name);
  return EXIT_OK;
}

static int
cmd_checkpoint (Ctl *c)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = call (c, DAEMON_PATH, DAEMON_IFACE, "Checkpoint", NULL, "()", &error);

  if (reply == NULL && outcome_unknown (error))
    {
      g_dbus_error_strip_remote_error (error);
      return fail (EXIT_MAY_STILL_HAPPEN,
                   _("memcacheq on the %s bus did not answer (%s), but the checkpoint request "
                     "was sent: the checkpoint may still run when the daemon runs again"),
                   c->bus_label, error->message);
    }
  if (reply == NULL)
    return call_failed (c, error, NULL);
  if (c->json)
    g_print ("{\"Checkpoint\":true}\n");
  else
    g_print ("%s\n", _("checkpoint done"));
  return EXIT_OK;
}

/* Moves a sample's queues into before (emptied first), by name. */
static void
keep_sample (GHashTable *before, GPtrArray *sample)
{
  g_hash_table_remove_all (before);
  while (sample->len > 0)
    {
      Queue *q = g_ptr_array_steal_index (sample, 0);
      g_hash_table_replace (before, q->name, q);
    }
}

/* A counter's rate per second over dt; a queue new since the last sample
 * (or a counter that went back) counts from zero. */
static double
rate_per_s (guint64 now, guint64 then, double dt)
{
  return (double) (now - (then <= now ? then : 0)) / dt;
}

/* watch --json: one line per refresh. */
static void
watch_print_json (GHashTable *before, GPtrArray *now, const char *stamp, double dt)
{
  g_autoptr(GString) out = g_string_new ("{\"Time\":");

  mcq_json_append_string (out, stamp);
  g_string_append_printf (out, ",\"Interval\":%.3f,\"Queues\":[", dt);
  for (guint i = 0; i < now->len; i++)
    {
      const Queue *q = now->pdata[i];
      const Queue *b = g_hash_table_lookup (before, q->name);
      if (i > 0)
        g_string_append_c (out, ',');
      g_string_append (out, "{\"Name\":");
      mcq_json_append_string (out, q->display_name);
      g_string_append_printf (out, ",\"Depth\":%" G_GUINT64_FORMAT
                              ",\"EnqueueRate\":%.1f,\"DequeueRate\":%.1f}",
                              q->depth, rate_per_s (q->enqueued, b ? b->enqueued : 0, dt),
                              rate_per_s (q->dequeued, b ? b->dequeued : 0, dt));
    }
  g_string_append (out, "]}");
  g_print ("%s\n", out->str);
}

/* watch: a table per refresh, on a cleared screen when stdout is a tty. */
static void
watch_print_table (Ctl *c, GHashTable *before, GPtrArray *now, const char *stamp, double dt,
                   gboolean tty, int shown)
{
  /* TRANSLATORS: the column headers of "memcacheqctl watch": messages
   * enqueued and dequeued per second. */
  const char *header[] = { _("QUEUE"), _("DEPTH"), _("ENQ/S"), _("DEQ/S"), NULL };
  g_autofree char *summary = NULL;
  McqTable t;

  if (tty)
    g_print ("\033[H\033[2J");
  else if (shown > 0)
    g_print ("\n");
  summary = g_strdup_printf (ngettext ("%u queue, rates over the last %.1f s",
                                       "%u queues, rates over the last %.1f s", now->len),
                             now->len, dt);
  g_print ("%s  %s%s\n", stamp, summary, c->count <= 0 ? _(" (Ctrl-C to stop)") : "");
  mcq_table_init (&t, header);
  for (guint i = 0; i < now->len; i++)
    {
      const Queue *q = now->pdata[i];
      const Queue *b = g_hash_table_lookup (before, q->name);
      char **row = g_new0 (char *, 5);
      row[0] = mcq_text_printable (q->name);
      row[1] = u64 (q->depth);
      row[2] = g_strdup_printf ("%.1f", rate_per_s (q->enqueued, b ? b->enqueued : 0, dt));
      row[3] = g_strdup_printf ("%.1f", rate_per_s (q->dequeued, b ? b->dequeued : 0, dt));
      mcq_table_add (&t, row);
    }
  mcq_table_print (&t);
}

/* Live rates: a GetManagedObjects a second, differences over the time
 * between the two samples. */
static int
cmd_watch (Ctl *c)
{
  g_autoptr(GHashTable) before = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, queue_free);
  g_autoptr(GPtrArray) first = NULL;
  g_autoptr(GError) error = NULL;
  gboolean tty = !c->json && isatty (STDOUT_FILENO);
  gint64 t_before = g_get_monotonic_time (), next = t_before;

  first = list_queues (c, &error);
  if (first == NULL)
    return call_failed (c, error, NULL);
  keep_sample (before, first);

  for (int shown = 0; c->count <= 0 || shown < c->count; shown++)
    {
      g_autoptr(GPtrArray) now = NULL;
      g_autoptr(GDateTime) clock = NULL;
      g_autofree char *stamp = NULL;
      gint64 t_now;
      double dt;

      next += G_USEC_PER_SEC;
      while ((t_now = g_get_monotonic_time ()) < next)
        g_usleep ((gulong) (next - t_now));
      now = list_queues (c, &error);
      if (now == NULL)
        return call_failed (c, error, NULL);
      t_now = g_get_monotonic_time ();
      dt = (double) (t_now - t_before) / G_USEC_PER_SEC;
      clock = g_date_time_new_now_local ();
      stamp = g_date_time_format (clock, "%Y-%m-%d %H:%M:%S");

      if (c->json)
        watch_print_json (before, now, stamp, dt);
      else
        watch_print_table (c, before, now, stamp, dt, tty, shown);
      fflush (stdout);
      keep_sample (before, now);
      t_before = t_now;
    }
  return EXIT_OK;
}

/* The options into c, *bus and *version; FALSE with error on bad usage.
 * argv keeps the command and its argument. */
static gboolean
parse_command_line (Ctl *c, char **bus, gboolean *version, int *argc, char ***argv,
                    GError **error)
{
  g_autoptr(GOptionContext) ctx = NULL;
  const GOptionEntry entries[] = {
    { "bus", 'b', 0, G_OPTION_ARG_STRING, bus,
      N_("the bus memcacheq is on: system (the default; $DBUS_SYSTEM_BUS_ADDRESS is honoured), "
         "session, or a D-Bus address such as unix:path=/run/dbus/system_bus_socket"), N_("BUS") },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &c->json,
      N_("print JSON instead of tables (watch: one line per refresh)"), NULL },
    { "count", 'n', 0, G_OPTION_ARG_INT, &c->count,
      N_("watch: stop after N refreshes (default: run until interrupted)"), N_("N") },
    { "version", 'V', 0, G_OPTION_ARG_NONE, version, N_("print the version and exit"), NULL },
    { NULL }
  };

  /* TRANSLATORS: the arguments after the options, in the usage line. */
  ctx = g_option_context_new (N_("COMMAND [QUEUE]"));
  g_option_context_set_translation_domain (ctx, GETTEXT_PACKAGE);
  g_option_context_add_main_entries (ctx, entries, GETTEXT_PACKAGE);
  g_option_context_set_summary (ctx,
      /* TRANSLATORS: the command names (status, list, ...) are typed as they are. */
      N_("Looks at and manages a running memcacheq through D-Bus (org.memcacheq.MemcacheQ1).\n"
         "\n"
         "Commands:\n"
         "  status          the daemon: version, start time, connections, queues, durability, state directory\n"
         "  list            every queue: enqueued, dequeued, depth, bytes, age of the oldest message\n"
         "  stats QUEUE     one queue's figures\n"
         "  delete QUEUE    delete a queue and its messages (root only on the system bus)\n"
         "  checkpoint      write a Berkeley DB checkpoint now (root only on the system bus)\n"
         "  watch           live enqueue and dequeue rates per queue, refreshed every second"));
  g_option_context_set_description (ctx,
      N_("JSON output uses the D-Bus property names and units: StartTime is in microseconds\n"
         "since the Unix epoch, OldestMessageAge in microseconds.\n"
         "\n"
         "Exit status:\n"
         "  0  success\n"
         "  1  usage error, or the daemon reported a failure\n"
         "  2  the daemon is not reachable (no bus, memcacheq not on it, or no answer)\n"
         "  3  no such queue\n"
         "  4  permission denied by the bus policy\n"
         "  5  delete or checkpoint sent but not answered in time: it may still be carried out"));
  return mcq_option_check_switches (entries, *argc, *argv, error) &&
         g_option_context_parse (ctx, argc, argv, error);
}

/* The command's name and argument count; an exit status when wrong. */
static int
check_command (int argc, char **argv)
{
  const char *cmd;

  if (argc < 2)
    return fail (EXIT_FAIL, _("no command given (see --help)"));
  cmd = argv[1];
  if (strcmp (cmd, "stats") == 0 || strcmp (cmd, "delete") == 0)
    {
      if (argc != 3)
        return fail (EXIT_FAIL, _("%s needs one queue name (see --help)"), cmd);
    }
  else if (strcmp (cmd, "status") == 0 || strcmp (cmd, "list") == 0 ||
           strcmp (cmd, "checkpoint") == 0 || strcmp (cmd, "watch") == 0)
    {
      if (argc != 2)
        return fail (EXIT_FAIL, _("%s takes no arguments (see --help)"), cmd);
    }
  else
    return fail (EXIT_FAIL, _("unknown command “%s” (see --help)"), cmd);
  return EXIT_OK;
}

/* Runs a command check_command accepted. */
static int
run_command (Ctl *c, const char *cmd, char **args)
{
  if (strcmp (cmd, "status") == 0)
    return cmd_status (c);
  if (strcmp (cmd, "list") == 0)
    return cmd_list (c);
  if (strcmp (cmd, "stats") == 0)
    return cmd_stats (c, args[0]);
  if (strcmp (cmd, "delete") == 0)
    return cmd_delete (c, args[0]);
  if (strcmp (cmd, "checkpoint") == 0)
    return cmd_checkpoint (c);
  return cmd_watch (c);
}

int
main (int argc, char **argv)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *bus = NULL;
  gboolean version = FALSE;
  Ctl c = { 0 };
  int rc;

  mcq_i18n_init ();
  if (!parse_command_line (&c, &bus, &version, &argc, &argv, &error))
    return fail (EXIT_FAIL, _("%s (see --help)"), error->message);
  if (version)
    {
      g_print ("memcacheqctl %s\n", MCQ_VERSION);
      return EXIT_OK;
    }
  rc = check_command (argc, argv);
  if (rc != EXIT_OK)
    return rc;
  if (c.count < 0)
    return fail (EXIT_FAIL, _("--count: must not be negative"));

  rc = connect_bus (&c, bus);
  if (rc != EXIT_OK)
    return rc;
  rc = run_command (&c, argv[1], argv + 2);
  g_clear_object (&c.conn);
  return rc;
}
