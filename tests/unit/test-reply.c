/* test-reply.c — unit tests of the reply formatter (src/reply.c): the exact
 * bytes of every reply kind memcacheq sends that is not a parse error. */
#include <string.h>
#include "config.h"
#include "reply.h"

/* Checks that out holds exactly expected, then empties it. */
static void
assert_bytes (GByteArray *out, const char *expected)
{
  g_assert_cmpmem (out->data, out->len, expected, strlen (expected));
  g_byte_array_set_size (out, 0);
}

static void
test_lines (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();

  mcq_reply_line (out, MCQ_REPLY_STORED);
  assert_bytes (out, "STORED\r\n");
  mcq_reply_line (out, MCQ_REPLY_DELETED);
  assert_bytes (out, "DELETED\r\n");
  mcq_reply_line (out, MCQ_REPLY_NOT_FOUND);
  assert_bytes (out, "NOT_FOUND\r\n");
  mcq_reply_line (out, MCQ_REPLY_OK);
  assert_bytes (out, "OK\r\n");
  mcq_reply_line (out, MCQ_REPLY_RESET);
  assert_bytes (out, "RESET\r\n");
  mcq_reply_line (out, MCQ_REPLY_END);
  assert_bytes (out, "END\r\n");
  mcq_reply_line (out, MCQ_REPLY_VERSION);
  assert_bytes (out, "VERSION " MCQ_VERSION "\r\n");
  g_assert_cmpstr (mcq_reply_line_text (MCQ_REPLY_OK), ==, "OK\r\n");

  /* replies append: what is there stays */
  mcq_reply_text (out, "ERROR\r\n");
  mcq_reply_line (out, MCQ_REPLY_STORED);
  assert_bytes (out, "ERROR\r\nSTORED\r\n");
}

static void
test_value (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();

  mcq_reply_value (out, "q1", 0, "hello", 5, FALSE, 7);
  assert_bytes (out, "VALUE q1 0 5\r\nhello\r\n");
  /* gets: the message's sequence number is its cas */
  mcq_reply_value (out, "q1", 42, "hello", 5, TRUE, 7);
  assert_bytes (out, "VALUE q1 42 5 7\r\nhello\r\n");
  mcq_reply_value (out, "big", G_MAXUINT32, "", 0, TRUE, G_MAXUINT64);
  assert_bytes (out, "VALUE big 4294967295 0 18446744073709551615\r\n\r\n");
  /* the data goes as it is, line breaks and NULs included */
  mcq_reply_value (out, "b", 1, "a\r\n\0z", 5, FALSE, 0);
  g_assert_cmpmem (out->data, out->len, "VALUE b 1 5\r\na\r\n\0z\r\n", 20);
}

static void
test_values (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();
  static const char keys[] = "q1\0empty\0q3";   /* three names, each NUL-terminated */
  McqMessage msgs[3] = {
    { .flags = 1, .seq = 10, .data = (const guint8 *) "one", .len = 3 },
    { .data = NULL },
    { .flags = 3, .seq = 30, .data = (const guint8 *) "three", .len = 5 },
  };

  g_assert_cmpuint (mcq_reply_values (out, keys, sizeof keys, msgs, 3, FALSE), ==, 2);
  assert_bytes (out, "VALUE q1 1 3\r\none\r\nVALUE q3 3 5\r\nthree\r\nEND\r\n");
  g_assert_cmpuint (mcq_reply_values (out, keys, sizeof keys, msgs, 3, TRUE), ==, 2);
  assert_bytes (out, "VALUE q1 1 3 10\r\none\r\nVALUE q3 3 5 30\r\nthree\r\nEND\r\n");
  /* every queue empty */
  g_assert_cmpuint (mcq_reply_values (out, keys, sizeof keys, msgs + 1, 1, TRUE), ==, 0);
  assert_bytes (out, "END\r\n");
}

static void
test_queue_stats (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();
  McqQueueStat st[2] = {
    { .name = (char *) "a", .enqueued = 5, .dequeued = 3 },
    { .name = (char *) "jobs", .enqueued = G_MAXUINT64, .dequeued = 0 },
  };

  mcq_reply_queue_stats (out, st, 2);
  assert_bytes (out, "STAT a 5/3\r\nSTAT jobs 18446744073709551615/0\r\nEND\r\n");
  mcq_reply_queue_stats (out, st, 0);
  assert_bytes (out, "END\r\n");
}

static void
test_stats (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();
  g_autofree char *expected = NULL;
  McqStatsReport st = {
    .pid = 4321, .uptime_s = 90, .time_s = 1700000000,
    .user_s = 1, .user_us = 5, .system_s = 0, .system_us = 250000,
    .curr_conns = 3, .total_conns = 17, .conn_structures = 4,
    .get_cmds = 10, .get_hits = 6, .set_cmds = 8, .set_hits = 7,
    .bytes_read = 1000, .bytes_written = 2000, .threads = 2,
    .curr_queues = 2, .curr_items = 5, .durable = TRUE, .damaged_messages = 1,
  };

  mcq_reply_stats (out, &st);
  expected = g_strdup_printf (
      "STAT pid 4321\r\nSTAT uptime 90\r\nSTAT time 1700000000\r\n"
      "STAT version " MCQ_VERSION "\r\nSTAT pointer_size %u\r\n"
      "STAT rusage_user 1.000005\r\nSTAT rusage_system 0.250000\r\n"
      "STAT curr_connections 3\r\nSTAT total_connections 17\r\n"
      "STAT connection_structures 4\r\nSTAT get_cmds 10\r\nSTAT get_hits 6\r\n"
      "STAT set_cmds 8\r\nSTAT set_hits 7\r\nSTAT bytes_read 1000\r\n"
      "STAT bytes_written 2000\r\nSTAT threads 2\r\nSTAT curr_queues 2\r\n"
      "STAT curr_items 5\r\nSTAT durable 1\r\nSTAT damaged_messages 1\r\nEND\r\n",
      (guint) (8 * sizeof (void *)));
  assert_bytes (out, expected);

  st.durable = FALSE;
  mcq_reply_stats (out, &st);
  g_assert_nonnull (g_strstr_len ((const char *) out->data, out->len, "STAT durable 0\r\n"));
}

static void
test_failure (void)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();
  g_autofree char *long_message = g_strnfill (1000, 'x');
  g_autofree char *long_line = NULL;

  mcq_reply_failure (out, "log write: No space left on device", TRUE);
  assert_bytes (out, "SERVER_ERROR out of disk space: log write: No space left on device\r\n");
  mcq_reply_failure (out, "queue q: message 3 is damaged (checksum mismatch)", FALSE);
  assert_bytes (out, "SERVER_ERROR queue q: message 3 is damaged (checksum mismatch)\r\n");
  /* a line break in the message would end the reply early */
  mcq_reply_failure (out, "first\r\nsecond\nthird", FALSE);
  assert_bytes (out, "SERVER_ERROR first  second third\r\n");
  /* a long message is never cut before its "\r\n" */
  mcq_reply_failure (out, long_message, TRUE);
  long_line = g_strconcat ("SERVER_ERROR out of disk space: ", long_message, "\r\n", NULL);
  assert_bytes (out, long_line);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/reply/lines", test_lines);
  g_test_add_func ("/reply/value", test_value);
  g_test_add_func ("/reply/values", test_values);
  g_test_add_func ("/reply/queue-stats", test_queue_stats);
  g_test_add_func ("/reply/stats", test_stats);
  g_test_add_func ("/reply/failure", test_failure);
  return g_test_run ();
}
