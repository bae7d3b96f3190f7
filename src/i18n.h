/* i18n.h — gettext for memcacheq's programs (the daemon, memcacheqctl and
 * memcacheq-bench): _() translates a message of the "memcacheq" text domain,
 * N_() marks one that is translated where it is used.  The catalogs come
 * from po/ (po/POTFILES.in lists every file that marks strings).
 *
 * What is translated: --help, option and startup errors, the log lines meant
 * for operators, memcacheqctl's output and memcacheq-bench's report and
 * errors.  What never is: anything sent to memcache clients (replies are
 * protocol, including SERVER_ERROR texts built from store.c's messages),
 * D-Bus error names and messages, JSON output, and debug-level log lines. */
#pragma once

#include <glib/gi18n.h>
#include <locale.h>

#include "config.h"

/* First thing in main(): the locale of the environment, and the memcacheq
 * catalogs from LOCALEDIR, converted to UTF-8 (what GLib prints).  Numbers
 * keep the C format whatever the locale: JSON output and anything parsed by
 * a program need a decimal point, not a comma. */
static inline void
mcq_i18n_init (void)
{
  setlocale (LC_ALL, "");
  setlocale (LC_NUMERIC, "C");
  bindtextdomain (GETTEXT_PACKAGE, LOCALEDIR);
  bind_textdomain_codeset (GETTEXT_PACKAGE, "UTF-8");
  textdomain (GETTEXT_PACKAGE);
}
