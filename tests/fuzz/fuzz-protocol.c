/* fuzz-protocol.c — libFuzzer target for the request parser (src/protocol.c).
 *
 * The input is a byte stream as a client would send it.  It is run through
 * a model of a connection (src/connection.c): bytes arrive in chunks, are
 * appended to an input buffer, and the parser is called on what is buffered,
 * honouring `consumed`, `discard` and `skip_line` exactly as the connection
 * does, until it asks for more bytes or closes.
 *
 * Each call to mcq_parse_request() gets a private heap copy of exactly the
 * buffered bytes, so AddressSanitizer sees any read past `len`.  Every result
 * is checked (consumed <= len, spans inside the buffer, keys valid, bodies
 * as declared, error texts known, ...), and re-parsing just the bytes the
 * result claims to depend on must give the same result.
 *
 * The stream is run (with one of several max-body settings, picked by its
 * hash) once in one piece and once in pseudo-random chunks: both runs must
 * produce the same sequence of requests and errors, since how TCP splits a
 * stream must not change how it is understood.
 *
 * Build and run: tests/fuzz/run (clang, -Dfuzzing=true).  Any failed check
 * aborts with the file:line of the check, which libFuzzer reports as a crash
 * and saves the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define CHECK(cond)                                                             \
  do                                                                            \
    {                                                                           \
      if (!(cond))                                                              \
        {                                                                       \
          fprintf (stderr, "fuzz-protocol: check failed at %s:%d: %s\n",        \
                   __FILE__, __LINE__, #cond);                                  \
          abort ();                                                             \
        }                                                                       \
    }                                                                           \
  while (0)

/* Every reply the parser may hand back for an error. */
static const char *const known_errors[] = {
  "CLIENT_ERROR bad command line format\r\n",
  "CLIENT_ERROR bad data chunk\r\n",
  "SERVER_ERROR object too large for cache\r\n",
  "CLIENT_ERROR line too long\r\n",
  "ERROR\r\n",
  "CLIENT_ERROR key too long\r\n",
  "CLIENT_ERROR key contains control characters\r\n",
};

/* max-body settings each stream is run with: tiny (so "too large" is easy
 * to reach), a small usual one, and the largest -B accepts (1 GiB). */
static const guint64 max_bodies[] = { 5, 1024, 1024 * 1024 * 1024 };

/* FUZZ_TOLERATE=discard-wrap skips the check on `discard` (for exploring
 * past that finding while it is open); CI never sets it. */
static int tolerate_discard_wrap;

int LLVMFuzzerInitialize (int *argc, char ***argv);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *t = getenv ("FUZZ_TOLERATE");
  tolerate_discard_wrap = t != NULL && strstr (t, "discard-wrap") != NULL;
  return 0;
}

/* ---- event log: what the connection would act on ------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap;
} Log;

/* Appends n bytes at p to a growable buffer (data, len, cap), doubling
 * from first_cap. */
static void
buf_append (uint8_t **data, size_t *len, size_t *cap, size_t first_cap, const void *p, size_t n)
{
  if (n == 0)
    return;
  if (*len + n > *cap)
    {
      size_t c = *cap ? *cap : first_cap;
      while (c < *len + n)
        c *= 2;
      *data = realloc (*data, c);
      CHECK (*data != NULL);
      *cap = c;
    }
  memcpy (*data + *len, p, n);
  *len += n;
}

static void
log_put (Log *l, const void *p, size_t n)
{
  buf_append (&l->data, &l->len, &l->cap, 256, p, n);
}

static void
log_u64 (Log *l, uint64_t v)
{
  log_put (l, &v, sizeof v);
}

static void
log_span (Log *l, const char *p, size_t n)
{
  log_u64 (l, n);
  log_put (l, p, n);
}

/* ---- checks --------------------------------------------------------------- */

static int
in_buffer (const char *buf, size_t len, const char *p, size_t n)
{
  return p >= buf && n <= len && (size_t) (p - buf) <= len - n;
}

static void
check_key (const char *k, size_t n)
{
  CHECK (n >= 1 && n <= MCQ_KEY_MAX);
  CHECK (mcq_check_key (k, n) == NULL);
  for (size_t i = 0; i < n; i++)
    CHECK (k[i] != ' ' && k[i] != '\n' && k[i] != '\r' && k[i] != '\0');
}

static int
known_error (const char *e)
{
  for (size_t i = 0; i < sizeof known_errors / sizeof known_errors[0]; i++)
    if (e != NULL && strcmp (e, known_errors[i]) == 0)
      return 1;
  return 0;
}

/* Offset just past the first '\n' of buf[0..len), or 0 if there is none. */
static size_t
line_end_of (const char *buf, size_t len)
{
  const char *nl = memchr (buf, '\n', len);
  return nl ? (size_t) (nl - buf) + 1 : 0;
}

/* Length of the content of the line that ends at le (just past its '\n'):
 * without its "\r\n" or "\n". */
static size_t
content_len (const char *buf, size_t le)
{
  size_t n = le - 1;
  return n > 0 && buf[n - 1] == '\r' ? n - 1 : n;
}

/* Whether buf[0..len), which holds no '\n', may still become a line whose
 * content is within MCQ_LINE_MAX: a "\r" just past the limit may be the
 * start of its "\r\n". */
static int
may_still_fit (const char *buf, size_t len)
{
  return len <= MCQ_LINE_MAX || (len == MCQ_LINE_MAX + 1 && buf[MCQ_LINE_MAX] == '\r');
}

/* Checks one result against the bytes it was parsed from. */
static void
check_result (const char *buf, size_t len, guint64 max_body, const McqParseResult *r,
              const McqRequest *req)
{
  size_t le = line_end_of (buf, len < (size_t) MCQ_LINE_MAX + 2 ? len : (size_t) MCQ_LINE_MAX + 2);

  switch (r->status)
    {
    case MCQ_PARSE_NEED_MORE:
      CHECK (r->consumed == 0);
      /* Waiting for the end of a line can only go on so long. */
      CHECK (le > 0 ? content_len (buf, le) <= MCQ_LINE_MAX : may_still_fit (buf, len));
      break;

    case MCQ_PARSE_FATAL:
      CHECK (known_error (r->error));
      CHECK (strcmp (r->error, "CLIENT_ERROR line too long\r\n") == 0);
      CHECK (r->consumed <= len);
      CHECK (le > 0 ? content_len (buf, le) > MCQ_LINE_MAX : !may_still_fit (buf, len));
      break;

    case MCQ_PARSE_ERROR:
      CHECK (known_error (r->error));
      CHECK (r->consumed > 0 && r->consumed <= len);
      CHECK (le > 0 && content_len (buf, le) <= MCQ_LINE_MAX);
      if (r->skip_line)
        {
          /* bad data chunk: the line, then the declared body, is dropped */
          CHECK (strcmp (r->error, "CLIENT_ERROR bad data chunk\r\n") == 0);
          CHECK (r->discard == 0);
          CHECK (r->consumed >= le && r->consumed - le <= max_body);
          CHECK (len - r->consumed >= 2);
          CHECK (buf[r->consumed] != '\r' || buf[r->consumed + 1] != '\n');
        }
      else
        CHECK (r->consumed == le);   /* just the line */
      if (r->discard > 0 && !tolerate_discard_wrap)
        /* a swallowed body is followed by its "\r\n": a count that wrapped
         * around 2^64 would leave the stream out of step */
        CHECK (r->discard >= 2);
      break;

    case MCQ_PARSE_REQUEST:
      CHECK (r->consumed > 0 && r->consumed <= len);
      CHECK (le > 0 && le <= r->consumed);
      CHECK (content_len (buf, le) <= MCQ_LINE_MAX);
      CHECK (r->error == NULL);
      CHECK ((int) req->cmd >= MCQ_CMD_SET && (int) req->cmd <= MCQ_CMD_DB_ARCHIVE);
      switch (req->cmd)
        {
        case MCQ_CMD_SET:
          CHECK (in_buffer (buf, le, req->key.ptr, req->key.len));
          check_key (req->key.ptr, req->key.len);
          CHECK (req->bytes <= max_body);
          CHECK (req->body.len == req->bytes);
          CHECK (req->body.ptr == buf + le);
          CHECK (r->consumed == le + req->body.len + 2);
          CHECK (buf[r->consumed - 2] == '\r' && buf[r->consumed - 1] == '\n');
          break;
        case MCQ_CMD_GET:
          {
            size_t pos = 0, prev = 0;
            guint n = 0;
            McqSpan k;

            CHECK (r->consumed == le);
            CHECK (in_buffer (buf, le, req->key.ptr, req->key.len));
            CHECK (req->nkeys >= 1);
            while (mcq_request_next_key (req, &pos, &k))
              {
                CHECK (pos > prev && pos <= req->key.len);
                prev = pos;
                CHECK (in_buffer (req->key.ptr, req->key.len, k.ptr, k.len));
                check_key (k.ptr, k.len);
                n++;
              }
            CHECK (n == req->nkeys);
            break;
          }
        case MCQ_CMD_DELETE:
          CHECK (r->consumed == le);
          CHECK (in_buffer (buf, le, req->key.ptr, req->key.len));
          check_key (req->key.ptr, req->key.len);
          break;
        default:
          CHECK (r->consumed == le);
          break;
        }
      break;

    default:
      CHECK (!"unknown parse status");
    }
}

static void
log_result (Log *l, const McqParseResult *r, const McqRequest *req)
{
  log_u64 (l, r->status);
  /* FATAL "consumes" whatever was buffered: that depends on the chunking
   * and does not matter, the connection closes. */
  log_u64 (l, r->status == MCQ_PARSE_FATAL ? 0 : r->consumed);
  if (r->status == MCQ_PARSE_ERROR || r->status == MCQ_PARSE_FATAL)
    {
      log_span (l, r->error, strlen (r->error));
      log_u64 (l, r->discard);
      log_u64 (l, (uint64_t) r->skip_line);
      return;
    }
  log_u64 (l, req->cmd);
  log_span (l, req->key.ptr, req->key.len);
  log_u64 (l, req->flags);
  log_u64 (l, req->bytes);
  log_span (l, req->body.ptr, req->body.len);
  log_u64 (l, req->nkeys);
  log_u64 (l, (uint64_t) req->with_cas);
  log_u64 (l, (uint64_t) req->noreply);
  log_u64 (l, req->verbosity);
}

static int
same_span (McqSpan a, McqSpan b)
{
  return a.len == b.len && (a.len == 0 || memcmp (a.ptr, b.ptr, a.len) == 0);
}

static int
same_result (const McqParseResult *a, const McqRequest *ra, const McqParseResult *b,
             const McqRequest *rb)
{
  if (a->status != b->status || a->consumed != b->consumed)
    return 0;
  if (a->status == MCQ_PARSE_ERROR || a->status == MCQ_PARSE_FATAL)
    return strcmp (a->error, b->error) == 0 && a->discard == b->discard &&
           a->skip_line == b->skip_line;
  return ra->cmd == rb->cmd && same_span (ra->key, rb->key) && ra->flags == rb->flags &&
         ra->bytes == rb->bytes && same_span (ra->body, rb->body) && ra->nkeys == rb->nkeys &&
         ra->with_cas == rb->with_cas && ra->noreply == rb->noreply &&
         ra->verbosity == rb->verbosity;
}

/* Parses exactly buf[0..len) from a private heap copy. */
static McqParseResult
parse_copy (const uint8_t *src, size_t len, guint64 max_body, McqRequest *req, char **copy)
{
  *copy = malloc (len ? len : 1);
  CHECK (*copy != NULL);
  if (len)
    memcpy (*copy, src, len);
  return mcq_parse_request (*copy, len, max_body, req);
}

/* ---- the connection model ------------------------------------------------- */

typedef struct {
  uint8_t *in;
  size_t len, off, cap;
  guint64 discard;
  int skip_line;
  int closed;
  guint64 max_body;
  Log log;
  size_t steps;
} Conn;

static void
conn_feed (Conn *c, const uint8_t *data, size_t n)
{
  if (c->closed || n == 0)
    return;
  buf_append (&c->in, &c->len, &c->cap, 1024, data, n);

  /* The parser sees a private heap copy of exactly the buffered bytes, so
   * AddressSanitizer reports any read past the end of what it was given. */
  size_t base = c->off;
  uint8_t *window = malloc (c->len - base);
  CHECK (window != NULL);
  memcpy (window, c->in + base, c->len - base);

  while (!c->closed)
    {
      size_t avail = c->len - c->off;
      const uint8_t *buf;
      McqRequest req;
      McqParseResult r;

      /* Every step consumes at least one byte or stops: bounded. */
      CHECK (++c->steps <= 4 * (c->len + 1));
      if (avail == 0)
        break;
      buf = window + (c->off - base);
      if (c->discard > 0)
        {
          size_t k = avail < c->discard ? avail : (size_t) c->discard;
          c->discard -= k;
          c->off += k;
          continue;
        }
      if (c->skip_line)
        {
          const uint8_t *nl = memchr (buf, '\n', avail);
          c->off += nl ? (size_t) (nl - buf) + 1 : avail;
          c->skip_line = nl == NULL;
          continue;
        }

      r = mcq_parse_request ((const char *) buf, avail, c->max_body, &req);
      check_result ((const char *) buf, avail, c->max_body, &r, &req);
      if (r.status == MCQ_PARSE_REQUEST || r.status == MCQ_PARSE_ERROR)
        {
          /* The result may only depend on the bytes it consumed (plus the
           * two it looked at to reject a body that was too long). */
          size_t need = r.consumed + (r.skip_line ? 2 : 0);
          McqRequest req2;
          char *copy2;
          McqParseResult r2;

          CHECK (need <= avail);
          r2 = parse_copy (buf, need, c->max_body, &req2, &copy2);
          CHECK (same_result (&r, &req, &r2, &req2));
          free (copy2);
        }
      if (r.status != MCQ_PARSE_NEED_MORE)
        log_result (&c->log, &r, &req);

      if (r.status == MCQ_PARSE_NEED_MORE)
        break;
      switch (r.status)
        {
        case MCQ_PARSE_REQUEST:
          if (req.cmd == MCQ_CMD_QUIT)
            c->closed = 1;
          break;
        case MCQ_PARSE_ERROR:
          c->discard = r.discard;
          c->skip_line = r.skip_line;
          break;
        case MCQ_PARSE_FATAL:
          c->closed = 1;
          break;
        default:
          break;
        }
      c->off += r.consumed;
      CHECK (c->off <= c->len);
    }
  free (window);
}

static void
conn_finish (Conn *c)
{
  /* The state left over goes into the log too: both runs must agree. */
  log_u64 (&c->log, c->closed ? 0 : c->len - c->off);
  log_u64 (&c->log, c->closed ? 0 : c->discard);
  log_u64 (&c->log, c->closed ? 0 : (uint64_t) c->skip_line);
  log_u64 (&c->log, (uint64_t) c->closed);
}

static void
conn_free (Conn *c)
{
  free (c->in);
  free (c->log.data);
}

static uint64_t
fnv1a (const uint8_t *p, size_t n)
{
  uint64_t h = 0xcbf29ce484222325u;
  for (size_t i = 0; i < n; i++)
    {
      h ^= p[i];
      h *= 0x100000001b3u;
    }
  return h;
}

static uint64_t
xorshift (uint64_t *s)
{
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  uint64_t seed = fnv1a (data, size) | 1;

  /* One max-body setting per input (from its hash): a third of the work
   * of trying all of them, and mutations reach every setting anyway. */
  size_t m = (size_t) (seed >> 32) % (sizeof max_bodies / sizeof max_bodies[0]);
    {
      Conn whole = { .max_body = max_bodies[m] };
      Conn chunked = { .max_body = max_bodies[m] };
      size_t pos = 0;
      /* Chunk sizes: byte by byte for short inputs now and then, else up
       * to a bound that is itself picked at random. */
      static const size_t bounds[] = { 1, 3, 16, 200, 4096, 20000 };
      size_t bound = bounds[xorshift (&seed) % (sizeof bounds / sizeof bounds[0])];
      /* at most about 128 chunks: each one costs a copy of what is buffered */
      if (bound < size / 64)
        bound = size / 64;

      conn_feed (&whole, data, size);
      conn_finish (&whole);

      while (pos < size)
        {
          size_t n = 1 + (size_t) (xorshift (&seed) % bound);
          if (n > size - pos)
            n = size - pos;
          conn_feed (&chunked, data + pos, n);
          pos += n;
        }
      conn_finish (&chunked);

      if (whole.log.len != chunked.log.len ||
          memcmp (whole.log.data, chunked.log.data, whole.log.len) != 0)
        {
          fprintf (stderr, "fuzz-protocol: max_body %llu: the stream parses differently "
                   "in one piece and in chunks of at most %zu bytes\n",
                   (unsigned long long) max_bodies[m], bound);
          abort ();
        }
      conn_free (&whole);
      conn_free (&chunked);
    }
  return 0;
}
