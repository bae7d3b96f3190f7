/* msg.h — self-verifying message bodies.
 *
 * Every body the bench sends says who made it and can be checked on its own:
 *
 *   offset  0  "mq"
 *           2  run tag, 8 hex digits (random per bench run)
 *          10  queue index, 4 hex digits
 *          14  producer (connection) id, 6 hex digits
 *          20  sequence number of that producer, 12 hex digits
 *          32  check: low 32 bits of a hash of the four fields, 8 hex digits
 *          40  filler up to the message size: a fixed printable pattern read
 *              from an offset chosen by the hash
 *
 * So a reader verifies the size, that the header is well formed and matches
 * its own check, that the filler is exactly right (one memcmp), and — with the
 * memcache protocol — that the flags echo the hash too.  What the header names
 * (queue, producer, sequence) is then checked against what the bench sent
 * (worker.c).  The pattern is the same for every run, so one run can read what
 * another one wrote (e.g. fill with --mix=set, drain with --mix=get). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MSG_HEADER 40
#define MSG_MIN_SIZE MSG_HEADER
#define MSG_MAX_QUEUES 0x10000u
#define MSG_MAX_PRODUCERS 0x1000000u
#define MSG_MAX_SEQ UINT64_C (0xffffffffffff)

typedef struct {
  uint32_t tag;
  uint32_t queue;
  uint32_t producer;
  uint64_t seq;
} MsgId;

typedef enum {
  MSG_OK = 0,
  MSG_BAD_SIZE,
  MSG_BAD_HEADER,
  MSG_BAD_CHECK,
  MSG_BAD_FILLER,
  MSG_BAD_FLAGS,
} MsgStatus;

/* Prepare the filler pattern for bodies up to max_size bytes. */
void msg_init (size_t max_size);
void msg_free (void);
uint64_t msg_hash (const MsgId *id);
static inline uint32_t
msg_flags_of_hash (uint64_t h)
{
  return (uint32_t) (h >> 16);
}
/* Write the body of `id` (size bytes, size >= MSG_MIN_SIZE) to dst.  Returns its hash. */
uint64_t msg_build (char *dst, size_t size, const MsgId *id);
/* Verify a received body; on success *id is what its header says.  flags is
 * checked only when have_flags. */
MsgStatus msg_verify (const char *body, size_t len, size_t want_size,
                      bool have_flags, uint32_t flags, MsgId *id);
const char *msg_status_str (MsgStatus s);
