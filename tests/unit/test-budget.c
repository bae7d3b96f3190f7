/* test-budget.c — the shared budget: grants in arrival order, none
 * overtakes, releases let the waiting in. */
#include "budget.h"

static GPtrArray *granted_log;

static void
on_granted (McqBudgetClaim *claim)
{
  g_ptr_array_add (granted_log, claim);
}

static void
test_first_come (void)
{
  McqBudget b = { .size = 100, .granted = on_granted };
  McqBudgetClaim a = { 0 }, big = { 0 }, small = { 0 }, last = { 0 };

  granted_log = g_ptr_array_new ();
  g_assert_true (mcq_budget_claim (&b, &a, 60));
  g_assert_false (mcq_budget_claim (&b, &big, 50));       /* 110 > 100: waits */
  g_assert_false (mcq_budget_claim (&b, &small, 10));     /* would fit, but may not overtake */
  g_assert_cmpuint (b.used, ==, 60);
  mcq_budget_release (&b, &a);                             /* both waiting ones fit now */
  g_assert_cmpuint (granted_log->len, ==, 2);
  g_assert_true (granted_log->pdata[0] == &big && granted_log->pdata[1] == &small);
  g_assert_cmpuint (b.used, ==, 60);
  g_assert_true (big.granted && !big.waiting && small.granted);
  g_assert_false (mcq_budget_claim (&b, &last, 41));
  mcq_budget_release (&b, &last);                          /* leaves the line, holding nothing */
  g_assert_false (last.waiting || last.granted);
  g_assert_cmpuint (b.used, ==, 60);
  mcq_budget_release (&b, &big);
  mcq_budget_release (&b, &small);
  mcq_budget_release (&b, &small);                         /* harmless twice */
  g_assert_cmpuint (b.used, ==, 0);
  g_assert_true (g_queue_is_empty (&b.waiting));
  g_ptr_array_unref (granted_log);
}

static void
test_waiting_leaves_line (void)
{
  McqBudget b = { .size = 10, .granted = on_granted };
  McqBudgetClaim a = { 0 }, gone = { 0 }, next = { 0 };

  granted_log = g_ptr_array_new ();
  g_assert_true (mcq_budget_claim (&b, &a, 10));
  g_assert_false (mcq_budget_claim (&b, &gone, 5));
  g_assert_false (mcq_budget_claim (&b, &next, 5));
  mcq_budget_release (&b, &gone);                          /* its place goes to the next */
  g_assert_cmpuint (granted_log->len, ==, 0);
  mcq_budget_release (&b, &a);
  g_assert_cmpuint (granted_log->len, ==, 1);
  g_assert_true (granted_log->pdata[0] == &next);
  g_ptr_array_unref (granted_log);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/budget/first-come", test_first_come);
  g_test_add_func ("/budget/waiting-leaves-line", test_waiting_leaves_line);
  return g_test_run ();
}
