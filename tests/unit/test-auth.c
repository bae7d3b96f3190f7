/* test-auth.c — unit tests of the credentials file, the check and the
 * authentication gate (src/auth.c), and of the -Y/--auth-file option. */
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>

#include "auth.h"
#include "options.h"

typedef struct {
  char *dir;
} Fixture;

static void
fixture_set_up (Fixture *f, gconstpointer data)
{
  f->dir = g_dir_make_tmp ("mcq-auth-XXXXXX", NULL);
  g_assert_nonnull (f->dir);
  g_unsetenv ("CREDENTIALS_DIRECTORY");
}

static void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  g_autoptr(GDir) d = g_dir_open (f->dir, 0, NULL);
  const char *name;

  while ((name = g_dir_read_name (d)) != NULL)
    {
      g_autofree char *p = g_build_filename (f->dir, name, NULL);
      g_remove (p);
    }
  g_rmdir (f->dir);
  g_free (f->dir);
  g_unsetenv ("CREDENTIALS_DIRECTORY");
}

/* Writes `text` to dir/name with `mode`; returns the path. */
static char *
write_file (const char *dir, const char *name, const char *text, gssize len, int mode)
{
  char *path = g_build_filename (dir, name, NULL);

  g_assert_true (g_file_set_contents (path, text, len, NULL));
  g_assert_cmpint (g_chmod (path, mode), ==, 0);
  return path;
}

static McqAuth *
load_text (Fixture *f, const char *text, GError **error)
{
  g_autofree char *path = write_file (f->dir, "auth", text, -1, 0600);
  return mcq_auth_load (path, error);
}

static gboolean
check (const McqAuth *a, const char *user, const char *pass)
{
  return mcq_auth_check (a, user, strlen (user), pass, strlen (pass));
}

static void
test_load_good (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  /* CRLF, a blank line, a ':' inside the password, no final newline. */
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\r\n\nbob:pa:ss:word\ncarol:x", &error);

  g_assert_no_error (error);
  g_assert_nonnull (a);
  g_assert_cmpuint (mcq_auth_count (a), ==, 3);
  g_assert_true (check (a, "alice", "s3cret"));
  g_assert_true (check (a, "bob", "pa:ss:word"));
  g_assert_true (check (a, "carol", "x"));
}

static void
test_check_rejects (Fixture *f, gconstpointer data)
{
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\nbob:hunter2\nbob:rotated\n", NULL);

  g_assert_nonnull (a);
  g_assert_false (check (a, "alice", "s3cre"));       /* prefix */
  g_assert_false (check (a, "alice", "s3cret2"));     /* longer */
  g_assert_false (check (a, "alice", "S3cret"));
  g_assert_false (check (a, "alice", ""));
  g_assert_false (check (a, "alic", "s3cret"));
  g_assert_false (check (a, "alice\r", "s3cret"));
  g_assert_false (check (a, "bob", "s3cret"));        /* another user's password */
  g_assert_false (check (a, "", ""));
  /* Both lines of a user count (a password being rotated). */
  g_assert_true (check (a, "bob", "hunter2"));
  g_assert_true (check (a, "bob", "rotated"));
  /* Over the field length: refused, not truncated. */
  g_autofree char *long_pass = g_strnfill (300, 'x');
  g_assert_false (check (a, "alice", long_pass));
  /* A NUL past the real bytes must not pass as padding. */
  g_assert_false (mcq_auth_check (a, "alice", 5, "s3cret\0", 7));
}

static void
test_longest_fields (Fixture *f, gconstpointer data)
{
  g_autofree char *user = g_strnfill (MCQ_AUTH_FIELD_MAX, 'u');
  g_autofree char *pass = g_strnfill (MCQ_AUTH_FIELD_MAX, 'p');
  g_autofree char *line = g_strdup_printf ("%s:%s\n", user, pass);
  g_autoptr(GError) error = NULL;
  g_autoptr(McqAuth) a = load_text (f, line, &error);

  g_assert_no_error (error);
  g_assert_true (check (a, user, pass));
  pass[MCQ_AUTH_FIELD_MAX - 1] = 'q';
  g_assert_false (check (a, user, pass));
}

/* Each malformed line is an error naming the file and the line number,
 * and never showing the line. */
static void
test_malformed (Fixture *f, gconstpointer data)
{
  g_autofree char *long_pass = g_strnfill (MCQ_AUTH_FIELD_MAX + 1, 'p');
  g_autofree char *long_line = g_strdup_printf ("ok:fine\nlong:%s\n", long_pass);
  const struct {
    const char *text;
    const char *expect;
  } cases[] = {
    { "alice:s3cret\nno colon here\n", "line 2: expected user:password" },
    { "alice:s3cret\n\n:secretpw\n", "line 3: the user name or the password is empty" },
    { "alice:\n", "line 1: the user name or the password is empty" },
    { "alice:two words\n", "line 1: the user name or the password contains a space" },
    { "al ice:secretpw\n", "line 1: the user name or the password contains a space" },
    { "alice:tab\tpw\n", "line 1: the user name or the password contains a space" },
    { "alice:bad\rpw\n", "line 1: the user name or the password contains a space" },
    { long_line, "line 2: the user name or the password is longer than 255 bytes" },
    { "", "has no user:password line" },
    { "\n\r\n\n", "has no user:password line" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *path = write_file (f->dir, "auth", cases[i].text, -1, 0600);
      g_autoptr(GError) error = NULL;
      g_autoptr(McqAuth) a = mcq_auth_load (path, &error);

      g_assert_null (a);
      g_assert_nonnull (error);
      g_assert_nonnull (strstr (error->message, path));
      g_assert_nonnull (strstr (error->message, cases[i].expect));
      g_assert_null (strstr (error->message, "s3cret"));
      g_assert_null (strstr (error->message, "secretpw"));
      g_assert_null (strstr (error->message, "words"));
    }
}

static void
test_nul_byte (Fixture *f, gconstpointer data)
{
  g_autofree char *path = write_file (f->dir, "auth", "alice:a\0b\n", 10, 0600);
  g_autoptr(GError) error = NULL;

  g_assert_null (mcq_auth_load (path, &error));
  g_assert_nonnull (strstr (error->message, "line 1: the user name or the password contains"));
}

static void
test_permissions (Fixture *f, gconstpointer data)
{
  const int refused[] = { 0640, 0604, 0620, 0602, 0660, 0644, 0666, 0647 };
  const int accepted[] = { 0600, 0400, 0700, 0611 };

  for (guint i = 0; i < G_N_ELEMENTS (refused); i++)
    {
      g_autofree char *path = write_file (f->dir, "auth", "alice:s3cret\n", -1, refused[i]);
      g_autoptr(GError) error = NULL;
      g_autofree char *mode = g_strdup_printf ("mode %04o", refused[i]);

      g_assert_null (mcq_auth_load (path, &error));
      g_assert_error (error, G_FILE_ERROR, G_FILE_ERROR_PERM);
      g_assert_nonnull (strstr (error->message, path));
      g_assert_nonnull (strstr (error->message, mode));
    }
  for (guint i = 0; i < G_N_ELEMENTS (accepted); i++)
    {
      g_autofree char *path = write_file (f->dir, "auth", "alice:s3cret\n", -1, accepted[i]);
      g_autoptr(GError) error = NULL;
      g_autoptr(McqAuth) a = mcq_auth_load (path, &error);

      g_assert_no_error (error);
      g_assert_true (check (a, "alice", "s3cret"));
    }
}

/* A file in $CREDENTIALS_DIRECTORY is private to the service whatever its
 * mode says; one elsewhere is not, even with the variable set. */
static void
test_credentials_directory (Fixture *f, gconstpointer data)
{
  g_autofree char *creds = g_build_filename (f->dir, "creds", NULL);
  g_autofree char *inside = NULL, *outside = NULL;
  g_autoptr(GError) error = NULL;

  g_assert_cmpint (g_mkdir (creds, 0700), ==, 0);
  inside = write_file (creds, "auth", "alice:s3cret\n", -1, 0440);
  outside = write_file (f->dir, "auth", "alice:s3cret\n", -1, 0440);
  g_assert_null (mcq_auth_load (inside, NULL));         /* variable not set */
  g_setenv ("CREDENTIALS_DIRECTORY", creds, TRUE);
  {
    g_autoptr(McqAuth) a = mcq_auth_load (inside, &error);
    g_assert_no_error (error);
    g_assert_true (check (a, "alice", "s3cret"));
  }
  g_assert_null (mcq_auth_load (outside, &error));
  g_assert_error (error, G_FILE_ERROR, G_FILE_ERROR_PERM);
  g_remove (inside);
  g_rmdir (creds);
}

static void
test_not_a_file (Fixture *f, gconstpointer data)
{
  g_autofree char *missing = g_build_filename (f->dir, "missing", NULL);
  g_autoptr(GError) e1 = NULL, e2 = NULL;

  g_assert_null (mcq_auth_load (missing, &e1));
  g_assert_error (e1, G_FILE_ERROR, G_FILE_ERROR_NOENT);
  g_assert_nonnull (strstr (e1->message, missing));
  g_assert_null (mcq_auth_load (f->dir, &e2));
  g_assert_nonnull (strstr (e2->message, "is not a regular file"));
}

/* ---- the gate ---- */

typedef struct {
  McqParseStatus status;
  const char *reply;
  gboolean silent;
  size_t consumed;
  guint64 discard;
} Outcome;

static Outcome
gate (const McqAuth *a, McqAuthState *st, const char *input)
{
  g_autofree char *buf = g_strdup (input);
  McqRequest req;
  McqParseResult r = mcq_auth_parse (a, st, buf, strlen (buf), &req);
  Outcome o = { r.status, r.error, r.noreply, r.consumed, r.discard };

  g_assert_cmpint (r.status, !=, MCQ_PARSE_REQUEST);
  return o;
}

static void
test_gate_refuses (Fixture *f, gconstpointer data)
{
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\n", NULL);
  McqAuthState st = { 0 };
  const char *requests[] = {
    "version\r\n", "quit\r\n", "get q\r\n", "gets q r\r\n", "delete held\r\n",
    "delete held noreply\r\n", "db_checkpoint\r\n", "db_archive\r\n", "stats\r\n",
    "stats queue\r\n", "stats reset\r\n", "verbosity 2 noreply\r\n", "bogus\r\n", "\r\n",
  };

  for (guint i = 0; i < G_N_ELEMENTS (requests); i++)
    {
      Outcome o = gate (a, &st, requests[i]);
      g_assert_cmpint (o.status, ==, MCQ_PARSE_ERROR);
      g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR unauthenticated\r\n");
      g_assert_false (o.silent);
      g_assert_cmpuint (o.consumed, ==, strlen (requests[i]));
      g_assert_false (st.passed);
    }
  /* A malformed set: refused, and its data block still skipped. */
  Outcome o = gate (a, &st, "set q x 0 5\r\nhello\r\n");
  g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR unauthenticated\r\n");
  g_assert_cmpuint (o.consumed + o.discard, ==, strlen ("set q x 0 5\r\nhello\r\n"));
  /* A body too long for credentials: refused and skipped, not buffered. */
  o = gate (a, &st, "set q 0 0 5000000\r\n");
  g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR unauthenticated\r\n");
  g_assert_cmpuint (o.discard, ==, 5000002);
  /* An incomplete line or body: wait for more. */
  g_assert_cmpint (gate (a, &st, "set q 0 0 12\r\nalice s3").status, ==, MCQ_PARSE_NEED_MORE);
  g_assert_cmpint (gate (a, &st, "get").status, ==, MCQ_PARSE_NEED_MORE);
  g_assert_cmpuint (st.failures, ==, 0);
  g_assert_false (st.passed);
}

static void
test_gate_auth (Fixture *f, gconstpointer data)
{
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\n", NULL);
  McqAuthState st = { 0 };
  Outcome o;

  o = gate (a, &st, "set auth 0 0 11\r\nalice wrong\r\n");
  g_assert_cmpint (o.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR authentication failure\r\n");
  g_assert_false (st.passed);
  g_assert_cmpuint (st.failures, ==, 1);
  /* One word: memcached's format error, not counted as a try. */
  o = gate (a, &st, "set auth 0 0 6\r\nalice \r\n");
  g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR bad authentication token format\r\n");
  g_assert_cmpuint (st.failures, ==, 1);
  /* A noreply wrong password is still answered. */
  o = gate (a, &st, "set auth 0 0 11 noreply\r\nalice wrong\r\n");
  g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR authentication failure\r\n");
  g_assert_false (o.silent);
  /* Any key, flags and exptime; words split at runs of spaces. */
  o = gate (a, &st, "set anything 7 100 14\r\n alice  s3cret\r\n");
  g_assert_cmpint (o.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (o.reply, ==, "STORED\r\n");
  g_assert_false (o.silent);
  g_assert_cmpuint (o.consumed, ==, strlen ("set anything 7 100 14\r\n alice  s3cret\r\n"));
  g_assert_true (st.passed);

  /* A successful noreply auth set is not answered, like any noreply set. */
  McqAuthState st2 = { 0 };
  o = gate (a, &st2, "set auth 0 0 12 noreply\r\nalice s3cret\r\n");
  g_assert_cmpstr (o.reply, ==, "STORED\r\n");
  g_assert_true (o.silent);
  g_assert_true (st2.passed);
}

static void
test_gate_closes_after_failures (Fixture *f, gconstpointer data)
{
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\n", NULL);
  McqAuthState st = { 0 };

  for (guint i = 1; i <= MCQ_AUTH_MAX_FAILURES; i++)
    {
      Outcome o = gate (a, &st, "set auth 0 0 11\r\nalice wrong\r\n");
      g_assert_cmpstr (o.reply, ==, "CLIENT_ERROR authentication failure\r\n");
      g_assert_cmpint (o.status, ==, i < MCQ_AUTH_MAX_FAILURES ? MCQ_PARSE_ERROR : MCQ_PARSE_FATAL);
    }
  g_assert_false (st.passed);
}

static void
test_gate_wipes_password (Fixture *f, gconstpointer data)
{
  g_autoptr(McqAuth) a = load_text (f, "alice:s3cret\n", NULL);
  const char *inputs[] = { "set a 0 0 12\r\nalice s3cret\r\n", "set a 0 0 12\r\nalice s3cres\r\n" };

  for (guint i = 0; i < G_N_ELEMENTS (inputs); i++)
    {
      McqAuthState st = { 0 };
      g_autofree char *buf = g_strdup (inputs[i]);
      size_t len = strlen (buf);
      McqRequest req;

      mcq_auth_parse (a, &st, buf, len, &req);
      g_assert_null (g_strstr_len (buf, (gssize) len, "s3cre"));
      g_assert_null (g_strstr_len (buf, (gssize) len, "alice"));
      g_assert_nonnull (g_strstr_len (buf, (gssize) len, "set a 0 0 12\r\n"));
    }
}

/* ---- the option ---- */

static void
test_option (void)
{
  const struct {
    const char *args[3];
    const char *expect;         /* NULL: accepted */
  } cases[] = {
    { { "--auth-file=/etc/mcq-auth" }, NULL },
    { { "-Y", "/etc/mcq-auth" }, NULL },
    { { "--auth-file=" }, "-Y/--auth-file: empty path" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_auto(McqOptions) o;
      g_autoptr(GError) error = NULL;
      char *args[4] = { "memcacheq", (char *) cases[i].args[0], (char *) cases[i].args[1], NULL };
      char **argv = args;
      int argc = args[2] ? 3 : 2;
      gboolean ok;

      mcq_options_init (&o);
      ok = mcq_options_parse (&o, &argc, &argv, &error) && mcq_options_check (&o, &error);
      if (cases[i].expect == NULL)
        {
          g_assert_no_error (error);
          g_assert_true (ok);
          g_assert_cmpstr (o.auth_file, ==, "/etc/mcq-auth");
        }
      else
        {
          g_assert_false (ok);
          g_assert_cmpstr (error->message, ==, cases[i].expect);
        }
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(name, fn) \
  g_test_add ("/auth/" name, Fixture, NULL, fixture_set_up, fn, fixture_tear_down)
  ADD ("load/good", test_load_good);
  ADD ("load/malformed", test_malformed);
  ADD ("load/nul-byte", test_nul_byte);
  ADD ("load/permissions", test_permissions);
  ADD ("load/credentials-directory", test_credentials_directory);
  ADD ("load/not-a-file", test_not_a_file);
  ADD ("check/rejects", test_check_rejects);
  ADD ("check/longest-fields", test_longest_fields);
  ADD ("gate/refuses", test_gate_refuses);
  ADD ("gate/auth", test_gate_auth);
  ADD ("gate/closes-after-failures", test_gate_closes_after_failures);
  ADD ("gate/wipes-password", test_gate_wipes_password);
#undef ADD
  g_test_add_func ("/auth/option", test_option);
  return g_test_run ();
}
