/* lost.c — which messages a run of reply bytes holds, by queue, and the
 * warning for those a connection loses.  The bytes are the daemon's own
 * replies, so every record is a line, or a VALUE line and its data block. */
#include "lost.h"

#include <string.h>

#include "i18n.h"

GHashTable *
mcq_lost_new (void)
{
  return g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
}

void
mcq_lost_add (GHashTable *lost, const char *name, size_t len)
{
  char *key = g_strndup (name, len);
  guint n = GPOINTER_TO_UINT (g_hash_table_lookup (lost, key));

  g_hash_table_insert (lost, key, GUINT_TO_POINTER (n + 1));
}

/* Where the record at p[0..len) ends; 0 if it is not whole.  For a VALUE
 * record, *name (not NUL-terminated) and *name_len are its queue. */
static size_t
record_end (const guint8 *p, size_t len, const char **name, size_t *name_len)
{
  const guint8 *nl = memchr (p, '\n', len);
  size_t line = nl != NULL ? (size_t) (nl - p) + 1 : 0;
  const char *key, *sp, *flags_end;
  guint64 bytes;

  *name = NULL;
  if (line < 6 || memcmp (p, "VALUE ", 6) != 0)
    return line;
  key = (const char *) p + 6;
  sp = memchr (key, ' ', line - 6);
  flags_end = sp != NULL ? memchr (sp + 1, ' ', line - 6 - (size_t) (sp + 1 - key)) : NULL;
  if (flags_end == NULL)
    return line;
  bytes = g_ascii_strtoull (flags_end + 1, NULL, 10);
  *name = key;
  *name_len = (size_t) (sp - key);
  return bytes <= len - line && len - line - bytes >= 2 ? line + (size_t) bytes + 2 : 0;
}

size_t
mcq_lost_scan (const guint8 *p, size_t len, size_t sent, GHashTable *lost)
{
  size_t pos = 0, boundary = 0, end, name_len = 0;
  const char *name;

  while (pos < len && (end = record_end (p + pos, len - pos, &name, &name_len)) > 0)
    {
      pos += end;
      if (pos <= sent)
        boundary = pos;
      else if (lost == NULL)
        break;
      else if (name != NULL)
        mcq_lost_add (lost, name, name_len);
    }
  return boundary;
}

void
mcq_lost_warn (GHashTable *lost)
{
  g_autoptr(GString) list = g_string_new (NULL);
  g_autoptr(GList) names = g_list_sort (g_hash_table_get_keys (lost), (GCompareFunc) strcmp);
  guint total = 0;

  for (GList *l = names; l != NULL; l = l->next)
    {
      guint n = GPOINTER_TO_UINT (g_hash_table_lookup (lost, l->data));
      g_string_append_printf (list, "%s%s: %u", list->len > 0 ? ", " : "", (char *) l->data, n);
      total += n;
    }
  if (total > 0)
    g_warning (ngettext ("lost %u message taken for a client whose connection closed before "
                         "it read it, by queue: %s",
                         "lost %u messages taken for a client whose connection closed before "
                         "it read them, by queue: %s", total), total, list->str);
}
