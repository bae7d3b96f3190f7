/* connection.c — client connections on the main loop.
 * Owns each socket's lifetime, its input (read, parsed, bounded), its
 * output and the client timeouts; the requests themselves go to slot.c. */
#include <gio/gio.h>
#include "connection-internal.h"

#include <errno.h>
#include <linux/sockios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "config.h"
#include "budget.h"
#include "log.h"
#include "lost.h"
#include "poller.h"
#include "release.h"

/* Read granularity, and the bounds that keep one client from using
 * unbounded memory: past OUT_HIGH bytes of unsent replies, PIPELINE_MAX
 * unanswered requests or mcq_conn_limit() bytes held for it in all (see
 * conn_held) we stop reading from it until it catches up. */
#define OUT_HIGH (4 * 1024 * 1024)
/* A client that reads nothing for the client timeout (--client-timeout)
 * while replies wait is cut off; the sweep looks at least this often. */
#define SWEEP_INTERVAL_S 5
/* A set bigger than PARTIAL_SMALL reserves its whole length from a budget
 * shared by all connections (PARTIAL_BUDGET_MIN, or one maximal request)
 * before its body is read, and waits, reading nothing, while it is taken.
 * A request begun always has room to finish, so waiting cannot deadlock;
 * one unfinished at the client timeout is cut off, giving its share back. */
#define PARTIAL_SMALL (64 * 1024)
#define PARTIAL_BUDGET_MIN (64 * 1024 * 1024)
#define OUT_KEEP (4 * 1024)
#define PIPELINE_MAX 256
/* How long a connection being closed waits for its peer to take the last
 * bytes sent (see conn_finish), and how often it looks. */
#define LINGER_S 5
#define LINGER_CHECK_MS 20

static gboolean conn_watch (McqConnection *c, int op);
static void conn_process_input (McqConnection *c);
static McqBudget partial;

/* ---- lifetime ------------------------------------------------------------- */

/* The last reference gone: everything the connection held is freed, and
 * given back to the system soon after if it was much. */
void
mcq_conn_unref (McqConnection *c)
{
  if (--c->refs > 0)
    return;
  while (!g_queue_is_empty (&c->slots))
    mcq_slot_free (g_queue_pop_head_link (&c->slots)->data);
  mcq_release_any (&c->in);
  mcq_release_any (&c->out);
  c->server->conn_structures--;
  g_free (c);
  mcq_release_trim_soon ();
}

static void
conn_close (McqConnection *c)
{
  McqServer *srv = c->server;

  if (c->closed)
    return;
  c->closed = TRUE;
  c->read_closed = TRUE;
  if (c->linger_timer != 0)
    g_source_remove (c->linger_timer);
  c->linger_timer = 0;
  mcq_slots_report_lost (c);
  mcq_budget_release (&partial, &c->claim);
  mcq_poller_forget (c->fd);
  close (c->fd);
  c->fd = -1;
  srv->curr_conns--;
  srv->conns = g_list_remove (srv->conns, c);
  g_debug ("connection closed (%u open)", srv->curr_conns);
  mcq_conn_unref (c);
}

/* Reads and drops whatever the peer sent; FALSE once it has closed its
 * side or the socket failed. */
static gboolean
discard_input (int fd)
{
  char sink[16 * 1024];

  for (;;)
    {
      ssize_t n = recv (fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0)
        continue;
      if (n < 0 && errno == EINTR)
        continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* Whether the peer has acknowledged every byte we sent. */
static gboolean
all_acknowledged (int fd)
{
  int unacked = 0;
  return ioctl (fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
}

/* Whether a socket whose sending side is shut may be closed now: its peer
 * has closed (or the socket failed), `until` has passed, or, if
 * acked_is_enough, the peer has acknowledged every byte sent.  Input is
 * dropped first, so a close leaves none unread. */
static gboolean
linger_over (int fd, gint64 until, gboolean acked_is_enough)
{
  return !discard_input (fd) || (acked_is_enough && all_acknowledged (fd)) ||
         g_get_monotonic_time () >= until;
}

static gboolean
linger_check (gpointer data)
{
  McqConnection *c = data;

  if (!linger_over (c->fd, c->linger_until, TRUE))
    return G_SOURCE_CONTINUE;
  c->linger_timer = 0;
  conn_close (c);
  return G_SOURCE_REMOVE;
}

/* Ends a connection that owes nothing more, so that its peer reads every
 * byte sent and then an end of stream, never a reset (which unread input
 * would cause, throwing away the end of a message a get took): our side is
 * shut, input dropped, and the socket closed once all is acknowledged,
 * the peer closes, or LINGER_S pass. */
static void
conn_finish (McqConnection *c)
{
  if (c->linger_timer != 0)
    return;
  if (!discard_input (c->fd) || all_acknowledged (c->fd) || shutdown (c->fd, SHUT_WR) != 0)
    {
      conn_close (c);
      return;
    }
  c->read_closed = TRUE;
  c->want = EPOLLIN;
  if (!conn_watch (c, EPOLL_CTL_MOD))
    {
      conn_close (c);
      return;
    }
  c->linger_until = g_get_monotonic_time () + LINGER_S * G_USEC_PER_SEC;
  c->linger_timer = g_timeout_add (LINGER_CHECK_MS, linger_check, c);
}

/* ---- output ---------------------------------------------------------------- */

/* Bytes held for c: input kept, set bodies in flight, messages taken,
 * replies not yet sent.  Reading stops while it is at mcq_conn_limit. */
static guint64
conn_held (McqConnection *c)
{
  return (c->in != NULL ? c->in->len : 0) + c->held + c->taken + (c->out != NULL ? c->out->len : 0);
}

/* Writes as much as the socket takes.  Returns FALSE if the peer is gone. */
static gboolean
conn_write (McqConnection *c)
{
  while (mcq_conn_out_pending (c) > 0)
    {
      ssize_t n = send (c->fd, c->out->data + c->out_off, mcq_conn_out_pending (c), MSG_NOSIGNAL);
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
          g_debug ("write failed: %s", g_strerror (errno));
          return FALSE;
        }
      c->out_off += (size_t) n;
      c->last_write = g_get_monotonic_time ();
      c->server->counters.bytes_written += (guint64) n;
    }
  if (c->out == NULL)
    return TRUE;
  if (c->out_off == c->out->len)
    {
      /* Keep a small buffer for the next replies; give a big one back. */
      if (c->out_peak > OUT_KEEP)
        mcq_release_big (&c->out);
      else
        g_byte_array_set_size (c->out, 0);
      c->out_off = 0;
      c->out_peak = 0;
    }
  else if (c->out_off > c->out->len / 2)
    {
      /* Only whole replies go, so that the output always starts with one
       * (see mcq_slots_report_lost). */
      size_t cut = mcq_lost_scan (c->out->data, c->out->len, c->out_off, NULL);
      g_byte_array_remove_range (c->out, 0, (guint) cut);
      c->out_off -= cut;
    }
  return TRUE;
}

/* ---- the budget of partial requests (see PARTIAL_SMALL) ------------------- */

/* Waiting connections read again once their claim is granted.  Only
 * their interest changes: each is handled when the poller reports it,
 * since handling one connection must never close another. */
static void
partial_granted (McqBudgetClaim *claim)
{
  McqConnection *w = claim->owner;

  w->want |= EPOLLIN;
  conn_watch (w, EPOLL_CTL_MOD);
}

/* A request (or the bytes of a refused one) has been read in full: the
 * clock of unfinished requests restarts, its reservation goes back. */
static void
request_read (McqConnection *c)
{
  c->incomplete_since = 0;
  c->need = 0;
  mcq_budget_release (&partial, &c->claim);
}

static gboolean
may_parse (McqConnection *c)
{
  return !c->read_closed && !c->draining && !c->claim.waiting &&
         g_queue_get_length (&c->slots) < PIPELINE_MAX && mcq_conn_out_pending (c) < OUT_HIGH &&
         conn_held (c) < mcq_conn_limit (c);
}

/* Parses and dispatches what buf holds; returns how much was used.  What
 * is left is an incomplete request, or input parked while the client has
 * too many requests in flight. */
static size_t
process_bytes (McqConnection *c, const char *buf, size_t len)
{
  size_t used = 0;

  while (used < len && may_parse (c))
    {
      const char *p = buf + used;
      size_t avail = len - used;
      McqRequest req;
      McqParseResult r;

      if (c->discard > 0)
        {
          size_t n = (size_t) MIN ((guint64) avail, c->discard);
          c->discard -= n;
          used += n;
          if (c->discard == 0 && !c->skip_line)
            request_read (c);
          continue;
        }
      if (c->skip_line)
        {
          const char *nl = memchr (p, '\n', avail);
          used += nl ? (size_t) (nl - p) + 1 : avail;
          c->skip_line = nl == NULL;
          if (nl != NULL)
            request_read (c);
          continue;
        }

      r = c->auth.passed ? mcq_parse_request (p, avail, c->server->max_body, &req)
                         : mcq_auth_parse (c->server->auth, &c->auth, (char *) p, avail, &req);
      if (r.status != MCQ_PARSE_NEED_MORE)
        request_read (c);
      switch (r.status)
        {
        case MCQ_PARSE_NEED_MORE:
          c->need = r.need;
          if (c->need > PARTIAL_SMALL && !c->claim.granted && !c->claim.waiting)
            mcq_budget_claim (&partial, &c->claim, c->need);
          return used;
        case MCQ_PARSE_REQUEST:
          mcq_slot_handle_request (c, &req);
          break;
        case MCQ_PARSE_ERROR:
          if (r.noreply)
            g_info (_("not answering a noreply request: %.*s"), (int) strlen (r.error) - 2, r.error);
          else
            mcq_slot_immediate (c, r.error);
          c->discard = r.discard;
          c->skip_line = r.skip_line;
          break;
        case MCQ_PARSE_FATAL:
          mcq_slot_immediate (c, r.error);
          g_info (_("closing a connection: %.*s"), (int) strlen (r.error) - 2, r.error);
          c->read_closed = TRUE;
          break;
        default:
          g_assert_not_reached ();
        }
      used += r.consumed;
    }
  return used;
}

/* Parses input kept from earlier reads. */
static void
conn_process_input (McqConnection *c)
{
  if (c->in == NULL)
    return;
  c->in_off += process_bytes (c, (const char *) c->in->data + c->in_off, c->in->len - c->in_off);
  if (c->in_off == c->in->len || c->read_closed)
    {
      /* Nothing kept: give the memory back, idle connections cost little. */
      mcq_release_any (&c->in);
      c->in_off = 0;
    }
  else if (c->in_off > 0 && c->in_off >= c->in->len / 2)
    {
      g_byte_array_remove_range (c->in, 0, (guint) c->in_off);
      c->in_off = 0;
    }
}

/* Reads what is there.  Returns FALSE when the connection must close now.
 * Reads land in one buffer shared by all connections (they all run on the
 * main thread); only an incomplete request is copied to the connection. */
static gboolean
conn_read (McqConnection *c)
{
  static char shared[64 * 1024];

  for (int rounds = 0; rounds < 4 && may_parse (c); rounds++)
    {
      ssize_t n = recv (c->fd, shared, sizeof shared, 0);

      if (n == 0)
        {
          c->read_closed = TRUE;   /* half-close: still answer what came */
          return TRUE;
        }
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            return TRUE;
          g_debug ("read failed: %s", g_strerror (errno));
          return FALSE;
        }
      c->server->counters.bytes_read += (guint64) n;
      if (c->in == NULL)
        {
          size_t used = process_bytes (c, shared, (size_t) n);
          if (used < (size_t) n && !c->read_closed)
            {
              c->in = g_byte_array_sized_new ((guint) ((size_t) n - used));
              g_byte_array_append (c->in, (const guint8 *) shared + used, (guint) ((size_t) n - used));
            }
        }
      else
        {
          g_byte_array_append (c->in, (const guint8 *) shared, (guint) n);
          conn_process_input (c);
        }
      if ((size_t) n < sizeof shared)
        return TRUE;
    }
  return TRUE;
}

/* Writes what can be written, then decides which events to wait for. */
void
mcq_conn_update (McqConnection *c)
{
  guint32 want = 0;
  gboolean may_read;

  if (c->closed)
    return;
  mcq_slots_release_replies (c);
  if (!conn_write (c))
    {
      conn_close (c);
      return;
    }
  if (c->parked > 0 &&
      (c->draining || (mcq_conn_out_pending (c) == 0 && ((Slot *) g_queue_peek_head (&c->slots))->park)))
    mcq_slots_unpark (c);
  /* Input parked while the pipeline was full can be parsed now; keep
   * going while it makes progress, since requests answered on the spot
   * (version, errors) complete no store op that would bring us back. */
  while (c->in != NULL && may_parse (c))
    {
      size_t before = c->in->len - c->in_off;
      conn_process_input (c);
      mcq_slots_release_replies (c);
      if (!conn_write (c))
        {
          conn_close (c);
          return;
        }
      if (c->in != NULL && c->in->len - c->in_off == before)
        break;
    }
  if ((c->read_closed || c->draining) && g_queue_is_empty (&c->slots) && mcq_conn_out_pending (c) == 0)
    {
      /* Draining stops parsing and closes once every request parsed has
       * been answered; conn_finish makes sure the client reads all of it
       * and then an end of stream, never a reset, whatever it sent after. */
      conn_finish (c);
      return;
    }
  may_read = may_parse (c);
  if (c->read_closed)
    mcq_budget_release (&partial, &c->claim);
  /* The clock of an unfinished request runs while it is the client's turn
   * to send, and while it waits for the budget of partial requests: a
   * request must be whole within the client timeout of its first byte. */
  if ((!may_read && !c->claim.waiting) || (c->in == NULL && c->discard == 0 && !c->skip_line))
    c->incomplete_since = 0;
  else if (c->incomplete_since == 0)
    c->incomplete_since = g_get_monotonic_time ();
  if (may_read)
    want |= EPOLLIN;
  if (mcq_conn_out_pending (c) > 0)
    want |= EPOLLOUT;
  /* Only tell the kernel when the interest really changes, not once per
   * request. */
  if (want != c->want)
    {
      c->want = want;
      if (!conn_watch (c, EPOLL_CTL_MOD))
        conn_close (c);
    }
}

/* Tells the poller which events c waits for now (c->want); FALSE if the
 * kernel refuses. */
static gboolean
conn_watch (McqConnection *c, int op)
{
  return mcq_poller_watch (c->fd, op, c->want, c);
}

/* Handles what epoll reported for the connection. */
static void
conn_event (gpointer target, guint32 events)
{
  McqConnection *c = target;

  if (events & EPOLLERR)
    {
      conn_close (c);
      return;
    }
  if (c->linger_timer != 0)
    {
      if (!discard_input (c->fd))
        conn_close (c);
      return;
    }
  if (events & (EPOLLIN | EPOLLHUP))
    {
      if (!conn_read (c))
        {
          conn_close (c);
          return;
        }
    }
  mcq_conn_update (c);
}

/* Closes connections whose replies have waited unread, or whose request
 * has stayed unfinished, for longer than the client timeout. */
static gboolean
sweep (gpointer data)
{
  McqServer *srv = data;
  gint64 now = g_get_monotonic_time ();
  gint64 timeout = (gint64) srv->client_timeout_s * G_USEC_PER_SEC;
  g_autoptr(GList) conns = g_list_copy (srv->conns);
  guint stalled = 0, unfinished = 0;

  for (GList *l = conns; l != NULL; l = l->next)
    {
      McqConnection *c = l->data;
      if (mcq_conn_out_pending (c) > 0 && now - c->last_write > timeout)
        stalled++;
      else if (c->incomplete_since != 0 && !c->read_closed && now - c->incomplete_since > timeout)
        unfinished++;
      else
        continue;
      conn_close (c);
    }
  if (stalled > 0)
    g_warning (ngettext ("cut off %u client that read none of the replies waiting for it for %u s",
                         "cut off %u clients that read none of the replies waiting for them for %u s",
                         stalled), stalled, srv->client_timeout_s);
  if (unfinished > 0)
    g_warning (ngettext ("cut off %u client that left a request unfinished for %u s",
                         "cut off %u clients that left a request unfinished for %u s",
                         unfinished), unfinished, srv->client_timeout_s);
  mcq_release_trim ();
  return G_SOURCE_CONTINUE;
}

McqConnection *
mcq_connection_new (McqServer *srv, int fd)
{
  static guint sweep_source;
  McqConnection *c = g_new0 (McqConnection, 1);

  c->server = srv;
  c->fd = fd;
  c->refs = 1;
  c->claim.owner = c;
  if (partial.size == 0)
    {
      /* One maximal set (line, body, \r\n) always fits. */
      partial.size = MAX ((guint64) PARTIAL_BUDGET_MIN, srv->max_body + MCQ_LINE_MAX + 16);
      partial.granted = partial_granted;
    }
  c->last_write = g_get_monotonic_time ();
  c->auth.passed = srv->auth == NULL;
  if (sweep_source == 0)
    sweep_source = g_timeout_add_seconds (CLAMP (srv->client_timeout_s / 2, 1, SWEEP_INTERVAL_S),
                                          sweep, srv);
  g_queue_init (&c->slots);
  mcq_poller_init (conn_event);
  c->want = EPOLLIN;
  if (!conn_watch (c, EPOLL_CTL_ADD))
    {
      g_free (c);
      mcq_connection_refuse (fd, "SERVER_ERROR cannot watch the connection\r\n");
      return NULL;
    }

  srv->curr_conns++;
  srv->total_conns++;
  srv->conn_structures++;
  srv->conns = g_list_prepend (srv->conns, c);
  g_debug ("connection opened (%u open)", srv->curr_conns);
  return c;
}

/* A refused socket, kept until its client has closed (see
 * mcq_connection_refuse). */
typedef struct {
  int fd;
  gint64 until;
} Refused;

static guint refused_open;

static gboolean
refused_check (gpointer data)
{
  Refused *r = data;

  /* Not closed at the acknowledgement: the client's request may still be
   * on its way, and would be answered with a reset. */
  if (!linger_over (r->fd, r->until, FALSE))
    return G_SOURCE_CONTINUE;
  close (r->fd);
  refused_open--;
  g_free (r);
  return G_SOURCE_REMOVE;
}

/* A refused client reads its reply and then an end of stream, never a
 * reset for the request it sent on connecting: the socket lingers, input
 * dropped, until the client closes or REFUSED_LINGER_MS pass.  Past
 * REFUSED_MAX lingering at once (a flood -c withstands) they close at once. */
#define REFUSED_LINGER_MS 1000
#define REFUSED_MAX 64

void
mcq_connection_refuse (int fd, const char *reply)
{
  ssize_t ignored = send (fd, reply, strlen (reply), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void) ignored;
  if (refused_open < REFUSED_MAX && shutdown (fd, SHUT_WR) == 0 && discard_input (fd))
    {
      Refused *r = g_new (Refused, 1);
      r->fd = fd;
      r->until = g_get_monotonic_time () + REFUSED_LINGER_MS * 1000;
      refused_open++;
      g_timeout_add (LINGER_CHECK_MS, refused_check, r);
      return;
    }
  close (fd);
}

void
mcq_connection_drain (McqConnection *c)
{
  c->draining = TRUE;
  mcq_conn_update (c);
}

void
mcq_connection_close_all (McqServer *srv)
{
  while (srv->conns != NULL)
    conn_close (srv->conns->data);
}
