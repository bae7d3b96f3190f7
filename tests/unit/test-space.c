/* test-space.c — unit tests of the store's disk-space model (src/store-space.c). */
#include "store-space.h"

#define MIB (1024 * 1024)

static McqSpaceGeometry
durable (guint64 max_body)
{
  McqSpaceGeometry g = { 4096, 2 * MIB, TRUE, max_body + 12 };
  return g;
}

/* Berkeley DB 5.3 with 4 KiB pages logged 1,035,834 bytes at most for
 * storing a 1,000,012-byte record and 1,040,552 for removing it: the
 * estimate must cover both without overstating them by much. */
static void
test_log_bytes_cover_big_records (void)
{
  McqSpaceGeometry g = durable (MIB);
  guint64 b = mcq_space_log_bytes (&g, 1000012);

  g_assert_cmpuint (b, >=, 1040552);
  g_assert_cmpuint (b, <=, 1040552 + 1040552 / 20);
  /* A small record stays on its leaf: its bytes and the records around. */
  g_assert_cmpuint (mcq_space_log_bytes (&g, 112), >=, 340);
  g_assert_cmpuint (mcq_space_log_bytes (&g, 112), <, 1024);
}

static void
test_db_bytes_are_whole_overflow_pages (void)
{
  McqSpaceGeometry g = durable (MIB);

  /* 1,000,012 bytes at 4,064 per overflow page: 247 pages. */
  g_assert_cmpuint (mcq_space_db_bytes (&g, 1000012), ==, 247 * 4096);
  g_assert_cmpuint (mcq_space_db_freed (&g, 1000012), ==, 247 * 4096);
  /* A record just past a quarter page still takes a page of its own. */
  g_assert_cmpuint (mcq_space_db_bytes (&g, 1012), ==, 4096);
  /* Leaf records free no page of their own; near the overflow size it
   * is not sure which a record is, so none is counted either. */
  g_assert_cmpuint (mcq_space_db_freed (&g, 112), ==, 0);
  g_assert_cmpuint (mcq_space_db_freed (&g, 1000), ==, 0);
  guint64 drained = 0;
  g_assert_cmpuint (mcq_space_leaf_pages_freed (&g, 1000, &drained), ==, 0);
  g_assert_cmpuint (drained, ==, 0);
  g_assert_cmpuint (mcq_space_db_bytes (&g, 112), >=, 112);
}

/* Leaf pages are credited only once surely empty: two pages' worth of a
 * queue's drained records stay uncounted (its head's page and one it may
 * share with another queue). */
static void
test_leaf_pages_freed_as_the_head_moves_on (void)
{
  McqSpaceGeometry g = durable (MIB);
  guint64 drained = 0, freed = 0;

  for (int i = 0; i < 16; i++)
    freed += mcq_space_leaf_pages_freed (&g, 492, &drained);
  g_assert_cmpuint (freed, ==, 0);         /* 16 x 512 bytes: two pages */
  for (int i = 0; i < 8; i++)
    freed += mcq_space_leaf_pages_freed (&g, 492, &drained);
  g_assert_cmpuint (freed, ==, 4096);
  g_assert_cmpuint (drained, ==, 2 * 4096);
  for (int i = 0; i < 800; i++)
    freed += mcq_space_leaf_pages_freed (&g, 492, &drained);
  g_assert_cmpuint (freed + drained, ==, 824 * 512);
  g_assert_cmpuint (drained, <, 3 * 4096);
  /* Overflow records are counted by mcq_space_db_freed instead. */
  g_assert_cmpuint (mcq_space_leaf_pages_freed (&g, 1000012, &drained), ==, 0);
}

static void
test_log_growth_counts_whole_preallocated_files (void)
{
  McqSpaceGeometry g = durable (MIB);

  g_assert_cmpuint (mcq_space_log_growth (&g, 0, MIB), ==, 0);
  g_assert_cmpuint (mcq_space_log_growth (&g, 3 * MIB / 2, MIB), ==, 2 * MIB);
  g_assert_cmpuint (mcq_space_log_growth (&g, 2 * MIB, 1), ==, 2 * MIB);
  /* Records are not split across files: a file holds a little less. */
  g_assert_cmpuint (mcq_space_log_growth (&g, 2 * MIB, 2 * MIB), ==, 4 * MIB);
  g_assert_cmpuint (mcq_space_log_growth (&g, 2 * MIB, 5 * MIB), ==, 6 * MIB);
}

static void
test_reserve_follows_the_largest_message (void)
{
  McqSpaceGeometry one = durable (MIB), four = durable (4 * MIB), tiny = durable (100);
  /* One new log file holds the removal of a 1 MiB message and the
   * checkpoint after it; a 4 MiB message needs three. */
  g_assert_cmpuint (mcq_space_reserve (&one), ==, 2 * MIB + 256 * 1024);
  g_assert_cmpuint (mcq_space_reserve (&four), ==, 6 * MIB + 256 * 1024);
  g_assert_cmpuint (mcq_space_reserve (&tiny), ==, 2 * MIB + 256 * 1024);
  g_assert_cmpuint (mcq_space_step_bytes (&four), >, 4 * MIB);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/space/log-bytes", test_log_bytes_cover_big_records);
  g_test_add_func ("/space/db-bytes", test_db_bytes_are_whole_overflow_pages);
  g_test_add_func ("/space/leaf-pages", test_leaf_pages_freed_as_the_head_moves_on);
  g_test_add_func ("/space/log-growth", test_log_growth_counts_whole_preallocated_files);
  g_test_add_func ("/space/reserve", test_reserve_follows_the_largest_message);
  return g_test_run ();
}
