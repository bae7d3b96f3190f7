/* reply.c — formats memcacheq's replies (see reply.h).
 * Owns the bytes of every reply that is not a parse error: values, stats,
 * store failures and the fixed lines.  Appends only; never writes a socket. */
#include "reply.h"

#include <string.h>

#include "config.h"

static void
append (GByteArray *out, const void *data, size_t len)
{
  g_byte_array_append (out, data, (guint) len);
}

static void G_GNUC_PRINTF (2, 3)
append_printf (GByteArray *out, const char *fmt, ...)
{
  char buf[512];
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = g_vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  append (out, buf, (size_t) MIN (n, (int) sizeof buf - 1));
}

const char *
mcq_reply_line_text (McqReplyLine kind)
{
  static const char *const lines[] = {
    [MCQ_REPLY_STORED] = "STORED\r\n",
    [MCQ_REPLY_DELETED] = "DELETED\r\n",
    [MCQ_REPLY_NOT_FOUND] = "NOT_FOUND\r\n",
    [MCQ_REPLY_OK] = "OK\r\n",
    [MCQ_REPLY_RESET] = "RESET\r\n",
    [MCQ_REPLY_END] = "END\r\n",
    [MCQ_REPLY_VERSION] = "VERSION " MCQ_VERSION "\r\n",
  };

  g_return_val_if_fail ((guint) kind < G_N_ELEMENTS (lines), "");
  return lines[kind];
}

void
mcq_reply_line (GByteArray *out, McqReplyLine kind)
{
  mcq_reply_text (out, mcq_reply_line_text (kind));
}

void
mcq_reply_text (GByteArray *out, const char *text)
{
  append (out, text, strlen (text));
}

/* Writes v in decimal just before end (20 bytes hold any guint64);
 * returns where the digits start. */
static char *
decimal_end (char *end, guint64 v)
{
  do
    *--end = (char) ('0' + v % 10);
  while ((v /= 10) != 0);
  return end;
}

/* Built by hand, not with printf: it is on the path of every message a
 * get returns. */
void
mcq_reply_value (GByteArray *out, const char *key, guint32 flags,
                 const void *data, size_t len, gboolean with_cas, guint64 cas)
{
  char rest[3 * 21 + 2], num[20], *p = rest, *d;
  guint64 fields[3] = { flags, len, cas };

  append (out, "VALUE ", 6);
  append (out, key, strlen (key));
  for (int i = 0; i < (with_cas ? 3 : 2); i++)
    {
      d = decimal_end (num + sizeof num, fields[i]);
      *p++ = ' ';
      p = mempcpy (p, d, (size_t) (num + sizeof num - d));
    }
  *p++ = '\r';
  *p++ = '\n';
  append (out, rest, (size_t) (p - rest));
  append (out, data, len);
  append (out, "\r\n", 2);
}

guint
mcq_reply_values (GByteArray *out, const char *keys, size_t keys_len,
                  const McqMessage *msgs, guint nmsgs, gboolean with_cas)
{
  guint hits = 0;
  size_t pos = 0;

  for (guint i = 0; i < nmsgs && pos < keys_len; i++)
    {
      const char *name = keys + pos;
      pos += strlen (name) + 1;
      if (msgs[i].data == NULL)
        continue;
      hits++;
      mcq_reply_value (out, name, msgs[i].flags, msgs[i].data, msgs[i].len, with_cas,
                       msgs[i].seq);
    }
  mcq_reply_line (out, MCQ_REPLY_END);
  return hits;
}

void
mcq_reply_queue_stats (GByteArray *out, const McqQueueStat *stats, guint n)
{
  for (guint i = 0; i < n; i++)
    append_printf (out, "STAT %s %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT "\r\n",
                   stats[i].name, stats[i].enqueued, stats[i].dequeued);
  mcq_reply_line (out, MCQ_REPLY_END);
}

void
mcq_reply_stats (GByteArray *out, const McqStatsReport *st)
{
  append_printf (out, "STAT pid %ld\r\n", st->pid);
  append_printf (out, "STAT uptime %" G_GINT64_FORMAT "\r\n", st->uptime_s);
  append_printf (out, "STAT time %" G_GINT64_FORMAT "\r\n", st->time_s);
  append_printf (out, "STAT version %s\r\n", MCQ_VERSION);
  append_printf (out, "STAT pointer_size %zu\r\n", 8 * sizeof (void *));
  append_printf (out, "STAT rusage_user %" G_GINT64_FORMAT ".%06" G_GINT64_FORMAT "\r\n",
                 st->user_s, st->user_us);
  append_printf (out, "STAT rusage_system %" G_GINT64_FORMAT ".%06" G_GINT64_FORMAT "\r\n",
                 st->system_s, st->system_us);
  append_printf (out, "STAT curr_connections %u\r\n", st->curr_conns);
  append_printf (out, "STAT total_connections %" G_GUINT64_FORMAT "\r\n", st->total_conns);
  append_printf (out, "STAT connection_structures %u\r\n", st->conn_structures);
  append_printf (out, "STAT get_cmds %" G_GUINT64_FORMAT "\r\n", st->get_cmds);
  append_printf (out, "STAT get_hits %" G_GUINT64_FORMAT "\r\n", st->get_hits);
  append_printf (out, "STAT set_cmds %" G_GUINT64_FORMAT "\r\n", st->set_cmds);
  append_printf (out, "STAT set_hits %" G_GUINT64_FORMAT "\r\n", st->set_hits);
  append_printf (out, "STAT bytes_read %" G_GUINT64_FORMAT "\r\n", st->bytes_read);
  append_printf (out, "STAT bytes_written %" G_GUINT64_FORMAT "\r\n", st->bytes_written);
  append_printf (out, "STAT threads %u\r\n", st->threads);
  append_printf (out, "STAT curr_queues %" G_GUINT64_FORMAT "\r\n", st->curr_queues);
  append_printf (out, "STAT curr_items %" G_GUINT64_FORMAT "\r\n", st->curr_items);
  append_printf (out, "STAT durable %d\r\n", st->durable ? 1 : 0);
  append_printf (out, "STAT damaged_messages %" G_GUINT64_FORMAT "\r\n", st->damaged_messages);
  mcq_reply_line (out, MCQ_REPLY_END);
}

/* The message goes whole, however long, so the line always ends in
 * "\r\n"; a line break inside it would end the reply early. */
void
mcq_reply_failure (GByteArray *out, const char *message, gboolean no_space)
{
  guint start;

  mcq_reply_text (out, no_space ? "SERVER_ERROR out of disk space: " : "SERVER_ERROR ");
  start = out->len;
  mcq_reply_text (out, message);
  for (guint i = start; i < out->len; i++)
    if (out->data[i] == '\r' || out->data[i] == '\n')
      out->data[i] = ' ';
  append (out, "\r\n", 2);
}
