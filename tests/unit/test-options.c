/* test-options.c — unit tests of option parsing and checks (src/options.c). */
#include <string.h>
#include "options.h"

static gboolean
parse (McqOptions *o, const char *const *args, GError **error)
{
  g_auto(GStrv) argv = NULL;
  GPtrArray *a = g_ptr_array_new ();
  int argc;
  char **av;
  gboolean ok;

  g_ptr_array_add (a, g_strdup ("memcacheq"));
  for (guint i = 0; args[i]; i++)
    g_ptr_array_add (a, g_strdup (args[i]));
  g_ptr_array_add (a, NULL);
  argv = (GStrv) g_ptr_array_free (a, FALSE);
  argc = (int) g_strv_length (argv);
  /* GOption rearranges the vector; parse a shallow copy so argv frees cleanly */
  av = g_memdup2 (argv, sizeof (char *) * (argc + 1));
  ok = mcq_options_parse (o, &argc, &av, error) && mcq_options_check (o, error);
  g_free (av);
  return ok;
}

static void
test_defaults (void)
{
  g_auto(McqOptions) o;
  const char *args[] = { NULL };

  mcq_options_init (&o);
  g_assert_true (parse (&o, args, NULL));
  g_assert_cmpuint (o.port, ==, 22201);
  g_assert_cmpuint (o.max_body, ==, 1048576);
  g_assert_cmpuint (o.max_conns, ==, 1024);
  g_assert_false (o.no_sync);
  g_assert_false (o.no_cpu_placement);
  g_assert_cmpint (mcq_options_dbus (&o), ==, MCQ_DBUS_SYSTEM);
}

static void
test_values (void)
{
  g_auto(McqOptions) o;
  const char *args[] = { "-p", "12345", "--max-body=4096", "-N", "-vv", "-a", "0660", "-H", "/tmp/x", NULL };

  mcq_options_init (&o);
  g_assert_true (parse (&o, args, NULL));
  g_assert_cmpuint (o.port, ==, 12345);
  g_assert_true (o.port_given);
  g_assert_cmpuint (o.max_body, ==, 4096);
  g_assert_true (o.no_sync);
  g_assert_cmpint (o.verbosity, ==, 2);
  g_assert_cmpuint (o.unix_mask, ==, 0660);
  g_assert_cmpstr (o.home, ==, "/tmp/x");
}

static void
check_bad (const char *const *args, const char *needle)
{
  g_auto(McqOptions) o;
  g_autoptr(GError) error = NULL;

  mcq_options_init (&o);
  g_assert_false (parse (&o, args, &error));
  g_assert_nonnull (error);
  if (strstr (error->message, needle) == NULL)
    g_error ("“%s” does not mention “%s”", error->message, needle);
}

static void
test_bad_values (void)
{
  const char *b_abc[] = { "-B", "abc", NULL };
  const char *p_big[] = { "-p", "70000", NULL };
  const char *p_neg[] = { "--port=-1", NULL };
  const char *udp[] = { "-U", "5", NULL };
  const char *page[] = { "-A", "3000", NULL };
  const char *mask[] = { "-a", "0999", NULL };
  const char *b_zero[] = { "-B", "0", NULL };
  const char *extra[] = { "stray", NULL };
  const char *unknown[] = { "--bogus", NULL };
  const char *sync_no[] = { "--no-sync=no", NULL };
  const char *daemon_yes[] = { "-p", "1", "--daemon=yes", NULL };
  const char *verbose_two[] = { "--verbose=2", NULL };
  const char *log_big[] = { "-L", "16385", NULL };

  check_bad (b_abc, "--max-body");
  check_bad (p_big, "--port");
  check_bad (p_neg, "--port");
  check_bad (udp, "UDP");
  check_bad (page, "--page-size");
  check_bad (mask, "--unix-mask");
  check_bad (b_zero, "--max-body");
  check_bad (extra, "stray");
  check_bad (unknown, "bogus");
  check_bad (sync_no, "--no-sync takes no value");
  check_bad (daemon_yes, "--daemon takes no value");
  check_bad (verbose_two, "--verbose takes no value");
  check_bad (log_big, "--log-buffer");
}

/* A switch's look-alike in another option's value is that value. */
static void
test_switch_lookalike_value (void)
{
  g_auto(McqOptions) o;
  const char *args[] = { "-H", "--no-sync=x", "--pidfile", "--daemon=y", NULL };

  mcq_options_init (&o);
  g_assert_true (parse (&o, args, NULL));
  g_assert_cmpstr (o.home, ==, "--no-sync=x");
  g_assert_cmpstr (o.pidfile, ==, "--daemon=y");
  g_assert_false (o.no_sync);
  g_assert_false (o.daemonize);
}

static void
test_dbus (void)
{
  const struct { const char *arg; McqDbusChoice want; } ok[] = {
    { "--dbus=system", MCQ_DBUS_SYSTEM },
    { "--dbus=session", MCQ_DBUS_SESSION },
    { "--dbus=none", MCQ_DBUS_NONE },
  };
  const char *bad[] = { "--dbus=SYSTEM", NULL };
  const char *empty[] = { "--dbus=", NULL };
  const char *missing[] = { "--dbus", NULL };

  for (guint i = 0; i < G_N_ELEMENTS (ok); i++)
    {
      g_auto(McqOptions) o;
      const char *args[] = { ok[i].arg, NULL };

      mcq_options_init (&o);
      g_assert_true (parse (&o, args, NULL));
      g_assert_cmpint (mcq_options_dbus (&o), ==, ok[i].want);
    }
  check_bad (bad, "--dbus");
  check_bad (empty, "--dbus");
  check_bad (missing, "--dbus");
}

static void
test_warnings (void)
{
  g_auto(McqOptions) o;
  g_autoptr(GPtrArray) w = NULL;
  const char *args[] = { "-t", "8", "-E", "100", NULL };

  mcq_options_init (&o);
  g_assert_true (parse (&o, args, NULL));
  w = mcq_options_warnings (&o);
  g_assert_cmpuint (w->len, ==, 2);
  g_assert_nonnull (strstr (w->pdata[0], "-t/--threads"));
  g_assert_nonnull (strstr (w->pdata[1], "-E/--extent-pages"));
}

static void
test_home (void)
{
  g_auto(McqOptions) o;
  g_autofree char *h1 = NULL, *h2 = NULL, *h3 = NULL, *h4 = NULL, *h5 = NULL, *expected = NULL;
  const char *args[] = { NULL };

  mcq_options_init (&o);
  g_assert_true (parse (&o, args, NULL));
  g_setenv ("STATE_DIRECTORY", "/var/lib/memcacheq:/var/lib/other", TRUE);
  h1 = mcq_options_home (&o);
  g_assert_cmpstr (h1, ==, "/var/lib/memcacheq");
  g_unsetenv ("STATE_DIRECTORY");
  g_setenv ("XDG_STATE_HOME", "/srv/state", TRUE);
  h4 = mcq_options_home (&o);
  g_assert_cmpstr (h4, ==, "/srv/state/memcacheq");
  /* A relative XDG_STATE_HOME is invalid (XDG base directory spec). */
  g_setenv ("XDG_STATE_HOME", "state", TRUE);
  h2 = mcq_options_home (&o);
  expected = g_build_filename (g_get_home_dir (), ".local", "state", "memcacheq", NULL);
  g_assert_cmpstr (h2, ==, expected);
  g_unsetenv ("XDG_STATE_HOME");
  h5 = mcq_options_home (&o);
  g_assert_cmpstr (h5, ==, expected);
  o.home = g_strdup ("/srv/q");
  h3 = mcq_options_home (&o);
  g_assert_cmpstr (h3, ==, "/srv/q");
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/options/defaults", test_defaults);
  g_test_add_func ("/options/values", test_values);
  g_test_add_func ("/options/bad-values", test_bad_values);
  g_test_add_func ("/options/switch-lookalike-value", test_switch_lookalike_value);
  g_test_add_func ("/options/dbus", test_dbus);
  g_test_add_func ("/options/warnings", test_warnings);
  g_test_add_func ("/options/home", test_home);
  return g_test_run ();
}
