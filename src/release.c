/* release.c — counts the storage of the big buffers freed and trims the
 * heap once enough of it was freed (see release.h). */
#include "release.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

/* Below this much freed, a trim would give back too little to pay for itself. */
#define RELEASE_TRIM_BYTES (8 * 1024 * 1024)

static gsize released_bytes;

/* The bytes buf's storage takes: its capacity, which its len (cut by
 * remove_range or reset for reuse) may understate by far. */
static gsize
buf_allocated (const GByteArray *buf)
{
#ifdef __GLIBC__
  return buf->data != NULL ? malloc_usable_size (buf->data) : 0;
#else
  return buf->len;
#endif
}

void
mcq_release_big (GByteArray **buf)
{
  if (*buf != NULL)
    released_bytes += buf_allocated (*buf);
  g_clear_pointer (buf, g_byte_array_unref);
}

void
mcq_release_any (GByteArray **buf)
{
  if (*buf != NULL && buf_allocated (*buf) > MCQ_RELEASE_KEEP)
    mcq_release_big (buf);
  else
    g_clear_pointer (buf, g_byte_array_unref);
}

void
mcq_release_trim (void)
{
  if (released_bytes < RELEASE_TRIM_BYTES)
    return;
#ifdef __GLIBC__
  malloc_trim (0);
#endif
  released_bytes = 0;
}

static guint trim_source;

static gboolean
trim_idle (gpointer data)
{
  trim_source = 0;
  mcq_release_trim ();
  return G_SOURCE_REMOVE;
}

void
mcq_release_trim_soon (void)
{
  if (released_bytes >= RELEASE_TRIM_BYTES && trim_source == 0)
    trim_source = g_idle_add (trim_idle, NULL);
}
