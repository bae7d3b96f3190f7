/* release.h — freeing big buffers so that their memory goes back to the
 * system: the heap keeps freed memory mapped, so after a burst of big
 * replies the daemon would otherwise stay at its peak.  Main thread only. */
#pragma once

#include <glib.h>

/* Buffers with at most this much storage are small: kept for reuse. */
#define MCQ_RELEASE_KEEP (2 * 1024)

/* Frees *buf (may be NULL) and counts all its storage toward the next trim. */
void mcq_release_big (GByteArray **buf);

/* Frees *buf (may be NULL), counting it only if its storage is more than
 * MCQ_RELEASE_KEEP. */
void mcq_release_any (GByteArray **buf);

/* Hands freed memory back to the system (malloc_trim) if enough was
 * counted since the last trim to matter. */
void mcq_release_trim (void);

/* Does mcq_release_trim from an idle callback soon, if enough was counted. */
void mcq_release_trim_soon (void);
