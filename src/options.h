/* options.h — the command line: the original memcacheq's options with long
 * forms, parsed with GOption into McqOptions, plus the checks on them. */
#pragma once

#include <glib.h>

/* --dbus: where the statistics are published (see dbus.h). */
typedef enum {
  MCQ_DBUS_SYSTEM,
  MCQ_DBUS_SESSION,
  MCQ_DBUS_NONE,
} McqDbusChoice;

typedef struct {
  /* listening */
  guint port;
  gboolean port_given;
  char *listen_addr;
  char *unix_path;
  guint unix_mask;
  guint udp_port;
  guint max_conns;
  guint client_timeout_s;

  /* process */
  gboolean daemonize;
  gboolean core_unlimited;
  char *user;
  char *pidfile;
  int verbosity;
  guint threads;
  gboolean show_license;
  gboolean show_version;
  char *dbus;                   /* --dbus: "system", "session" or "none"; NULL: system */
  gboolean no_cpu_placement;    /* --no-cpu-placement (see placement.h) */
  char *auth_file;              /* -Y/--auth-file: clients must authenticate (see auth.h) */

  /* storage */
  char *home;
  guint64 cache_mb;
  guint page_size;
  guint log_buffer_kb;
  guint checkpoint_s;
  guint trickle_s;
  guint trickle_percent;
  guint stats_dump_s;
  guint extent_pages;
  guint64 max_body;
  guint deadlock_ms;
  gboolean no_sync;
  gboolean log_auto_remove;

  GPtrArray *given;             /* short names of the options on the command line */
} McqOptions;

void mcq_options_init (McqOptions *o);
void mcq_options_clear (McqOptions *o);

/* Parses argv (removing what it took).  Errors name the option. */
gboolean mcq_options_parse (McqOptions *o, int *argc, char ***argv, GError **error);

/* Cross-option checks after parsing (UDP, page size, ...). */
gboolean mcq_options_check (const McqOptions *o, GError **error);

/* The bus --dbus names (after mcq_options_check accepted it). */
McqDbusChoice mcq_options_dbus (const McqOptions *o);

/* Warnings for options that are accepted but have no effect here. */
GPtrArray *mcq_options_warnings (const McqOptions *o);

/* -H, else $STATE_DIRECTORY (first entry), else $XDG_STATE_HOME/memcacheq. */
char *mcq_options_home (const McqOptions *o);

/* Parses "value" as an unsigned decimal in [min, max], for option `name`. */
gboolean mcq_option_parse_uint (const char *name, const char *value, guint64 min, guint64 max,
                                guint64 *out, GError **error);

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (McqOptions, mcq_options_clear)
