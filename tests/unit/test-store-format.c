/* test-store-format.c — the message record encoding: CRC-32C values, sealing
 * and checking records, legacy records, and every single-byte change of a
 * sealed record being caught. */
#include <glib.h>
#include <string.h>

#include "store-format.h"

static void
make_key (guint32 id, guint64 seq, guint8 key[MCQ_REC_KEY_SIZE])
{
  guint32 i = GUINT32_TO_BE (id);
  guint64 s = GUINT64_TO_BE (seq);
  memcpy (key, &i, 4);
  memcpy (key + 4, &s, 8);
}

static GByteArray *
sealed (const guint8 key[MCQ_REC_KEY_SIZE], guint32 flags, gint64 time, const char *body)
{
  GByteArray *rec = g_byte_array_new ();
  g_byte_array_set_size (rec, MCQ_REC_HEADER);
  g_byte_array_append (rec, (const guint8 *) body, (guint) strlen (body));
  mcq_rec_seal (rec->data, rec->len, key, flags, time);
  return rec;
}

static void
test_crc_known_values (void)
{
  /* The check value of CRC-32C, and a few from RFC 3720 (iSCSI), B.4. */
  guint8 zeros[32] = { 0 }, ones[32], inc[32];

  memset (ones, 0xff, sizeof ones);
  for (int i = 0; i < 32; i++)
    inc[i] = (guint8) i;
  g_assert_cmphex (mcq_crc32c (0, "123456789", 9), ==, 0xE3069283);
  g_assert_cmphex (mcq_crc32c (0, zeros, 32), ==, 0x8A9136AA);
  g_assert_cmphex (mcq_crc32c (0, ones, 32), ==, 0x62A8AB43);
  g_assert_cmphex (mcq_crc32c (0, inc, 32), ==, 0x46DD794E);
  g_assert_cmphex (mcq_crc32c (0, "", 0), ==, 0);
}

static void
test_crc_continues (void)
{
  const char *text = "the quick brown fox jumps over the lazy dog, twice over";
  size_t len = strlen (text);
  guint32 whole = mcq_crc32c (0, text, len);

  for (size_t cut = 0; cut <= len; cut++)
    g_assert_cmphex (mcq_crc32c (mcq_crc32c (0, text, cut), text + cut, len - cut), ==, whole);
}

/* The portable path must agree with the hardware one (run in a child with
 * MCQ_CRC_NO_HW set, since the choice is made once per process). */
static void
test_crc_portable (void)
{
  if (g_test_subprocess ())
    {
      g_assert_cmphex (mcq_crc32c (0, "123456789", 9), ==, 0xE3069283);
      return;
    }
  g_setenv ("MCQ_CRC_NO_HW", "1", TRUE);
  g_test_trap_subprocess (NULL, 0, 0);
  g_unsetenv ("MCQ_CRC_NO_HW");
  g_test_trap_assert_passed ();
}

static void
test_seal_and_check (void)
{
  guint8 key[MCQ_REC_KEY_SIZE];
  McqRecView view;
  const char *why = NULL;

  make_key (7, 1234567890123ull, key);
  g_autoptr(GByteArray) rec = sealed (key, 0xdeadbeef, 1765000000123456, "hello, queue");
  g_assert_cmpuint (rec->len, ==, MCQ_REC_HEADER + 12);
  g_assert_cmpuint (rec->data[4], ==, MCQ_REC_MARK_CHECKED);
  g_assert_cmpint (mcq_rec_check (rec->data, rec->len, key, FALSE, &view, &why), ==, MCQ_REC_SOUND);
  g_assert_cmpuint (view.flags, ==, 0xdeadbeef);
  g_assert_cmpint (view.time, ==, 1765000000123456);
  g_assert_cmpuint (view.body_offset, ==, MCQ_REC_HEADER);
  g_assert_cmpuint (view.body_len, ==, 12);
  g_assert_cmpmem (rec->data + view.body_offset, view.body_len, "hello, queue", 12);
  g_assert_cmpint (mcq_rec_time (rec->data, MCQ_REC_TIME_END), ==, 1765000000123456);

  /* An empty body is a record too. */
  g_autoptr(GByteArray) empty = sealed (key, 0, 1, "");
  g_assert_cmpint (mcq_rec_check (empty->data, empty->len, key, FALSE, &view, NULL), ==,
                   MCQ_REC_SOUND);
  g_assert_cmpuint (view.body_len, ==, 0);
}

static void
test_every_byte_change_is_caught (void)
{
  guint8 key[MCQ_REC_KEY_SIZE];
  McqRecView view;

  make_key (3, 42, key);
  g_autoptr(GByteArray) rec = sealed (key, 5, 1765000000000000, "a body of some forty bytes, give or take");
  for (guint i = 0; i < rec->len; i++)
    for (guint x = 1; x < 256; x++)
      {
        const char *why = NULL;
        rec->data[i] ^= (guint8) x;
        g_assert_cmpint (mcq_rec_check (rec->data, rec->len, key, FALSE, &view, &why), ==,
                         MCQ_REC_DAMAGED);
        g_assert_nonnull (why);
        /* Where legacy records are allowed, only a mark changed to a
         * legacy record's zero gets through, read as one. */
        g_assert_cmpint (mcq_rec_check (rec->data, rec->len, key, TRUE, &view, NULL), ==,
                         i == 4 && rec->data[i] == 0 ? MCQ_REC_LEGACY : MCQ_REC_DAMAGED);
        rec->data[i] ^= (guint8) x;
      }
  g_assert_cmpint (mcq_rec_check (rec->data, rec->len, key, FALSE, &view, NULL), ==, MCQ_REC_SOUND);
}

static void
test_wrong_key_or_length (void)
{
  guint8 key[MCQ_REC_KEY_SIZE], other[MCQ_REC_KEY_SIZE];
  McqRecView view;
  const char *why = NULL;

  make_key (3, 42, key);
  make_key (3, 43, other);
  g_autoptr(GByteArray) rec = sealed (key, 5, 99, "body");
  g_assert_cmpint (mcq_rec_check (rec->data, rec->len, other, TRUE, &view, &why), ==,
                   MCQ_REC_DAMAGED);
  g_assert_cmpstr (why, ==, "checksum mismatch");
  for (guint len = 0; len < rec->len; len++)
    g_assert_cmpint (mcq_rec_check (rec->data, len, key, TRUE, &view, NULL), ==, MCQ_REC_DAMAGED);
  g_byte_array_append (rec, (const guint8 *) "x", 1);
  g_assert_cmpint (mcq_rec_check (rec->data, rec->len, key, TRUE, &view, NULL), ==,
                   MCQ_REC_DAMAGED);
}

static void
test_legacy (void)
{
  /* flags 9, time 1765000000000000 µs (top byte 0), body "old". */
  const guint8 rec[] = { 0, 0, 0, 9, 0x00, 0x06, 0x45, 0x42, 0x16, 0x07, 0x50, 0x00, 'o', 'l', 'd' };
  guint8 key[MCQ_REC_KEY_SIZE];
  McqRecView view;
  const char *why = NULL;

  make_key (1, 0, key);
  g_assert_cmpint (mcq_rec_check (rec, sizeof rec, key, TRUE, &view, &why), ==, MCQ_REC_LEGACY);
  g_assert_cmpuint (view.flags, ==, 9);
  g_assert_cmpint (view.time, ==, (gint64) 1765000000000000);
  g_assert_cmpuint (view.body_offset, ==, MCQ_REC_LEGACY_HEADER);
  g_assert_cmpuint (view.body_len, ==, 3);
  g_assert_cmpint (mcq_rec_time (rec, sizeof rec), ==, (gint64) 1765000000000000);
  /* Where the store holds no legacy records, it is damage. */
  g_assert_cmpint (mcq_rec_check (rec, sizeof rec, key, FALSE, &view, &why), ==, MCQ_REC_DAMAGED);
  g_assert_cmpstr (why, ==, "no checksum where one is required");
  /* Neither legacy nor checked: another top byte. */
  guint8 odd[sizeof rec];
  memcpy (odd, rec, sizeof rec);
  odd[4] = 0x42;
  g_assert_cmpint (mcq_rec_check (odd, sizeof odd, key, TRUE, &view, &why), ==, MCQ_REC_DAMAGED);
  g_assert_cmpstr (why, ==, "unknown record format");
  g_assert_cmpint (mcq_rec_check (rec, 11, key, TRUE, &view, &why), ==, MCQ_REC_DAMAGED);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/store-format/crc/known-values", test_crc_known_values);
  g_test_add_func ("/store-format/crc/continues", test_crc_continues);
  g_test_add_func ("/store-format/crc/portable", test_crc_portable);
  g_test_add_func ("/store-format/seal-and-check", test_seal_and_check);
  g_test_add_func ("/store-format/every-byte-change-is-caught", test_every_byte_change_is_caught);
  g_test_add_func ("/store-format/wrong-key-or-length", test_wrong_key_or_length);
  g_test_add_func ("/store-format/legacy", test_legacy);
  return g_test_run ();
}
