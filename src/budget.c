/* budget.c — a byte budget granted first come, first served (budget.h). */
#include "budget.h"

gboolean
mcq_budget_claim (McqBudget *b, McqBudgetClaim *claim, guint64 amount)
{
  g_return_val_if_fail (!claim->granted && !claim->waiting, FALSE);
  claim->amount = amount;
  if (g_queue_is_empty (&b->waiting) && amount <= b->size - b->used)
    {
      claim->granted = TRUE;
      b->used += amount;
      return TRUE;
    }
  claim->waiting = TRUE;
  claim->link.data = claim;
  g_queue_push_tail_link (&b->waiting, &claim->link);
  return FALSE;
}

void
mcq_budget_release (McqBudget *b, McqBudgetClaim *claim)
{
  McqBudgetClaim *w;

  if (claim->waiting)
    {
      g_queue_unlink (&b->waiting, &claim->link);
      claim->waiting = FALSE;
    }
  if (claim->granted)
    {
      b->used -= claim->amount;
      claim->granted = FALSE;
    }
  claim->amount = 0;
  while ((w = g_queue_peek_head (&b->waiting)) != NULL && w->amount <= b->size - b->used)
    {
      g_queue_unlink (&b->waiting, &w->link);
      w->waiting = FALSE;
      w->granted = TRUE;
      b->used += w->amount;
      if (b->granted != NULL)
        b->granted (w);
    }
}
