/* test-lost.c — mcq_lost_scan: which messages of a run of replies were
 * not sent in full, and where the last whole sent record ends. */
#include <string.h>

#include "lost.h"

static const char replies[] =
  "STORED\r\n"                       /* 0..8 */
  "VALUE a 0 5\r\nhello\r\n"         /* 8..28 */
  "VALUE bq 7 3 99\r\nx\ny\r\n"      /* 28..50: a data block holding a newline */
  "END\r\n";                         /* 50..55 */

static guint
count (GHashTable *lost, const char *q)
{
  return GPOINTER_TO_UINT (g_hash_table_lookup (lost, q));
}

static void
test_scan (void)
{
  const guint8 *p = (const guint8 *) replies;
  size_t len = strlen (replies);
  g_autoptr(GHashTable) none = mcq_lost_new ();
  g_autoptr(GHashTable) part = mcq_lost_new ();

  g_assert_cmpuint (len, ==, 55);
  /* everything sent: nothing lost, the boundary is the end */
  g_assert_cmpuint (mcq_lost_scan (p, len, len, none), ==, len);
  g_assert_cmpuint (g_hash_table_size (none), ==, 0);
  /* cut inside the first message: both messages are lost */
  g_assert_cmpuint (mcq_lost_scan (p, len, 20, part), ==, 8);
  g_assert_cmpuint (count (part, "a"), ==, 1);
  g_assert_cmpuint (count (part, "bq"), ==, 1);
  /* a message sent but for its final \r\n is lost too */
  g_autoptr(GHashTable) tail = mcq_lost_new ();
  g_assert_cmpuint (mcq_lost_scan (p, len, 49, tail), ==, 28);
  g_assert_cmpuint (count (tail, "a"), ==, 0);
  g_assert_cmpuint (count (tail, "bq"), ==, 1);
  /* without a table, the scan stops at the first record not sent */
  g_assert_cmpuint (mcq_lost_scan (p, len, 30, NULL), ==, 28);
}

static void
test_truncated (void)
{
  /* a record whose data block is cut short is not whole: the scan stops */
  const char *cut = "VALUE q 0 100\r\nabc";
  g_autoptr(GHashTable) lost = mcq_lost_new ();

  g_assert_cmpuint (mcq_lost_scan ((const guint8 *) cut, strlen (cut), 0, lost), ==, 0);
  g_assert_cmpuint (g_hash_table_size (lost), ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/lost/scan", test_scan);
  g_test_add_func ("/lost/truncated", test_truncated);
  return g_test_run ();
}
