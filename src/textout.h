/* textout.h — text output shared by memcacheqctl and memcacheq-bench:
 * terminal widths (CJK takes two columns), JSON strings, lined-up
 * "label  value" lines and tables. */
#pragma once

#include <glib.h>

/* Terminal columns s takes: wide (CJK) characters two, combining marks
 * none, each byte that is not valid UTF-8 one. */
guint mcq_text_width (const char *s);

/* Appends n spaces. */
void mcq_text_pad (GString *out, guint n);

/* Appends s as a JSON string: quotes, backslashes and control characters
 * (DEL too) escaped; other bytes as they are. */
void mcq_json_append_string (GString *out, const char *s);

/* A name fit for a terminal: bytes that are not valid UTF-8 as \xHH. */
char *mcq_text_printable (const char *name);

/* Prints n lines of "label  value", the values lined up two columns right
 * of the widest label. */
void mcq_text_print_fields (const char *const *labels, char **values, guint n);

/* A table: a header and rows of cells; the first column is left-aligned,
 * the others (numbers) right-aligned. */
typedef struct {
  GPtrArray *rows;              /* GStrv per row, the header first */
} McqTable;

void mcq_table_init (McqTable *t, const char *const *header);
/* Takes row (a GStrv with as many cells as the header). */
void mcq_table_add (McqTable *t, GStrv row);
/* Prints the table and frees its rows. */
void mcq_table_print (McqTable *t);
