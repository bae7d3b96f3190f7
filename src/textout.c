/* textout.c — text output shared by memcacheqctl and memcacheq-bench:
 * terminal widths, JSON strings, lined-up fields and tables. */
#include "textout.h"

#include <string.h>

char *
mcq_text_printable (const char *name)
{
  GString *out = g_string_new (NULL);
  const char *p = name, *end = name + strlen (name);

  while (p < end)
    {
      const char *bad;
      if (g_utf8_validate (p, end - p, &bad))
        {
          g_string_append_len (out, p, end - p);
          break;
        }
      g_string_append_len (out, p, bad - p);
      g_string_append_printf (out, "\\x%02x", (guint8) *bad);
      p = bad + 1;
    }
  return g_string_free (out, FALSE);
}

void
mcq_json_append_string (GString *out, const char *s)
{
  g_string_append_c (out, '"');
  for (; *s; s++)
    {
      guchar ch = (guchar) *s;
      if (ch == '"' || ch == '\\')
        g_string_append_printf (out, "\\%c", ch);
      else if (ch < 0x20 || ch == 0x7f)
        g_string_append_printf (out, "\\u%04x", ch);
      else
        g_string_append_c (out, (char) ch);
    }
  g_string_append_c (out, '"');
}

guint
mcq_text_width (const char *s)
{
  guint w = 0;

  for (const char *p = s; *p; p = g_utf8_next_char (p))
    {
      gunichar ch = g_utf8_get_char_validated (p, -1);
      if (ch == (gunichar) -1 || ch == (gunichar) -2)
        w++;
      else if (g_unichar_iswide (ch))
        w += 2;
      else if (!g_unichar_iszerowidth (ch))
        w++;
    }
  return w;
}

void
mcq_text_pad (GString *out, guint n)
{
  for (guint k = 0; k < n; k++)
    g_string_append_c (out, ' ');
}

void
mcq_text_print_fields (const char *const *labels, char **values, guint n)
{
  guint width = 0;

  for (guint i = 0; i < n; i++)
    width = MAX (width, mcq_text_width (labels[i]));
  for (guint i = 0; i < n; i++)
    {
      g_autoptr(GString) line = g_string_new (labels[i]);
      mcq_text_pad (line, width + 2 - mcq_text_width (labels[i]));
      g_string_append (line, values[i]);
      g_print ("%s\n", line->str);
    }
}

void
mcq_table_init (McqTable *t, const char *const *header)
{
  t->rows = g_ptr_array_new_with_free_func ((GDestroyNotify) g_strfreev);
  g_ptr_array_add (t->rows, g_strdupv ((char **) header));
}

void
mcq_table_add (McqTable *t, GStrv row)
{
  g_ptr_array_add (t->rows, row);
}

void
mcq_table_print (McqTable *t)
{
  guint ncols = g_strv_length (t->rows->pdata[0]);
  g_autofree guint *width = g_new0 (guint, ncols);

  for (guint r = 0; r < t->rows->len; r++)
    {
      char **row = t->rows->pdata[r];
      for (guint i = 0; i < ncols && row[i]; i++)
        width[i] = MAX (width[i], mcq_text_width (row[i]));
    }
  for (guint r = 0; r < t->rows->len; r++)
    {
      char **row = t->rows->pdata[r];
      g_autoptr(GString) line = g_string_new (NULL);
      for (guint i = 0; i < ncols && row[i]; i++)
        {
          guint fill = width[i] - mcq_text_width (row[i]);
          if (i > 0)
            g_string_append (line, "  ");
          if (i > 0)
            mcq_text_pad (line, fill);
          g_string_append (line, row[i]);
          if (i == 0 && i + 1 < ncols)
            mcq_text_pad (line, fill);
        }
      g_print ("%s\n", line->str);
    }
  g_ptr_array_unref (t->rows);
}
