/* msg.c — see msg.h. */
#include "msg.h"

#include <glib/gi18n.h>
#include <stdlib.h>
#include <string.h>

#define PATTERN_SLACK 4096u

static char *pattern;
static size_t pattern_len;

static inline uint64_t
mix64 (uint64_t x)
{
  x ^= x >> 30;
  x *= UINT64_C (0xbf58476d1ce4e5b9);
  x ^= x >> 27;
  x *= UINT64_C (0x94d049bb133111eb);
  x ^= x >> 31;
  return x;
}

void
msg_init (size_t max_size)
{
  free (pattern);
  pattern_len = max_size + PATTERN_SLACK;
  pattern = malloc (pattern_len);
  if (!pattern)
    abort ();
  /* A fixed seed: every run produces the same pattern. */
  uint64_t s = UINT64_C (0x6d656d6361636865);
  for (size_t i = 0; i < pattern_len; i++)
    {
      s = mix64 (s + UINT64_C (0x9e3779b97f4a7c15));
      pattern[i] = (char) ('!' + s % 94);     /* printable, no spaces */
    }
}

void
msg_free (void)
{
  free (pattern);
  pattern = NULL;
  pattern_len = 0;
}

uint64_t
msg_hash (const MsgId *id)
{
  uint64_t h = mix64 (((uint64_t) id->tag << 32) | id->queue);
  h = mix64 (h ^ id->producer);
  return mix64 (h ^ id->seq);
}

static const char hexdig[16] = "0123456789abcdef";

static inline void
put_hex (char *dst, uint64_t v, unsigned digits)
{
  for (unsigned i = digits; i-- > 0;)
    {
      dst[i] = hexdig[v & 15];
      v >>= 4;
    }
}

static inline bool
get_hex (const char *src, unsigned digits, uint64_t *out)
{
  uint64_t v = 0;
  for (unsigned i = 0; i < digits; i++)
    {
      unsigned char c = (unsigned char) src[i];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else
        return false;
      v = (v << 4) | d;
    }
  *out = v;
  return true;
}

uint64_t
msg_build (char *dst, size_t size, const MsgId *id)
{
  uint64_t h = msg_hash (id);
  dst[0] = 'm';
  dst[1] = 'q';
  put_hex (dst + 2, id->tag, 8);
  put_hex (dst + 10, id->queue, 4);
  put_hex (dst + 14, id->producer, 6);
  put_hex (dst + 20, id->seq, 12);
  put_hex (dst + 32, (uint32_t) h, 8);
  memcpy (dst + MSG_HEADER, pattern + (h >> 32) % PATTERN_SLACK, size - MSG_HEADER);
  return h;
}

MsgStatus
msg_verify (const char *body, size_t len, size_t want_size,
            bool have_flags, uint32_t flags, MsgId *id)
{
  uint64_t tag, queue, producer, seq, check;
  if (len != want_size || len < MSG_HEADER || !pattern
      || len - MSG_HEADER > pattern_len - PATTERN_SLACK)
    return MSG_BAD_SIZE;
  if (body[0] != 'm' || body[1] != 'q'
      || !get_hex (body + 2, 8, &tag) || !get_hex (body + 10, 4, &queue)
      || !get_hex (body + 14, 6, &producer) || !get_hex (body + 20, 12, &seq)
      || !get_hex (body + 32, 8, &check))
    return MSG_BAD_HEADER;
  id->tag = (uint32_t) tag;
  id->queue = (uint32_t) queue;
  id->producer = (uint32_t) producer;
  id->seq = seq;
  uint64_t h = msg_hash (id);
  if ((uint32_t) h != check)
    return MSG_BAD_CHECK;
  if (memcmp (body + MSG_HEADER, pattern + (h >> 32) % PATTERN_SLACK, len - MSG_HEADER) != 0)
    return MSG_BAD_FILLER;
  if (have_flags && flags != msg_flags_of_hash (h))
    return MSG_BAD_FLAGS;
  return MSG_OK;
}

/* The reasons are marked for translation; the caller translates them with _(). */
const char *
msg_status_str (MsgStatus s)
{
  switch (s)
    {
    case MSG_OK: return "ok";
    case MSG_BAD_SIZE: return N_("wrong size");
    case MSG_BAD_HEADER: return N_("malformed header");
    case MSG_BAD_CHECK: return N_("header check mismatch");
    case MSG_BAD_FILLER: return N_("corrupt body");
    case MSG_BAD_FLAGS: return N_("wrong flags");
    }
  return "?";
}
