/* log.h — where log lines go: the journal under systemd, stderr otherwise,
 * filtered by the -v level (0: messages and warnings, 1: info, 2: debug). */
#pragma once

#include <glib.h>

/* Log lines meant for operators are translated: g_warning (_("...")). */
#include "i18n.h"

void mcq_log_setup (int verbosity);
void mcq_log_set_verbosity (int verbosity);
