/* test-protocol.c — unit tests of the pure protocol parser (src/protocol.c):
 * every command form, every error reply, partial input and resynchronisation. */
#include <string.h>
#include "protocol.h"

#define MAXB 1024

static McqParseResult
parse (const char *s, McqRequest *req)
{
  return mcq_parse_request (s, strlen (s), MAXB, req);
}

static void
assert_error (const char *input, const char *reply)
{
  McqRequest req;
  McqParseResult r = parse (input, &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (r.error, ==, reply);
}

static void
test_set (void)
{
  McqRequest req;
  const char *in = "set q4 0 0 5\r\nhello\r\nget q4\r\n";
  McqParseResult r = parse (in, &req);

  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpint (req.cmd, ==, MCQ_CMD_SET);
  g_assert_cmpmem (req.key.ptr, req.key.len, "q4", 2);
  g_assert_cmpmem (req.body.ptr, req.body.len, "hello", 5);
  g_assert_false (req.noreply);
  g_assert_cmpuint (r.consumed, ==, strlen ("set q4 0 0 5\r\nhello\r\n"));

  r = parse ("set q 4294967295 -1 3 noreply\r\na\r\n\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpuint (req.flags, ==, 4294967295u);
  g_assert_true (req.noreply);
  g_assert_cmpmem (req.body.ptr, req.body.len, "a\r\n", 3);

  /* a body of exactly the maximum is accepted */
  g_autofree char *big = g_malloc (MAXB + 64);
  int n = g_snprintf (big, 64, "set q 0 0 %d\r\n", MAXB);
  memset (big + n, 'x', MAXB);
  memcpy (big + n + MAXB, "\r\n", 2);
  r = mcq_parse_request (big, (size_t) n + MAXB + 2, MAXB, &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpuint (req.body.len, ==, MAXB);

  /* zero-length body, bare \n on the command line */
  r = parse ("set q 0 0 0\n\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpuint (req.body.len, ==, 0);
}

static void
test_partial (void)
{
  const char *in = "set q 7 0 5\r\nhello\r\n";
  size_t len = strlen (in);
  McqRequest req;

  for (size_t i = 0; i < len; i++)
    {
      McqParseResult r = mcq_parse_request (in, i, MAXB, &req);
      g_assert_cmpint (r.status, ==, MCQ_PARSE_NEED_MORE);
      g_assert_cmpuint (r.consumed, ==, 0);
      /* once the line is in, the whole request's length is known */
      g_assert_cmpuint (r.need, ==, i < 13 ? 0 : len);
    }
  g_assert_cmpint (mcq_parse_request (in, len, MAXB, &req).status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpuint (req.flags, ==, 7);
}

static void
test_set_errors (void)
{
  McqRequest req;
  McqParseResult r;

  assert_error ("set q 0 0 -1\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0 abc\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q x 0 5\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q -1 0 5\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 4294967296 0 5\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 zz 1\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0 1 noreply extra\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0 1 maybe\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0 99999999999999999999999\r\n", "CLIENT_ERROR bad command line format\r\n");
  /* lengths past INT_MAX - 2 (as in memcached) are a malformed line, so
   * nothing after it is swallowed: the client will not send such a body */
  assert_error ("set q 0 0 18446744073709551615\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("set q 0 0 18446744073709551613\r\n", "CLIENT_ERROR bad command line format\r\n");
  r = parse ("set q 0 0 2147483646\r\nversion\r\n", &req);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad command line format\r\n");
  g_assert_cmpuint (r.consumed, ==, strlen ("set q 0 0 2147483646\r\n"));
  g_assert_cmpuint (r.discard, ==, 0);
  r = parse ("set q 0 0 2147483645\r\n", &req);
  g_assert_cmpstr (r.error, ==, "SERVER_ERROR object too large for cache\r\n");
  g_assert_cmpuint (r.discard, ==, 2147483647);
  r = parse ("append q 0 0 2147483646\r\nversion\r\n", &req);
  g_assert_cmpstr (r.error, ==, "ERROR\r\n");
  g_assert_cmpuint (r.discard, ==, 0);

  /* a malformed line consumes only itself */
  r = parse ("set q 0 0 -1\r\nversion\r\n", &req);
  g_assert_cmpuint (r.consumed, ==, strlen ("set q 0 0 -1\r\n"));
  g_assert_cmpuint (r.discard, ==, 0);

  /* a valid byte count with another field wrong: the declared body is
   * swallowed too, or a body like "get victim" would run as a request */
  r = parse ("set q 1.5 0 12\r\nget victim\r\n\r\nversion\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad command line format\r\n");
  g_assert_cmpuint (r.consumed, ==, strlen ("set q 1.5 0 12\r\n"));
  g_assert_cmpuint (r.discard, ==, 14);
  r = parse ("set q 4294967296 0 5\r\n", &req);
  g_assert_cmpuint (r.discard, ==, 7);
  r = parse ("set q 0 zz 5\r\n", &req);
  g_assert_cmpuint (r.discard, ==, 7);
  r = parse ("set q 0 0 5 norepl\r\n", &req);
  g_assert_cmpuint (r.discard, ==, 7);
  r = parse ("set q 0 0 5 noreply extra\r\n", &req);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad command line format\r\n");
  g_assert_cmpuint (r.discard, ==, 7);
  /* too few fields: no byte count to trust */
  r = parse ("set q 0 5\r\n", &req);
  g_assert_cmpuint (r.discard, ==, 0);

  /* too large: the declared body is swallowed */
  r = parse ("set q 0 0 2000\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (r.error, ==, "SERVER_ERROR object too large for cache\r\n");
  g_assert_cmpuint (r.discard, ==, 2002);

  /* longer than declared: declared bytes plus the rest of the line go */
  r = parse ("set q 0 0 5\r\nhelloXX\r\nversion\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_ERROR);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad data chunk\r\n");
  g_assert_cmpuint (r.consumed, ==, strlen ("set q 0 0 5\r\nhello"));
  g_assert_true (r.skip_line);
}

/* An error on a line ending in "noreply" is not answered (as in
 * memcached): the client reads no reply to such a request.  Lines that
 * do not end in it, or whose end we cannot see, are answered. */
static void
test_noreply_errors (void)
{
  static const struct { const char *line; gboolean quiet; guint64 discard; } cases[] = {
    { "set q 0 0 2000 noreply\r\n", TRUE, 2002 },          /* too large */
    { "set q 1.5 0 5 noreply\r\n", TRUE, 7 },              /* bad flags */
    { "set q 0 0 5 bogus noreply\r\n", TRUE, 7 },
    { "set q\x01 0 0 5 noreply\r\n", TRUE, 7 },           /* bad key */
    { "set q 0 0 5 noreply\r\nhelloXX\r\n", TRUE, 0 },   /* bad data chunk */
    { "set q 0 0 2000\r\n", FALSE, 2002 },
    { "set q 0 0 5 noreply extra\r\n", FALSE, 7 },
    { "set q 0 0 x noreply\r\n", FALSE, 0 },             /* no byte count to trust */
    { "delete q 5 noreply\r\n", TRUE, 0 },
    { "delete q\x01 noreply\r\n", TRUE, 0 },
    { "delete q 5\r\n", FALSE, 0 },
    { "verbosity x noreply\r\n", TRUE, 0 },
    { "verbosity x\r\n", FALSE, 0 },
    { "bogus noreply\r\n", FALSE, 0 },                   /* not a command we know */
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      McqRequest req;
      McqParseResult r = parse (cases[i].line, &req);
      g_test_message ("%s", cases[i].line);
      g_assert_cmpint (r.status, ==, MCQ_PARSE_ERROR);
      g_assert_cmpint (r.noreply, ==, cases[i].quiet);
      g_assert_cmpuint (r.discard, ==, cases[i].discard);
    }
}

static void
test_keys (void)
{
  McqRequest req;
  McqParseResult r;
  g_autofree char *k250 = g_strnfill (250, 'k');
  g_autofree char *k251 = g_strnfill (251, 'k');
  g_autofree char *ok = g_strdup_printf ("set %s 0 0 1\r\nx\r\n", k250);
  g_autofree char *bad = g_strdup_printf ("set %s 0 0 1\r\nx\r\n", k251);
  g_autofree char *badget = g_strdup_printf ("get a %s\r\n", k251);

  g_assert_cmpint (parse (ok, &req).status, ==, MCQ_PARSE_REQUEST);
  r = parse (bad, &req);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR key too long\r\n");
  g_assert_cmpuint (r.discard, ==, 3);
  assert_error (badget, "CLIENT_ERROR key too long\r\n");
  assert_error ("set a\001b 0 0 1\r\nx\r\n", "CLIENT_ERROR key contains control characters\r\n");
  assert_error ("get a\177\r\n", "CLIENT_ERROR key contains control characters\r\n");
  g_assert_nonnull (mcq_check_key ("a\tb", 3));
  g_assert_null (mcq_check_key ("queue.name-1", 12));
}

static void
test_get (void)
{
  McqRequest req;
  McqSpan k;
  size_t pos = 0;
  McqParseResult r = parse ("gets  a  bb ccc\r\n", &req);

  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpint (req.cmd, ==, MCQ_CMD_GET);
  g_assert_true (req.with_cas);
  g_assert_cmpuint (req.nkeys, ==, 3);
  g_assert_true (mcq_request_next_key (&req, &pos, &k));
  g_assert_cmpmem (k.ptr, k.len, "a", 1);
  g_assert_true (mcq_request_next_key (&req, &pos, &k));
  g_assert_cmpmem (k.ptr, k.len, "bb", 2);
  g_assert_true (mcq_request_next_key (&req, &pos, &k));
  g_assert_cmpmem (k.ptr, k.len, "ccc", 3);
  g_assert_false (mcq_request_next_key (&req, &pos, &k));

  r = parse ("get q\n", &req);
  g_assert_false (req.with_cas);
  g_assert_cmpuint (req.nkeys, ==, 1);
  assert_error ("get\r\n", "ERROR\r\n");
}

static void
test_other_commands (void)
{
  McqRequest req;
  struct { const char *in; McqCommand cmd; } ok[] = {
    { "delete q\r\n", MCQ_CMD_DELETE },
    { "delete q 0\r\n", MCQ_CMD_DELETE },
    { "delete q noreply\r\n", MCQ_CMD_DELETE },
    { "stats\r\n", MCQ_CMD_STATS },
    { "stats queue\r\n", MCQ_CMD_STATS_QUEUE },
    { "stats reset\r\n", MCQ_CMD_STATS_RESET },
    { "version\r\n", MCQ_CMD_VERSION },
    { "verbosity 1\r\n", MCQ_CMD_VERBOSITY },
    { "quit\r\n", MCQ_CMD_QUIT },
    { "db_checkpoint\r\n", MCQ_CMD_DB_CHECKPOINT },
    { "db_archive\r\n", MCQ_CMD_DB_ARCHIVE },
  };
  for (guint i = 0; i < G_N_ELEMENTS (ok); i++)
    {
      McqParseResult r = parse (ok[i].in, &req);
      g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
      g_assert_cmpint (req.cmd, ==, ok[i].cmd);
      g_assert_cmpuint (r.consumed, ==, strlen (ok[i].in));
    }
  parse ("delete q 0 noreply\r\n", &req);
  g_assert_true (req.noreply);

  assert_error ("flush_all\r\n", "ERROR\r\n");
  assert_error ("\r\n", "ERROR\r\n");
  assert_error ("stats bogus\r\n", "ERROR\r\n");
  assert_error ("delete q 5\r\n", "CLIENT_ERROR bad command line format\r\n");
  assert_error ("verbosity x\r\n", "CLIENT_ERROR bad command line format\r\n");

  /* cache-only storage verbs keep the stream in step */
  McqParseResult r = parse ("add q 0 0 5\r\nhello\r\n", &req);
  g_assert_cmpstr (r.error, ==, "ERROR\r\n");
  g_assert_cmpuint (r.discard, ==, 7);
}

/* Builds "get q" padded with spaces to `content` bytes, then `end`. */
static char *
line_of (size_t content, const char *end, size_t *len)
{
  size_t tl = strlen (end);
  char *line = g_malloc (content + tl);

  memset (line, ' ', content);
  memcpy (line, "get q", 5);
  memcpy (line + content, end, tl);
  *len = content + tl;
  return line;
}

/* The limit is on a line's content, whatever its terminator: MCQ_LINE_MAX
 * bytes make a request with "\n" or "\r\n", one more is too long with
 * either, and no prefix of a line within the limit is refused. */
static void
test_line_limit (void)
{
  static const char *const ends[] = { "\n", "\r\n" };
  McqRequest req;
  McqParseResult r;

  for (guint e = 0; e < G_N_ELEMENTS (ends); e++)
    for (size_t content = MCQ_LINE_MAX - 1; content <= MCQ_LINE_MAX + 1; content++)
      {
        size_t len;
        g_autofree char *line = line_of (content, ends[e], &len);

        g_test_message ("content %zu, terminator %zu bytes", content, strlen (ends[e]));
        r = mcq_parse_request (line, len, MAXB, &req);
        if (content <= MCQ_LINE_MAX)
          {
            g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
            g_assert_cmpint (req.cmd, ==, MCQ_CMD_GET);
            g_assert_cmpuint (req.nkeys, ==, 1);
            g_assert_cmpuint (r.consumed, ==, len);
            for (size_t i = MCQ_LINE_MAX - 2; i < len; i++)
              g_assert_cmpint (mcq_parse_request (line, i, MAXB, &req).status, ==,
                               MCQ_PARSE_NEED_MORE);
          }
        else
          {
            g_assert_cmpint (r.status, ==, MCQ_PARSE_FATAL);
            g_assert_cmpstr (r.error, ==, "CLIENT_ERROR line too long\r\n");
            /* refused as soon as the content is past the limit */
            r = mcq_parse_request (line, MCQ_LINE_MAX + 1, MAXB, &req);
            g_assert_cmpint (r.status, ==, MCQ_PARSE_FATAL);
          }
      }

  /* A "\r" just past the limit may start the terminator: wait for the
   * next byte, which decides. */
  {
    size_t len;
    g_autofree char *line = line_of (MCQ_LINE_MAX, "\rx", &len);

    g_assert_cmpint (mcq_parse_request (line, MCQ_LINE_MAX + 1, MAXB, &req).status, ==,
                     MCQ_PARSE_NEED_MORE);
    r = mcq_parse_request (line, len, MAXB, &req);
    g_assert_cmpint (r.status, ==, MCQ_PARSE_FATAL);
    g_assert_cmpstr (r.error, ==, "CLIENT_ERROR line too long\r\n");
  }
}

/* Feeds random bytes: the parser must never read out of bounds or claim to
 * consume more than it was given. */
static void
test_random (void)
{
  GRand *rand = g_rand_new_with_seed (42);
  guint8 buf[256];
  McqRequest req;

  for (int iter = 0; iter < 20000; iter++)
    {
      size_t len = (size_t) g_rand_int_range (rand, 0, sizeof buf);
      for (size_t i = 0; i < len; i++)
        {
          static const char alphabet[] = "set get 0 1 5 \r\n noreply -x";
          buf[i] = g_rand_boolean (rand) ? (guint8) alphabet[g_rand_int_range (rand, 0, sizeof alphabet - 1)]
                                         : (guint8) g_rand_int_range (rand, 0, 256);
        }
      guint8 *copy = g_memdup2 (buf, len);
      McqParseResult r = mcq_parse_request ((const char *) copy, len, 16, &req);
      g_assert_cmpuint (r.consumed, <=, len);
      if (r.status == MCQ_PARSE_REQUEST)
        g_assert_cmpuint (r.consumed, >, 0);
      g_free (copy);
    }
  g_rand_free (rand);
}

static void
test_numbers (void)
{
  guint64 u;
  gint64 i;

  g_assert_true (mcq_parse_u64 ("18446744073709551615", 20, &u));
  g_assert_cmpuint (u, ==, G_MAXUINT64);
  g_assert_false (mcq_parse_u64 ("18446744073709551616", 20, &u));
  g_assert_false (mcq_parse_u64 ("", 0, &u));
  g_assert_false (mcq_parse_u64 ("+1", 2, &u));
  g_assert_true (mcq_parse_i64 ("-9223372036854775808", 20, &i));
  g_assert_cmpint (i, ==, G_MININT64);
  g_assert_false (mcq_parse_i64 ("9223372036854775808", 19, &i));
}

/* Leading zeros: the value decides, not the number of digits. */
static void
test_leading_zeros (void)
{
  g_autofree char *zeros = g_strnfill (100, '0');
  g_autofree char *max = g_strconcat (zeros, "18446744073709551615", NULL);
  g_autofree char *over = g_strconcat (zeros, "18446744073709551616", NULL);
  g_autofree char *min = g_strconcat ("-", zeros, "9223372036854775808", NULL);
  guint64 u;
  gint64 i;

  g_assert_true (mcq_parse_u64 ("01", 2, &u));
  g_assert_cmpuint (u, ==, 1);
  g_assert_true (mcq_parse_u64 ("0000000000000000000001", 22, &u));
  g_assert_cmpuint (u, ==, 1);
  g_assert_true (mcq_parse_u64 (zeros, 100, &u));
  g_assert_cmpuint (u, ==, 0);
  g_assert_true (mcq_parse_u64 (max, strlen (max), &u));
  g_assert_cmpuint (u, ==, G_MAXUINT64);
  g_assert_false (mcq_parse_u64 (over, strlen (over), &u));
  g_assert_true (mcq_parse_i64 (min, strlen (min), &i));
  g_assert_cmpint (i, ==, G_MININT64);
  g_assert_true (mcq_parse_i64 ("-0000000000000000000000001", 26, &i));
  g_assert_cmpint (i, ==, -1);
}

/* Every numeric field of the protocol reads zero-padded numbers by value. */
static void
test_leading_zeros_in_requests (void)
{
  McqRequest req;
  McqParseResult r;

  r = parse ("set q 00000000000000000000000000007 -0000000000000000000000000001 "
             "0000000000000000000000000003\r\nabc\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpuint (req.flags, ==, 7);
  g_assert_cmpuint (req.bytes, ==, 3);
  g_assert_cmpmem (req.body.ptr, req.body.len, "abc", 3);

  r = parse ("set q 0 0 0000000000000000000001\r\nx\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpmem (req.body.ptr, req.body.len, "x", 1);
  g_assert_cmpuint (r.consumed, ==, strlen ("set q 0 0 0000000000000000000001\r\nx\r\n"));

  r = parse ("verbosity 0000000000000000000000001 noreply\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpint (req.cmd, ==, MCQ_CMD_VERBOSITY);
  g_assert_cmpuint (req.verbosity, ==, 1);

  r = parse ("delete q 00\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_cmpint (req.cmd, ==, MCQ_CMD_DELETE);
  r = parse ("delete q 0000000000000000000000000 noreply\r\n", &req);
  g_assert_cmpint (r.status, ==, MCQ_PARSE_REQUEST);
  g_assert_true (req.noreply);
  assert_error ("delete q 01\r\n", "CLIENT_ERROR bad command line format\r\n");

  /* a zero-padded value out of range is refused like the bare value, and a
   * readable byte count still has its block swallowed */
  r = parse ("set q 00000000000000000000004294967296 0 0000000000000000000005\r\n", &req);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad command line format\r\n");
  g_assert_cmpuint (r.discard, ==, 7);
  r = parse ("set q 0 0 000000000000000000000002000\r\n", &req);
  g_assert_cmpstr (r.error, ==, "SERVER_ERROR object too large for cache\r\n");
  g_assert_cmpuint (r.discard, ==, 2002);
  r = parse ("set q 0 0 000000000000000000000002147483646\r\n", &req);
  g_assert_cmpstr (r.error, ==, "CLIENT_ERROR bad command line format\r\n");
  g_assert_cmpuint (r.discard, ==, 0);
  r = parse ("append q 0 0 0000000000000000000005\r\n", &req);
  g_assert_cmpstr (r.error, ==, "ERROR\r\n");
  g_assert_cmpuint (r.discard, ==, 7);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/protocol/set", test_set);
  g_test_add_func ("/protocol/partial", test_partial);
  g_test_add_func ("/protocol/set-errors", test_set_errors);
  g_test_add_func ("/protocol/noreply-errors", test_noreply_errors);
  g_test_add_func ("/protocol/keys", test_keys);
  g_test_add_func ("/protocol/get", test_get);
  g_test_add_func ("/protocol/other", test_other_commands);
  g_test_add_func ("/protocol/line-limit", test_line_limit);
  g_test_add_func ("/protocol/random", test_random);
  g_test_add_func ("/protocol/numbers", test_numbers);
  g_test_add_func ("/protocol/leading-zeros", test_leading_zeros);
  g_test_add_func ("/protocol/leading-zeros-in-requests", test_leading_zeros_in_requests);
  return g_test_run ();
}
