/* sdglue.c — sd_notify wrappers and the watchdog timer.
 * Each function is a no-op when not started by systemd (no NOTIFY_SOCKET). */
#include "sdglue.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "i18n.h"

static guint watchdog_source;

void
mcq_sd_ready (const char *status)
{
  sd_notifyf (0, "READY=1\nSTATUS=%s\nMAINPID=%lu", status, (unsigned long) getpid ());
}

void
mcq_sd_status (const char *status)
{
  sd_notifyf (0, "STATUS=%s", status);
}

void
mcq_sd_stopping (void)
{
  sd_notifyf (0, "STOPPING=1\nSTATUS=%s", _("Shutting down"));
}

/* The ping runs on the main loop on purpose: if the loop stalls, the pings
 * stop and systemd restarts us, which is the point of the watchdog. */
static gboolean
watchdog_ping (gpointer data)
{
  sd_notify (0, "WATCHDOG=1");
  return G_SOURCE_CONTINUE;
}

void
mcq_sd_watchdog_start (void)
{
  uint64_t usec = 0;

  if (sd_watchdog_enabled (0, &usec) <= 0 || usec == 0)
    return;
  /* Half the timeout, in ms, clamped to what a GLib timeout takes: a
   * WatchdogSec= of 100 days or more had wrapped to 0 and pinged every ms. */
  guint ms = (guint) CLAMP (usec / 2 / 1000, (uint64_t) 1, (uint64_t) G_MAXUINT);
  watchdog_ping (NULL);
  watchdog_source = g_timeout_add (ms, watchdog_ping, NULL);
  g_info (_("watchdog enabled: pinging every %u ms"), ms);
}

void
mcq_sd_watchdog_stop (void)
{
  g_clear_handle_id (&watchdog_source, g_source_remove);
}
