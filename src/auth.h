/* auth.h — client authentication, as memcached's ASCII authentication (-Y):
 * the credentials file (--auth-file, lines "user:password"), the
 * constant-time check, and the gate every request of a connection passes
 * through until it has sent "set <any> <flags> <exptime> <n>" with the body
 * "user password". */
#pragma once

#include <glib.h>

#include "protocol.h"

/* Longest user name and longest password, in bytes. */
#define MCQ_AUTH_FIELD_MAX 255
/* Largest auth set body read before authentication; a longer one is
 * refused and skipped unread, whatever -B allows. */
#define MCQ_AUTH_BODY_MAX 1024
/* Wrong passwords a connection may send; the last one closes it. */
#define MCQ_AUTH_MAX_FAILURES 3
/* Largest credentials file accepted. */
#define MCQ_AUTH_FILE_MAX (1024 * 1024)

typedef struct _McqAuth McqAuth;

/* Per-connection state: zero-initialised means "not authenticated yet". */
typedef struct {
  gboolean passed;              /* TRUE once authenticated (or no --auth-file) */
  guint failures;               /* wrong passwords so far */
} McqAuthState;

/* Reads the credentials file.  Fails, naming the file, if it is not a
 * regular file, if group or others may read or write it (unless it lies
 * in $CREDENTIALS_DIRECTORY, which systemd makes private to the service),
 * if a line is not "user:password" (naming the line, never showing it),
 * or if it holds no credentials.  Everything read is wiped before it is
 * freed; the table is kept out of core dumps. */
McqAuth *mcq_auth_load (const char *path, GError **error);

/* Wipes and frees the table.  NULL is allowed. */
void mcq_auth_free (McqAuth *auth);

/* How many user:password lines were loaded. */
guint mcq_auth_count (const McqAuth *auth);

/* Whether (user, pass) is one of the pairs loaded.  Takes the same time
 * whatever the bytes given and whichever entry (if any) matches: every
 * entry is compared over the full field length, with no early exit. */
gboolean mcq_auth_check (const McqAuth *auth, const char *user, size_t ulen,
                         const char *pass, size_t plen);

/* Takes the place of mcq_parse_request (same contract on buf, len and the
 * result) for a connection with !state->passed.  Never returns
 * MCQ_PARSE_REQUEST: the auth set is answered on the spot (STORED, or
 * CLIENT_ERROR ... with the connection left unauthenticated), and any
 * other request, well-formed or not, is answered "CLIENT_ERROR
 * unauthenticated" and not run; a set's data block is consumed or skipped
 * in both cases, never parsed as requests.  These answers use the
 * mechanics of MCQ_PARSE_ERROR (reply `error`, consume, skip `discard`):
 * only a successful auth set that ends in "noreply" is not answered.  The
 * MCQ_AUTH_MAX_FAILURES-th wrong password is MCQ_PARSE_FATAL (answer, then
 * close).  The password's bytes in buf are overwritten once checked, so
 * buf must be the caller's writable input buffer. */
McqParseResult mcq_auth_parse (const McqAuth *auth, McqAuthState *state, char *buf, size_t len,
                               McqRequest *req);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (McqAuth, mcq_auth_free)
