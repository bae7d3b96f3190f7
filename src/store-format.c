/* store-format.c — encodes and checks message records (see store-format.h):
 * the checked layout, the legacy layout still found in older stores, and
 * the CRC-32C that guards the checked one. */
#include "store-format.h"

#include <glib/gi18n.h>

#include <string.h>

static guint32 crc_table[256];

static gpointer
crc_table_init (gpointer unused)
{
  for (guint32 i = 0; i < 256; i++)
    {
      guint32 c = i;
      for (int k = 0; k < 8; k++)
        c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      crc_table[i] = c;
    }
  return NULL;
}

static guint32
crc_bytes (guint32 c, const guint8 *p, size_t len)
{
  static GOnce once = G_ONCE_INIT;

  g_once (&once, crc_table_init, NULL);
  while (len-- > 0)
    c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The SSE 4.2 crc32 instruction computes the same CRC-32C, 8 bytes a step. */
__attribute__ ((target ("sse4.2"))) static guint32
crc_hw (guint32 c, const guint8 *p, size_t len)
{
  guint64 c64 = c;

  for (; len >= 8; p += 8, len -= 8)
    {
      guint64 w;
      memcpy (&w, p, 8);
      c64 = __builtin_ia32_crc32di (c64, w);
    }
  c = (guint32) c64;
  for (; len > 0; p++, len--)
    c = __builtin_ia32_crc32qi (c, *p);
  return c;
}

static gboolean
have_hw (void)
{
  static gsize answer = 0;

  if (g_once_init_enter (&answer))
    {
      /* MCQ_CRC_NO_HW: the unit tests check the portable path too. */
      __builtin_cpu_init ();
      g_once_init_leave (&answer, __builtin_cpu_supports ("sse4.2") &&
                                  g_getenv ("MCQ_CRC_NO_HW") == NULL ? 2 : 1);
    }
  return answer == 2;
}
#endif

guint32
mcq_crc32c (guint32 crc, const void *data, size_t len)
{
  guint32 c = ~crc;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (have_hw ())
    return ~crc_hw (c, data, len);
#endif
  return ~crc_bytes (c, data, len);
}

#define TIME_MASK ((G_GUINT64_CONSTANT (1) << 56) - 1)

static guint32
record_crc (const guint8 *rec, size_t len, const guint8 key[MCQ_REC_KEY_SIZE])
{
  guint32 c = mcq_crc32c (0, key, MCQ_REC_KEY_SIZE);
  c = mcq_crc32c (c, rec, MCQ_REC_TIME_END);
  return mcq_crc32c (c, rec + MCQ_REC_HEADER, len - MCQ_REC_HEADER);
}

void
mcq_rec_seal (guint8 *rec, size_t len, const guint8 key[MCQ_REC_KEY_SIZE],
              guint32 flags, gint64 time)
{
  guint64 t = ((guint64) time & TIME_MASK) | ((guint64) MCQ_REC_MARK_CHECKED << 56);

  g_assert (len >= MCQ_REC_HEADER);
  mcq_put_be32 (rec, flags);
  t = GUINT64_TO_BE (t);
  memcpy (rec + 4, &t, 8);
  mcq_put_be32 (rec + 12, record_crc (rec, len, key));
}

McqRecState
mcq_rec_check (const guint8 *rec, size_t len, const guint8 key[MCQ_REC_KEY_SIZE],
               gboolean legacy_ok, McqRecView *out, const char **why)
{
  const char *dummy;
  guint8 mark;

  if (why == NULL)
    why = &dummy;
  if (len < MCQ_REC_LEGACY_HEADER)
    {
      *why = N_("shorter than a record header");
      return MCQ_REC_DAMAGED;
    }
  mark = rec[4];
  if (mark == MCQ_REC_MARK_CHECKED)
    {
      if (len < MCQ_REC_HEADER)
        {
          *why = N_("shorter than a record header");
          return MCQ_REC_DAMAGED;
        }
      if (record_crc (rec, len, key) != mcq_get_be32 (rec + 12))
        {
          *why = N_("checksum mismatch");
          return MCQ_REC_DAMAGED;
        }
      out->flags = mcq_get_be32 (rec);
      out->time = (gint64) (mcq_get_be64 (rec + 4) & TIME_MASK);
      out->body_offset = MCQ_REC_HEADER;
      out->body_len = len - MCQ_REC_HEADER;
      return MCQ_REC_SOUND;
    }
  if (mark != 0)
    {
      *why = N_("unknown record format");
      return MCQ_REC_DAMAGED;
    }
  if (!legacy_ok)
    {
      *why = N_("no checksum where one is required");
      return MCQ_REC_DAMAGED;
    }
  out->flags = mcq_get_be32 (rec);
  out->time = (gint64) mcq_get_be64 (rec + 4);
  out->body_offset = MCQ_REC_LEGACY_HEADER;
  out->body_len = len - MCQ_REC_LEGACY_HEADER;
  return MCQ_REC_LEGACY;
}

gint64
mcq_rec_time (const guint8 *rec, size_t len)
{
  if (len < MCQ_REC_TIME_END)
    return 0;
  return (gint64) (mcq_get_be64 (rec + 4) & TIME_MASK);
}

void
mcq_qrec_encode (const McqQueueRec *r, guint8 out[MCQ_QREC_SIZE])
{
  mcq_put_be32 (out + MCQ_QREC_ID, r->id);
  mcq_put_be64 (out + MCQ_QREC_HEAD, r->head);
  mcq_put_be64 (out + MCQ_QREC_TAIL, r->tail);
  mcq_put_be64 (out + MCQ_QREC_ENQUEUED, r->enqueued);
  mcq_put_be64 (out + MCQ_QREC_DEQUEUED, r->dequeued);
  mcq_put_be64 (out + MCQ_QREC_BYTES, r->bytes);
}

void
mcq_qrec_decode (const guint8 in[MCQ_QREC_SIZE], McqQueueRec *r)
{
  r->id = mcq_get_be32 (in + MCQ_QREC_ID);
  r->head = mcq_get_be64 (in + MCQ_QREC_HEAD);
  r->tail = mcq_get_be64 (in + MCQ_QREC_TAIL);
  r->enqueued = mcq_get_be64 (in + MCQ_QREC_ENQUEUED);
  r->dequeued = mcq_get_be64 (in + MCQ_QREC_DEQUEUED);
  r->bytes = mcq_get_be64 (in + MCQ_QREC_BYTES);
}
