/* test-bench.c — unit tests of memcacheq-bench's histogram and message format. */
#include <glib.h>
#include <string.h>

#include "hist.h"
#include "msg.h"

static void
test_hist_index_continuous (void)
{
  /* Every bucket's range starts where the previous one ended and indexes back to itself. */
  uint64_t prev_hi = 0;
  for (unsigned i = 0; i < HIST_BUCKETS; i++)
    {
      uint64_t lo, hi;
      hist_bucket_range (i, &lo, &hi);
      g_assert_cmpuint (lo, ==, prev_hi);
      g_assert_cmpuint (hist_index (lo), ==, i);
      g_assert_cmpuint (hist_index (hi - 1), ==, i);
      /* relative width at most 1/64 above 128 */
      if (lo >= 128)
        g_assert_cmpuint ((hi - lo) * 64, <=, lo);
      prev_hi = hi;
    }
  g_assert_cmpuint (hist_index (UINT64_MAX), ==, HIST_BUCKETS - 1);
}

static void
test_hist_quantiles (void)
{
  Hist *h = g_new0 (Hist, 1);
  g_assert_cmpuint (hist_quantile (h, 0.5), ==, 0);
  for (uint64_t v = 1; v <= 100000; v++)
    hist_record (h, v * 1000);           /* 1 µs .. 100 ms */
  double p50 = (double) hist_quantile (h, 0.5);
  double p99 = (double) hist_quantile (h, 0.99);
  double p999 = (double) hist_quantile (h, 0.999);
  g_assert_cmpfloat (p50, >, 50000e3 * 0.99);
  g_assert_cmpfloat (p50, <, 50000e3 * 1.01);
  g_assert_cmpfloat (p99, >, 99000e3 * 0.99);
  g_assert_cmpfloat (p99, <, 99000e3 * 1.01);
  g_assert_cmpfloat (p999, >, 99900e3 * 0.99);
  g_assert_cmpuint (hist_quantile (h, 1.0), <=, 100000000);
  g_assert_cmpuint (h->max, ==, 100000000);
  g_assert_cmpfloat (hist_mean (h), ==, 50000.5e3);

  Hist *g = g_new0 (Hist, 1);
  hist_record (g, 5);
  hist_merge (g, h);
  g_assert_cmpuint (g->total, ==, 100001);
  g_assert_cmpuint (hist_quantile (g, 0.0), ==, 5);
  g_free (h);
  g_free (g);
}

static void
test_msg_roundtrip (void)
{
  msg_init (4096);
  char buf[4096];
  for (size_t size = MSG_MIN_SIZE; size <= 4096; size = size * 3 + 1)
    for (uint64_t seq = 0; seq < 50; seq++)
      {
        MsgId id = { 0xdeadbeef, 7, 123456, seq * 977 }, got;
        uint64_t h = msg_build (buf, size, &id);
        g_assert_cmpint (msg_verify (buf, size, size, TRUE, msg_flags_of_hash (h), &got), ==, MSG_OK);
        g_assert_cmpuint (got.tag, ==, id.tag);
        g_assert_cmpuint (got.queue, ==, id.queue);
        g_assert_cmpuint (got.producer, ==, id.producer);
        g_assert_cmpuint (got.seq, ==, id.seq);
        for (size_t i = 0; i < size; i++)
          g_assert_true (buf[i] > ' ' && buf[i] < 0x7f);
      }
  msg_free ();
}

static void
test_msg_detects_damage (void)
{
  msg_init (200);
  char buf[200], copy[200];
  MsgId id = { 1, 2, 3, 4 }, got;
  uint64_t h = msg_build (buf, 100, &id);
  uint32_t flags = msg_flags_of_hash (h);
  g_assert_cmpint (msg_verify (buf, 100, 100, TRUE, flags, &got), ==, MSG_OK);
  g_assert_cmpint (msg_verify (buf, 99, 100, TRUE, flags, &got), ==, MSG_BAD_SIZE);
  g_assert_cmpint (msg_verify (buf, 100, 100, TRUE, flags + 1, &got), ==, MSG_BAD_FLAGS);
  g_assert_cmpint (msg_verify (buf, 100, 100, FALSE, flags + 1, &got), ==, MSG_OK);
  /* Flip every byte in turn: always caught. */
  for (size_t i = 0; i < 100; i++)
    {
      memcpy (copy, buf, 100);
      copy[i] ^= 0x01;
      g_assert_cmpint (msg_verify (copy, 100, 100, TRUE, flags, &got), !=, MSG_OK);
    }
  /* Another message's header with this filler, or a changed sequence. */
  MsgId other = { 1, 2, 3, 5 };
  msg_build (copy, 100, &other);
  memcpy (copy + MSG_HEADER, buf + MSG_HEADER, 100 - MSG_HEADER);
  g_assert_cmpint (msg_verify (copy, 100, 100, FALSE, 0, &got), !=, MSG_OK);
  memcpy (copy, buf, 100);
  copy[31] = copy[31] == '0' ? '1' : '0';
  g_assert_cmpint (msg_verify (copy, 100, 100, FALSE, 0, &got), ==, MSG_BAD_CHECK);
  memset (copy, 'x', 100);
  g_assert_cmpint (msg_verify (copy, 100, 100, FALSE, 0, &got), ==, MSG_BAD_HEADER);
  msg_free ();
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/bench/hist/index", test_hist_index_continuous);
  g_test_add_func ("/bench/hist/quantiles", test_hist_quantiles);
  g_test_add_func ("/bench/msg/roundtrip", test_msg_roundtrip);
  g_test_add_func ("/bench/msg/damage", test_msg_detects_damage);
  return g_test_run ();
}
