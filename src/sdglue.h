/* sdglue.h — the daemon's side of the systemd service protocol:
 * READY/STATUS/STOPPING notifications and watchdog keep-alives. */
#pragma once

#include <glib.h>

void mcq_sd_ready (const char *status);
void mcq_sd_status (const char *status);
void mcq_sd_stopping (void);

/* Starts WATCHDOG=1 pings at half of $WATCHDOG_USEC on the default main
 * context, if the service manager asked for them. */
void mcq_sd_watchdog_start (void);
void mcq_sd_watchdog_stop (void);
