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

static GLogWriterOutput
writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  if (!wanted (level))
    return G_LOG_WRITER_HANDLED;
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
