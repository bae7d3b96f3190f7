/* hist.c — see hist.h. */
#include "hist.h"

#include <math.h>
#include <string.h>

void
hist_reset (Hist *h)
{
  memset (h, 0, sizeof *h);
}

void
hist_merge (Hist *into, const Hist *from)
{
  for (unsigned i = 0; i < HIST_BUCKETS; i++)
    into->counts[i] += from->counts[i];
  into->total += from->total;
  into->sum += from->sum;
  if (from->max > into->max)
    into->max = from->max;
}

void
hist_bucket_range (unsigned i, uint64_t *lo, uint64_t *hi)
{
  if (i < 2 * HIST_SUB)
    {
      *lo = i;
      *hi = (uint64_t) i + 1;
      return;
    }
  unsigned k = i / HIST_SUB + HIST_SUB_BITS - 1;
  uint64_t sub = i % HIST_SUB;
  *lo = (HIST_SUB + sub) << (k - HIST_SUB_BITS);
  *hi = *lo + (UINT64_C (1) << (k - HIST_SUB_BITS));
}

uint64_t
hist_quantile (const Hist *h, double q)
{
  if (h->total == 0)
    return 0;
  if (q < 0)
    q = 0;
  if (q > 1)
    q = 1;
  uint64_t rank = (uint64_t) ceil (q * (double) h->total);
  if (rank == 0)
    rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < HIST_BUCKETS; i++)
    {
      seen += h->counts[i];
      if (seen >= rank)
        {
          uint64_t lo, hi;
          hist_bucket_range (i, &lo, &hi);
          uint64_t mid = lo + (hi - lo) / 2;
          return mid > h->max ? h->max : mid;
        }
    }
  return h->max;
}

double
hist_mean (const Hist *h)
{
  return h->total ? (double) h->sum / (double) h->total : 0.0;
}
