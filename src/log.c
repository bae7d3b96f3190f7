/* log.c — memcacheq's GLib structured log writer.
 * Sends records to journald when stderr is connected to it (as systemd
 * sets up services), to stderr otherwise, dropping what -v did not ask for. */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int verbosity_level;   /* atomic */
static gboolean to_journal;

static gboolean
wanted (GLogLevelFlags level)
{
  int v = g_atomic_int_get (&verbosity_level);

  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE))
    return TRUE;
  if (level & G_LOG_LEVEL_INFO)
    return v >= 1;
  return v >= 2;
}

static const char *
level_prefix (GLogLevelFlags level)
{
  /* TRANSLATORS: the level prefixes of the daemon's log lines on stderr,
   * "memcacheq: warning: ...". */
  const char *error = _("error: ");

  if (level & G_LOG_LEVEL_ERROR)
    return error;
  if (level & G_LOG_LEVEL_CRITICAL)
    return _("critical: ");
  if (level & G_LOG_LEVEL_WARNING)
    return _("warning: ");
  if (level & G_LOG_LEVEL_INFO)
    return _("info: ");
  if (level & G_LOG_LEVEL_DEBUG)
    return _("debug: ");
  return "";
}

/* Warnings are rate-limited: a failing disk makes every request warn, and
 * a review run on a full disk wrote millions of lines.  At most
 * WARN_BURST warnings per WARN_WINDOW_S are logged; the count of the ones
 * dropped is logged with the first warning of the next window. */
#define WARN_BURST 50
#define WARN_WINDOW_S 10

static GMutex warn_lock;
static gint64 warn_window_start;
static guint warn_count, warn_dropped;

/* Whether this warning may be logged; *dropped is set to the warnings
 * dropped in the window that just ended, to be reported. */
static gboolean
warning_allowed (guint *dropped)
{
  gint64 now = g_get_monotonic_time ();
  gboolean ok;

  g_mutex_lock (&warn_lock);
  *dropped = 0;
  if (now - warn_window_start >= WARN_WINDOW_S * G_USEC_PER_SEC)
    {
      *dropped = warn_dropped;
      warn_dropped = 0;
      warn_count = 0;
      warn_window_start = now;
    }
  ok = ++warn_count <= WARN_BURST;
  if (!ok)
    warn_dropped++;
  g_mutex_unlock (&warn_lock);
  return ok;
}

static GLogWriterOutput
emit (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  if (to_journal)
    {
      /* journalctl -t memcacheq needs SYSLOG_IDENTIFIER, which GLib does
       * not add on its own. */
      GLogField *all = g_newa (GLogField, n_fields + 1);
      memcpy (all, fields, n_fields * sizeof (GLogField));
      all[n_fields].key = "SYSLOG_IDENTIFIER";
      all[n_fields].value = "memcacheq";
      all[n_fields].length = -1;
      if (g_log_writer_journald (level, all, n_fields + 1, user_data) == G_LOG_WRITER_HANDLED)
        return G_LOG_WRITER_HANDLED;
    }
  /* GLib's own stream writer sends info and debug to stdout; a daemon's
   * log belongs on stderr whatever its level, one plain line per record. */
  const char *message = NULL;
  for (gsize i = 0; i < n_fields; i++)
    if (g_strcmp0 (fields[i].key, "MESSAGE") == 0)
      message = fields[i].value;
  fprintf (stderr, "memcacheq: %s%s\n", level_prefix (level), message ? message : "");
  fflush (stderr);
  return G_LOG_WRITER_HANDLED;
}

static GLogWriterOutput
writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  guint dropped = 0;

  if (!wanted (level))
    return G_LOG_WRITER_HANDLED;
  if ((level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL)) && !warning_allowed (&dropped))
    return G_LOG_WRITER_HANDLED;
  if (dropped > 0)
    {
      /* Same fields as this record (priority, domain), another message. */
      g_autofree char *text = g_strdup_printf (_("%u more warnings in the previous %d s were not logged"),
                                               dropped, WARN_WINDOW_S);
      GLogField *copy = g_newa (GLogField, n_fields);
      memcpy (copy, fields, n_fields * sizeof (GLogField));
      for (gsize i = 0; i < n_fields; i++)
        if (g_strcmp0 (copy[i].key, "MESSAGE") == 0)
          {
            copy[i].value = text;
            copy[i].length = -1;
          }
      emit (level, copy, n_fields, user_data);
    }
  return emit (level, fields, n_fields, user_data);
}

void
mcq_log_set_verbosity (int verbosity)
{
  g_atomic_int_set (&verbosity_level, verbosity);
}

void
mcq_log_setup (int verbosity)
{
  mcq_log_set_verbosity (verbosity);
  to_journal = g_log_writer_is_journald (fileno (stderr));
  g_log_set_writer_func (writer, NULL, NULL);
}
