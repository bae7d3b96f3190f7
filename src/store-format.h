/* store-format.h — the bytes of one message record in messages.db, and the
 * checksum that lets a damaged record be told from a sound one.  Pure: no
 * Berkeley DB, no I/O, so the unit tests drive it directly. */
#pragma once

#include <glib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * A record is the value stored under the key id:u32 seq:u64 (big-endian).
 *
 *  checked (written by this version):
 *    flags:u32  mark:u8 time:u56  crc:u32  body
 *    mark is MCQ_REC_MARK_CHECKED; crc is CRC-32C of the 12-byte key, the
 *    first 12 bytes of the record (flags, mark, time) and the body, so a
 *    changed byte, a shortened or lengthened body, or a record found under
 *    another key all fail the check.
 *  legacy (written before checksums existed):
 *    flags:u32  time:i64  body
 *    the time's top byte is 0 (µs since 1970 stay below 2^56 until the
 *    year 4253), which is what tells the two apart.  Nothing protects it:
 *    it is accepted only where the store says legacy records may be.
 */
#define MCQ_REC_KEY_SIZE 12
#define MCQ_REC_TIME_END 12          /* flags and time: what partial reads fetch */
#define MCQ_REC_HEADER 16            /* a checked record's header */
#define MCQ_REC_LEGACY_HEADER 12
#define MCQ_REC_MARK_CHECKED 0xC3u

typedef enum {
  MCQ_REC_SOUND,                     /* a checked record whose checksum matches */
  MCQ_REC_LEGACY,                    /* a legacy record (not verifiable) */
  MCQ_REC_DAMAGED,                   /* anything else: never to be delivered */
} McqRecState;

typedef struct {
  guint32 flags;
  gint64 time;                       /* µs since 1970 when stored */
  size_t body_offset;                /* where the body starts in the record */
  size_t body_len;
} McqRecView;

/* CRC-32C (Castagnoli) of len bytes, continuing from crc (0 to start). */
guint32 mcq_crc32c (guint32 crc, const void *data, size_t len);

/* Fills the MCQ_REC_HEADER bytes in front of the body of a record of len
 * bytes (header included) as a checked record stored under key. */
void mcq_rec_seal (guint8 *rec, size_t len, const guint8 key[MCQ_REC_KEY_SIZE],
                   guint32 flags, gint64 time);

/* Classifies the record rec[0..len) read under key and, unless it is
 * DAMAGED, describes it in *out.  A LEGACY-looking record counts as
 * DAMAGED unless legacy_ok.  *why (if not NULL) gets a static English
 * phrase saying what is wrong with a DAMAGED one. */
McqRecState mcq_rec_check (const guint8 *rec, size_t len, const guint8 key[MCQ_REC_KEY_SIZE],
                           gboolean legacy_ok, McqRecView *out, const char **why);

/* The store time from the first MCQ_REC_TIME_END bytes of either kind of
 * record; 0 if there are fewer. */
gint64 mcq_rec_time (const guint8 *rec, size_t len);

/* Big-endian integers, as every key and record stores them. */
static inline void
mcq_put_be32 (guint8 *p, guint32 v)
{
  v = GUINT32_TO_BE (v);
  memcpy (p, &v, 4);
}

static inline void
mcq_put_be64 (guint8 *p, guint64 v)
{
  v = GUINT64_TO_BE (v);
  memcpy (p, &v, 8);
}

static inline guint32
mcq_get_be32 (const guint8 *p)
{
  guint32 v;
  memcpy (&v, p, 4);
  return GUINT32_FROM_BE (v);
}

static inline guint64
mcq_get_be64 (const guint8 *p)
{
  guint64 v;
  memcpy (&v, p, 8);
  return GUINT64_FROM_BE (v);
}

/* The key of message seq of queue id (id:u32 seq:u64, big-endian), so the
 * btree's byte order is each queue's FIFO order. */
static inline void
mcq_rec_key (guint32 id, guint64 seq, guint8 out[MCQ_REC_KEY_SIZE])
{
  mcq_put_be32 (out, id);
  mcq_put_be64 (out + 4, seq);
}

/* A queue's record in queues.db, under its name: id:u32, then head, tail,
 * enqueued, dequeued and bytes as u64, big-endian, at these offsets.  The
 * queue holds the messages [head, tail). */
#define MCQ_QREC_ID 0
#define MCQ_QREC_HEAD 4
#define MCQ_QREC_TAIL 12
#define MCQ_QREC_ENQUEUED 20
#define MCQ_QREC_DEQUEUED 28
#define MCQ_QREC_BYTES 36
#define MCQ_QREC_SIZE 44

typedef struct {
  guint32 id;
  guint64 head, tail;
  guint64 enqueued, dequeued;
  guint64 bytes;
} McqQueueRec;

void mcq_qrec_encode (const McqQueueRec *r, guint8 out[MCQ_QREC_SIZE]);
void mcq_qrec_decode (const guint8 in[MCQ_QREC_SIZE], McqQueueRec *r);
