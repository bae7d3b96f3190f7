/* switches.h — the one command-line check GOption lacks, shared by
 * memcacheq, memcacheqctl and memcacheq-bench: an option that takes no
 * value (a switch) given one ("--no-sync=no") is an error. */
#pragma once

#include <glib.h>

/* Looks through argv (before g_option_context_parse) for "--name=value"
 * where name is a switch among entries (terminated by a NULL long_name).
 * GOption would take it as the bare switch and drop the value, so that
 * "--no-sync=no" turned durability off.  Values of options that take one
 * ("-H --odd=dir") and everything after "--" are skipped.  FALSE with a
 * G_OPTION_ERROR_BAD_VALUE naming the option on the first one found. */
gboolean mcq_option_check_switches (const GOptionEntry *entries, int argc, char **argv,
                                    GError **error);
