/* protocol.c — parser for memcacheq's memcache text protocol.
 * Turns the head of an input buffer into one McqRequest or an error reply;
 * it owns the wire grammar and error texts, and nothing about I/O or storage. */
#include "protocol.h"

#include <string.h>

#define ERR_FORMAT   "CLIENT_ERROR bad command line format\r\n"
#define ERR_CHUNK    "CLIENT_ERROR bad data chunk\r\n"
#define ERR_TOOLARGE "SERVER_ERROR object too large for cache\r\n"
#define ERR_LINE     "CLIENT_ERROR line too long\r\n"
#define ERR_UNKNOWN  "ERROR\r\n"
#define ERR_KEYLEN   "CLIENT_ERROR key too long\r\n"
#define ERR_KEYCTRL  "CLIENT_ERROR key contains control characters\r\n"

/* Enough tokens for every fixed-form command; GET keys are walked lazily. */
#define MAX_TOKENS 8

/* A complete request line at the start of buf[0..len): its content is
 * buf[0..line_len), the next request starts at line_end, and tok[0..ntok)
 * are its first words (rest: what did not fit). */
typedef struct {
  const char *buf;
  size_t len, line_end, line_len;
  McqSpan tok[MAX_TOKENS];
  guint ntok;
  McqSpan rest;
  guint64 max_body;
} Line;

/* The value decides, not the digit count: leading zeros are accepted in
 * any number, as memcached's strtoul accepts them, and only a value past
 * 2^64 - 1 overflows. */
gboolean
mcq_parse_u64 (const char *s, size_t len, guint64 *out)
{
  guint64 v = 0;

  if (len == 0)
    return FALSE;
  for (size_t i = 0; i < len; i++)
    {
      if (s[i] < '0' || s[i] > '9')
        return FALSE;
      guint64 d = (guint64) (s[i] - '0');
      if (v > (G_MAXUINT64 - d) / 10)
        return FALSE;
      v = v * 10 + d;
    }
  *out = v;
  return TRUE;
}

gboolean
mcq_parse_i64 (const char *s, size_t len, gint64 *out)
{
  gboolean neg = FALSE;
  guint64 v;

  if (len > 0 && s[0] == '-')
    {
      neg = TRUE;
      s++;
      len--;
    }
  if (!mcq_parse_u64 (s, len, &v))
    return FALSE;
  if (neg)
    {
      if (v > (guint64) G_MAXINT64 + 1)
        return FALSE;
      *out = (gint64) (0 - v);
    }
  else
    {
      if (v > (guint64) G_MAXINT64)
        return FALSE;
      *out = (gint64) v;
    }
  return TRUE;
}

const char *
mcq_check_key (const char *key, size_t len)
{
  if (len > MCQ_KEY_MAX)
    return ERR_KEYLEN;
  for (size_t i = 0; i < len; i++)
    {
      guchar c = (guchar) key[i];
      if (c < 0x20 || c == 0x7f)
        return ERR_KEYCTRL;
    }
  return NULL;
}

static gboolean
span_is (McqSpan s, const char *word)
{
  size_t n = strlen (word);
  return s.len == n && memcmp (s.ptr, word, n) == 0;
}

/* A number whose value is 0, however many digits it is written with. */
static gboolean
span_is_zero (McqSpan s)
{
  guint64 v;
  return mcq_parse_u64 (s.ptr, s.len, &v) && v == 0;
}

/* Splits a line on runs of spaces.  Returns the number of tokens found (at
 * most max); *rest is set to the untokenised remainder (empty when all of
 * the line fit). */
static guint
tokenize (const char *line, size_t len, McqSpan *tok, guint max, McqSpan *rest)
{
  size_t i = 0;
  guint n = 0;

  while (i < len && n < max)
    {
      while (i < len && line[i] == ' ')
        i++;
      if (i == len)
        break;
      size_t start = i;
      while (i < len && line[i] != ' ')
        i++;
      tok[n].ptr = line + start;
      tok[n].len = i - start;
      n++;
    }
  while (i < len && line[i] == ' ')
    i++;
  rest->ptr = line + i;
  rest->len = len - i;
  return n;
}

static McqParseResult
result (McqParseStatus status, size_t consumed, const char *error)
{
  McqParseResult r = { .status = status, .consumed = consumed, .error = error };
  return r;
}

/* Whether a line whose tokens are tok[0..ntok) (rest: what did not fit)
 * asks for no reply.  As in memcached, an error on such a line is not
 * answered either: the client reads no reply to it, so an error line
 * would be taken as the reply to its next request (pymemcache, whose sets
 * are noreply by default, then dropped the reply to its next get, and the
 * message that get had taken with it). */
static gboolean
line_is_noreply (const McqSpan *tok, guint ntok, const McqSpan *rest)
{
  return ntok >= 2 && rest->len == 0 && span_is (tok[ntok - 1], "noreply");
}

static McqParseResult
line_error (size_t consumed, const char *error, const McqSpan *tok, guint ntok,
            const McqSpan *rest)
{
  McqParseResult r = result (MCQ_PARSE_ERROR, consumed, error);
  r.noreply = line_is_noreply (tok, ntok, rest);
  return r;
}

gboolean
mcq_request_next_key (const McqRequest *req, size_t *pos, McqSpan *key)
{
  const char *p = req->key.ptr;
  size_t len = req->key.len;
  size_t i = *pos;

  while (i < len && p[i] == ' ')
    i++;
  if (i == len)
    {
      *pos = i;
      return FALSE;
    }
  size_t start = i;
  while (i < len && p[i] != ' ')
    i++;
  key->ptr = p + start;
  key->len = i - start;
  *pos = i;
  return TRUE;
}

/* "set <key> <flags> <exptime> <bytes> [noreply]" followed by the body. */
static McqParseResult
parse_set (const Line *l, McqCommand cmd, McqRequest *req)
{
  const McqSpan *tok = l->tok, *rest = &l->rest;
  guint ntok = l->ntok;
  size_t line_end = l->line_end;
  guint64 flags, bytes;
  gint64 exptime;
  const char *problem;

  if (ntok < 5 || !mcq_parse_u64 (tok[4].ptr, tok[4].len, &bytes) ||
      bytes > MCQ_DECLARED_BODY_MAX)
    return result (MCQ_PARSE_ERROR, line_end, ERR_FORMAT);

  /* From here on the byte count is trusted, so any error also swallows the
   * body: the client will send it whatever we answer.  (Were it left in
   * the stream, a body such as "get q" would run as a request of its own
   * and take a message nobody asked for.) */
  if (ntok > 6 || rest->len > 0 ||
      !mcq_parse_u64 (tok[2].ptr, tok[2].len, &flags) || flags > G_MAXUINT32 ||
      !mcq_parse_i64 (tok[3].ptr, tok[3].len, &exptime) ||
      (ntok == 6 && !span_is (tok[5], "noreply")))
    problem = ERR_FORMAT;
  else
    problem = mcq_check_key (tok[1].ptr, tok[1].len);
  if (problem != NULL || bytes > l->max_body)
    {
      McqParseResult r = line_error (line_end, problem != NULL ? problem : ERR_TOOLARGE,
                                     tok, ntok, rest);
      r.discard = bytes + 2;
      return r;
    }

  if (l->len - line_end < bytes + 2)
    {
      McqParseResult r = result (MCQ_PARSE_NEED_MORE, 0, NULL);
      r.need = line_end + bytes + 2;
      return r;
    }

  const char *body = l->buf + line_end;
  if (body[bytes] != '\r' || body[bytes + 1] != '\n')
    {
      /* Longer than declared (or garbage after it): drop the declared body
       * and the rest of that line so the next request starts clean. */
      McqParseResult r = line_error (line_end + bytes, ERR_CHUNK, tok, ntok, rest);
      r.skip_line = TRUE;
      return r;
    }

  req->cmd = cmd;
  req->key = tok[1];
  req->flags = (guint32) flags;
  req->bytes = bytes;
  req->body.ptr = body;
  req->body.len = bytes;
  req->noreply = ntok == 6;
  return result (MCQ_PARSE_REQUEST, line_end + bytes + 2, NULL);
}

/* "get <key>*" and "gets <key>*": every key, however many. */
static McqParseResult
parse_get (const Line *l, McqCommand cmd, McqRequest *req)
{
  size_t line_end = l->line_end;
  McqSpan keys, k;
  size_t pos = 0;
  guint n = 0;

  if (l->ntok < 2)
    return result (MCQ_PARSE_ERROR, line_end, ERR_UNKNOWN);

  keys.ptr = l->tok[1].ptr;
  keys.len = l->line_len - (size_t) (l->tok[1].ptr - l->buf);
  req->key = keys;
  while (mcq_request_next_key (req, &pos, &k))
    {
      const char *err = mcq_check_key (k.ptr, k.len);
      if (err != NULL)
        return result (MCQ_PARSE_ERROR, line_end, err);
      n++;
    }
  req->cmd = cmd;
  req->nkeys = n;
  req->with_cas = l->tok[0].len == 4;
  return result (MCQ_PARSE_REQUEST, line_end, NULL);
}

/* Storage verbs a cache has and a queue does not ("add", "cas", ...).
 * They are answered ERROR like any unknown command, but their body is
 * swallowed so that the connection stays in step with the client. */
static McqParseResult
parse_foreign (const Line *l, McqCommand cmd, McqRequest *req)
{
  McqParseResult r = result (MCQ_PARSE_ERROR, l->line_end, ERR_UNKNOWN);
  guint64 bytes;

  if (l->rest.len == 0 && l->ntok >= 5 &&
      mcq_parse_u64 (l->tok[4].ptr, l->tok[4].len, &bytes) && bytes <= MCQ_DECLARED_BODY_MAX)
    r.discard = bytes + 2;
  return r;
}

/* Finds the request line at the start of buf[0..len).  MCQ_PARSE_REQUEST:
 * it ends just before *line_end, and its content (without its "\r\n" or
 * "\n") is *line_len bytes long.  MCQ_PARSE_NEED_MORE: it may still end
 * within the limit.  MCQ_PARSE_FATAL: its content is past MCQ_LINE_MAX.
 * The limit is on the content whichever the terminator, so a line ends at
 * most MCQ_LINE_MAX + 2 bytes in. */
static McqParseStatus
find_line (const char *buf, size_t len, size_t *line_end, size_t *line_len)
{
  const char *nl = memchr (buf, '\n', MIN (len, (size_t) MCQ_LINE_MAX + 2));

  if (nl == NULL)
    {
      /* a '\r' just past the limit may be the start of the "\r\n" */
      if (len > MCQ_LINE_MAX + 1 || (len == MCQ_LINE_MAX + 1 && buf[MCQ_LINE_MAX] != '\r'))
        return MCQ_PARSE_FATAL;
      return MCQ_PARSE_NEED_MORE;
    }
  *line_end = (size_t) (nl - buf) + 1;
  *line_len = *line_end - 1;
  if (*line_len > 0 && buf[*line_len - 1] == '\r')
    (*line_len)--;
  return *line_len > MCQ_LINE_MAX ? MCQ_PARSE_FATAL : MCQ_PARSE_REQUEST;
}

/* "delete <key> [0] [noreply]"; the time, when given, must be 0. */
static McqParseResult
parse_delete (const Line *l, McqCommand cmd, McqRequest *req)
{
  const McqSpan *tok = l->tok, *rest = &l->rest;
  guint ntok = l->ntok;
  size_t line_end = l->line_end;
  gboolean noreply = FALSE;

  if (rest->len > 0)
    return result (MCQ_PARSE_ERROR, line_end, ERR_FORMAT);
  if (ntok < 2)
    return result (MCQ_PARSE_ERROR, line_end, ERR_UNKNOWN);
  for (guint i = 2; i < ntok; i++)
    {
      if (span_is (tok[i], "noreply") && i == ntok - 1)
        noreply = TRUE;
      else if (!(i == 2 && span_is_zero (tok[i])))
        return line_error (line_end, ERR_FORMAT, tok, ntok, rest);
    }
  const char *err = mcq_check_key (tok[1].ptr, tok[1].len);
  if (err != NULL)
    return line_error (line_end, err, tok, ntok, rest);
  req->cmd = cmd;
  req->key = tok[1];
  req->noreply = noreply;
  return result (MCQ_PARSE_REQUEST, line_end, NULL);
}

/* "verbosity <level> [noreply]" */
static McqParseResult
parse_verbosity (const Line *l, McqCommand cmd, McqRequest *req)
{
  const McqSpan *tok = l->tok, *rest = &l->rest;
  guint ntok = l->ntok;
  size_t line_end = l->line_end;
  guint64 level;

  if (rest->len > 0 || ntok < 2)
    return result (MCQ_PARSE_ERROR, line_end, ERR_UNKNOWN);
  if (ntok > 3 || (ntok == 3 && !span_is (tok[2], "noreply")) ||
      !mcq_parse_u64 (tok[1].ptr, tok[1].len, &level) || level > G_MAXUINT32)
    return line_error (line_end, ERR_FORMAT, tok, ntok, rest);
  req->cmd = cmd;
  req->verbosity = (guint32) level;
  req->noreply = ntok == 3;
  return result (MCQ_PARSE_REQUEST, line_end, NULL);
}

/* "stats", "stats queue", "stats reset". */
static McqParseResult
parse_stats (const Line *l, McqCommand cmd, McqRequest *req)
{
  if (l->rest.len > 0)
    return result (MCQ_PARSE_ERROR, l->line_end, ERR_UNKNOWN);
  if (l->ntok == 1)
    req->cmd = cmd;
  else if (l->ntok == 2 && span_is (l->tok[1], "queue"))
    req->cmd = MCQ_CMD_STATS_QUEUE;
  else if (l->ntok == 2 && span_is (l->tok[1], "reset"))
    req->cmd = MCQ_CMD_STATS_RESET;
  else
    return result (MCQ_PARSE_ERROR, l->line_end, ERR_UNKNOWN);
  return result (MCQ_PARSE_REQUEST, l->line_end, NULL);
}

/* A command of one word and nothing else: "version", "quit", ... */
static McqParseResult
parse_bare (const Line *l, McqCommand cmd, McqRequest *req)
{
  if (l->ntok != 1 || l->rest.len > 0)
    return result (MCQ_PARSE_ERROR, l->line_end, ERR_UNKNOWN);
  req->cmd = cmd;
  return result (MCQ_PARSE_REQUEST, l->line_end, NULL);
}

typedef McqParseResult (*ParseFunc) (const Line *l, McqCommand cmd, McqRequest *req);

/* The command words, the most frequent first; cmd is what parse is
 * given (unused by parse_foreign). */
static const struct {
  const char *word;
  ParseFunc parse;
  McqCommand cmd;
} commands[] = {
  { "get", parse_get, MCQ_CMD_GET },
  { "set", parse_set, MCQ_CMD_SET },
  { "gets", parse_get, MCQ_CMD_GET },
  { "delete", parse_delete, MCQ_CMD_DELETE },
  { "stats", parse_stats, MCQ_CMD_STATS },
  { "verbosity", parse_verbosity, MCQ_CMD_VERBOSITY },
  { "version", parse_bare, MCQ_CMD_VERSION },
  { "quit", parse_bare, MCQ_CMD_QUIT },
  { "db_checkpoint", parse_bare, MCQ_CMD_DB_CHECKPOINT },
  { "db_archive", parse_bare, MCQ_CMD_DB_ARCHIVE },
  { "add", parse_foreign, MCQ_CMD_SET },
  { "replace", parse_foreign, MCQ_CMD_SET },
  { "append", parse_foreign, MCQ_CMD_SET },
  { "prepend", parse_foreign, MCQ_CMD_SET },
  { "cas", parse_foreign, MCQ_CMD_SET },
};

McqParseResult
mcq_parse_request (const char *buf, size_t len, guint64 max_body, McqRequest *req)
{
  Line l = { .buf = buf, .len = len, .max_body = max_body };
  McqParseStatus found;

  memset (req, 0, sizeof *req);

  found = find_line (buf, len, &l.line_end, &l.line_len);
  if (found == MCQ_PARSE_FATAL)
    return result (MCQ_PARSE_FATAL, len, ERR_LINE);
  if (found == MCQ_PARSE_NEED_MORE)
    return result (MCQ_PARSE_NEED_MORE, 0, NULL);

  l.ntok = tokenize (buf, l.line_len, l.tok, MAX_TOKENS, &l.rest);
  for (guint i = 0; l.ntok > 0 && i < G_N_ELEMENTS (commands); i++)
    if (span_is (l.tok[0], commands[i].word))
      return commands[i].parse (&l, commands[i].cmd, req);
  return result (MCQ_PARSE_ERROR, l.line_end, ERR_UNKNOWN);
}
