/* budget.h — a byte budget shared first come, first served: a claim is
 * granted its whole amount at once, or waits in line until releases make
 * room.  Pure bookkeeping, no I/O; the connections use it for requests
 * still being read. */
#pragma once

#include <glib.h>

typedef struct _McqBudgetClaim McqBudgetClaim;
/* Told that a waiting claim has just been granted. */
typedef void (*McqBudgetGranted) (McqBudgetClaim *claim);

typedef struct {
  guint64 size;                 /* the whole budget */
  guint64 used;                 /* granted and not yet released */
  GQueue waiting;               /* McqBudgetClaim*, in arrival order */
  McqBudgetGranted granted;
} McqBudget;

struct _McqBudgetClaim {
  guint64 amount;               /* granted (or wanted, while waiting) */
  gboolean granted;
  gboolean waiting;
  GList link;                   /* in McqBudget.waiting; no allocation */
  gpointer owner;
};

/* Asks for amount bytes for claim, which must hold none: TRUE if granted
 * at once; else the claim waits behind those already waiting (none
 * overtakes another) and b->granted is told when it is granted.  An
 * amount above b->size is never granted. */
gboolean mcq_budget_claim (McqBudget *b, McqBudgetClaim *claim, guint64 amount);

/* Gives back what claim holds, or takes it out of line; then grants the
 * waiting claims that now fit, in order.  Harmless on an empty claim. */
void mcq_budget_release (McqBudget *b, McqBudgetClaim *claim);
