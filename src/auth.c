/* auth.c — the --auth-file credentials and the authentication gate.
 * Owns the table of user:password pairs (wiped when freed, excluded from
 * core dumps) and decides what a connection that has not authenticated
 * yet may do: send the auth set, and nothing else. */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "i18n.h"

#define FIELD (MCQ_AUTH_FIELD_MAX + 1)

/* Fixed-size fields, zero-padded, so that a check always compares the
 * same number of bytes. */
typedef struct {
  guint user_len, pass_len;
  unsigned char user[FIELD];
  unsigned char pass[FIELD];
} Entry;

struct _McqAuth {
  Entry *entries;               /* mmap'd: MADV_DONTDUMP, wiped before munmap */
  gsize map_len;
  guint n;
};

static const char reply_stored[] = "STORED\r\n";
static const char reply_unauthenticated[] = "CLIENT_ERROR unauthenticated\r\n";
static const char reply_failure[] = "CLIENT_ERROR authentication failure\r\n";
static const char reply_bad_token[] = "CLIENT_ERROR bad authentication token format\r\n";

static void
wipe (void *p, size_t len)
{
  explicit_bzero (p, len);
}

void
mcq_auth_free (McqAuth *auth)
{
  if (auth == NULL)
    return;
  if (auth->entries != NULL)
    {
      wipe (auth->entries, auth->map_len);
      munmap (auth->entries, auth->map_len);
    }
  g_free (auth);
}

guint
mcq_auth_count (const McqAuth *auth)
{
  return auth->n;
}

/* ---- the file -------------------------------------------------------------- */

/* Whether path lies directly in $CREDENTIALS_DIRECTORY, where systemd puts
 * LoadCredential= files readable by the service alone (its access control
 * may show as group bits, e.g. through an ACL mask). */
static gboolean
in_credentials_directory (const char *path)
{
  const char *creds = g_getenv ("CREDENTIALS_DIRECTORY");
  g_autofree char *real_creds = NULL, *real_path = NULL, *dir = NULL;

  if (creds == NULL || creds[0] == '\0')
    return FALSE;
  real_creds = realpath (creds, NULL);
  real_path = realpath (path, NULL);
  if (real_creds == NULL || real_path == NULL)
    return FALSE;
  dir = g_path_get_dirname (real_path);
  return strcmp (dir, real_creds) == 0;
}

/* Reads the whole of a private regular file; NULL with an error naming it
 * otherwise.  The caller wipes the buffer. */
static char *
read_private_file (const char *path, gsize *len, GError **error)
{
  struct stat st;
  char *buf;
  gsize got = 0;
  int read_errno = 0;
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

  if (fd < 0)
    {
      int e = errno;
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (e),
                   _("-Y/--auth-file: cannot open %s: %s"), path, g_strerror (e));
      return NULL;
    }
  if (fstat (fd, &st) != 0 || !S_ISREG (st.st_mode))
    {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                   _("-Y/--auth-file: %s is not a regular file"), path);
      close (fd);
      return NULL;
    }
  if ((st.st_mode & 066) != 0 && !in_credentials_directory (path))
    {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_PERM,
                   _("-Y/--auth-file: %s may be read or written by group or others (mode %04o); "
                     "make it private (chmod 600) or pass it with systemd's LoadCredential="),
                   path, (unsigned) (st.st_mode & 07777));
      close (fd);
      return NULL;
    }
  if (st.st_size > MCQ_AUTH_FILE_MAX)
    {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                   _("-Y/--auth-file: %s is larger than %d bytes"), path, MCQ_AUTH_FILE_MAX);
      close (fd);
      return NULL;
    }
  /* One byte more than the size, to see a file that grew meanwhile. */
  buf = g_malloc ((gsize) st.st_size + 1);
  for (;;)
    {
      ssize_t n = read (fd, buf + got, (gsize) st.st_size + 1 - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        read_errno = errno;
      if (n <= 0)
        break;
      got += (gsize) n;
      if (got > (gsize) st.st_size)
        break;
    }
  close (fd);
  if (read_errno != 0 || got > (gsize) st.st_size)
    {
      if (read_errno != 0)
        g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (read_errno),
                     _("-Y/--auth-file: cannot read %s: %s"), path, g_strerror (read_errno));
      else
        g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                     _("-Y/--auth-file: %s changed while it was read"), path);
      wipe (buf, (gsize) st.st_size + 1);
      g_free (buf);
      return NULL;
    }
  *len = got;
  return buf;
}

typedef enum { LINE_OK, LINE_NO_COLON, LINE_EMPTY, LINE_TOO_LONG, LINE_BAD_BYTE } LineProblem;

/* A user name or password: 1..MCQ_AUTH_FIELD_MAX bytes, none of them a
 * space or a control character (the auth set separates the two with a
 * space, so such a credential could never be sent). */
static LineProblem
field_problem (const char *s, gsize len)
{
  if (len == 0)
    return LINE_EMPTY;
  if (len > MCQ_AUTH_FIELD_MAX)
    return LINE_TOO_LONG;
  for (gsize i = 0; i < len; i++)
    if ((unsigned char) s[i] <= 0x20 || (unsigned char) s[i] == 0x7f)
      return LINE_BAD_BYTE;
  return LINE_OK;
}

/* The error for line `lineno`; it never quotes the line, which may hold a
 * password. */
static void
line_error (GError **error, const char *path, guint lineno, LineProblem problem)
{
  const char *what;

  switch (problem)
    {
    case LINE_NO_COLON:
      what = _("expected user:password");
      break;
    case LINE_EMPTY:
      what = _("the user name or the password is empty");
      break;
    case LINE_TOO_LONG:
      what = _("the user name or the password is longer than 255 bytes");
      break;
    case LINE_BAD_BYTE:
    default:
      what = _("the user name or the password contains a space or a control character");
      break;
    }
  /* TRANSLATORS: the file, the line number, then what is wrong with it. */
  g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_INVAL, _("-Y/--auth-file: %s, line %u: %s"),
               path, lineno, what);
}

/* Parses "user:password" (the password may contain ':') into e. */
static gboolean
parse_line (const char *line, gsize len, const char *path, guint lineno, Entry *e,
            GError **error)
{
  const char *colon = memchr (line, ':', len);
  LineProblem problem = LINE_NO_COLON;

  if (colon != NULL && (problem = field_problem (line, (gsize) (colon - line))) == LINE_OK)
    problem = field_problem (colon + 1, len - (gsize) (colon - line) - 1);
  if (problem != LINE_OK)
    {
      line_error (error, path, lineno, problem);
      return FALSE;
    }
  e->user_len = (guint) (colon - line);
  memcpy (e->user, line, e->user_len);
  e->pass_len = (guint) (len - e->user_len - 1);
  memcpy (e->pass, colon + 1, e->pass_len);
  return TRUE;
}

/* Room for n entries, kept out of core dumps. */
static McqAuth *
auth_alloc (guint n)
{
  McqAuth *auth = g_new0 (McqAuth, 1);
  long page = sysconf (_SC_PAGESIZE);
  gsize bytes = MAX (n, 1u) * sizeof (Entry);

  auth->map_len = (bytes + (gsize) page - 1) / (gsize) page * (gsize) page;
  auth->entries = mmap (NULL, auth->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
  if (auth->entries == MAP_FAILED)
    g_error ("out of memory for %u credentials", n);
  /* Best effort: a seccomp filter may refuse it, and then the pages are
   * still wiped when freed. */
  (void) madvise (auth->entries, auth->map_len, MADV_DONTDUMP);
  return auth;
}

static gboolean
parse_lines (McqAuth *auth, const char *text, gsize len, const char *path, GError **error)
{
  const char *p = text, *end = text + len;
  guint lineno = 0;

  while (p < end)
    {
      const char *nl = memchr (p, '\n', (gsize) (end - p));
      const char *stop = nl ? nl : end;
      gsize n = (gsize) (stop - p);

      lineno++;
      if (n > 0 && p[n - 1] == '\r')
        n--;
      if (n > 0 && !parse_line (p, n, path, lineno, &auth->entries[auth->n++], error))
        return FALSE;
      p = nl ? nl + 1 : end;
    }
  if (auth->n == 0)
    {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                   _("-Y/--auth-file: %s has no user:password line"), path);
      return FALSE;
    }
  return TRUE;
}

McqAuth *
mcq_auth_load (const char *path, GError **error)
{
  gsize len = 0;
  char *text = read_private_file (path, &len, error);
  McqAuth *auth;
  guint lines = 1;

  if (text == NULL)
    return NULL;
  for (gsize i = 0; i < len; i++)
    lines += text[i] == '\n';
  auth = auth_alloc (lines);
  if (!parse_lines (auth, text, len, path, error))
    g_clear_pointer (&auth, mcq_auth_free);
  wipe (text, len);
  g_free (text);
  return auth;
}

/* ---- the check ------------------------------------------------------------- */

gboolean
mcq_auth_check (const McqAuth *auth, const char *user, size_t ulen, const char *pass, size_t plen)
{
  unsigned char u[FIELD] = { 0 }, p[FIELD] = { 0 };
  unsigned found = 0;

  /* Only the lengths tell; both are the client's own. */
  if (ulen > MCQ_AUTH_FIELD_MAX || plen > MCQ_AUTH_FIELD_MAX)
    return FALSE;
  memcpy (u, user, ulen);
  memcpy (p, pass, plen);
  for (guint i = 0; i < auth->n; i++)
    {
      const Entry *e = &auth->entries[i];
      unsigned diff = (e->user_len ^ (unsigned) ulen) | (e->pass_len ^ (unsigned) plen);

      for (gsize k = 0; k < FIELD; k++)
        diff |= (unsigned) (e->user[k] ^ u[k]) | (unsigned) (e->pass[k] ^ p[k]);
      /* diff is at most 255: 1 when it is 0, else 0, without a branch. */
      found |= 1u & ((diff - 1u) >> 8);
    }
  wipe (u, sizeof u);
  wipe (p, sizeof p);
  return found != 0;
}

/* ---- the gate -------------------------------------------------------------- */

static McqParseResult
answer (McqParseResult r, const char *reply)
{
  r.status = MCQ_PARSE_ERROR;
  r.error = reply;
  r.noreply = FALSE;
  return r;
}

/* Checks the body "user password" (split at spaces, as memcached does:
 * the first two words count) and wipes it. */
static McqParseResult
check_body (const McqAuth *auth, McqAuthState *state, McqParseResult r, char *body, size_t len,
            gboolean noreply)
{
  char *words[2];
  size_t lens[2], i = 0;
  guint n = 0;
  gboolean ok;

  while (n < 2 && i < len)
    {
      while (i < len && body[i] == ' ')
        i++;
      if (i == len)
        break;
      words[n] = body + i;
      while (i < len && body[i] != ' ')
        i++;
      lens[n] = (size_t) (body + i - words[n]);
      n++;
    }
  if (n < 2)
    {
      wipe (body, len);
      return answer (r, reply_bad_token);
    }
  ok = mcq_auth_check (auth, words[0], lens[0], words[1], lens[1]);
  if (ok)
    g_debug ("connection authenticated as %.*s", (int) lens[0], words[0]);
  wipe (body, len);
  if (ok)
    {
      state->passed = TRUE;
      r = answer (r, reply_stored);
      r.noreply = noreply;
      return r;
    }
  state->failures++;
  g_info (_("a client sent a wrong user name or password (%u of %u tries on its connection)"),
          state->failures, MCQ_AUTH_MAX_FAILURES);
  r = answer (r, reply_failure);
  if (state->failures >= MCQ_AUTH_MAX_FAILURES)
    r.status = MCQ_PARSE_FATAL;
  return r;
}

McqParseResult
mcq_auth_parse (const McqAuth *auth, McqAuthState *state, char *buf, size_t len, McqRequest *req)
{
  McqParseResult r = mcq_parse_request (buf, len, MCQ_AUTH_BODY_MAX, req);

  switch (r.status)
    {
    case MCQ_PARSE_NEED_MORE:
    case MCQ_PARSE_FATAL:
      return r;
    case MCQ_PARSE_ERROR:
      /* Malformed, or a body too long to be credentials: its data block
       * (if any) is still skipped, never run as requests. */
      return answer (r, reply_unauthenticated);
    case MCQ_PARSE_REQUEST:
    default:
      if (req->cmd != MCQ_CMD_SET)
        return answer (r, reply_unauthenticated);
      return check_body (auth, state, r, buf + (req->body.ptr - buf), req->body.len, req->noreply);
    }
}
