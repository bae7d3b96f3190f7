/* hist.h — fixed-size log-linear latency histogram (HdrHistogram-like).
 *
 * Values (nanoseconds) below 128 have their own bucket; above, every power of
 * two is split into 64 equal sub-buckets, so a reported value is within 1/128
 * (0.8 %) of the true one.  The histogram is a plain array: recording is an
 * index computation and an increment, with no allocation, and each worker
 * thread owns one so the hot path shares nothing; they are merged at the end. */
#pragma once

#include <stdint.h>

#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MAX_EXP 42            /* 2^43 ns ≈ 2.4 h: anything above is clamped */
#define HIST_BUCKETS ((HIST_MAX_EXP - HIST_SUB_BITS + 2) * HIST_SUB)

typedef struct {
  uint64_t counts[HIST_BUCKETS];
  uint64_t total;
  uint64_t sum;
  uint64_t max;
} Hist;

static inline unsigned
hist_index (uint64_t v)
{
  if (v < 2 * HIST_SUB)
    return (unsigned) v;
  unsigned k = 63 - (unsigned) __builtin_clzll (v);
  if (k > HIST_MAX_EXP)
    return HIST_BUCKETS - 1;
  return (k - HIST_SUB_BITS + 1) * HIST_SUB + (unsigned) ((v >> (k - HIST_SUB_BITS)) - HIST_SUB);
}

static inline void
hist_record (Hist *h, uint64_t v)
{
  h->counts[hist_index (v)]++;
  h->total++;
  h->sum += v;
  if (v > h->max)
    h->max = v;
}

void hist_reset (Hist *h);
void hist_merge (Hist *into, const Hist *from);
/* Smallest and one-past-largest value that fall in bucket i. */
void hist_bucket_range (unsigned i, uint64_t *lo, uint64_t *hi);
/* The value at quantile q (0..1): the middle of the bucket holding the
 * ceil(q * total)-th smallest value, never above the true maximum.  0 if empty. */
uint64_t hist_quantile (const Hist *h, double q);
double hist_mean (const Hist *h);
