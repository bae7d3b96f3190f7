/* worker.c — the load generator's hot loop.
 *
 * Each worker thread owns an epoll instance and a share of the connections
 * (non-blocking sockets).  The load is closed-loop: a connection keeps at
 * most --pipeline requests outstanding and sends the next one only when a
 * reply has come back, so the offered load follows the server's speed.
 * Nothing is shared between workers on the hot path except the read-mostly
 * phase flag and, for verification, the producers' sequence counters and
 * duplicate bitmaps (atomics; see bench.h).  Buffers are sized once at start:
 * no allocation per operation.
 *
 * Requests are built in the connection's write buffer, all the requests a
 * batch of replies allows go out in one send(), and one clock reading
 * timestamps the batch; likewise one reading per recv() timestamps every
 * reply parsed from it.
 */
#include "bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../i18n.h"
#include "../protocol.h"

enum { P_NEED, P_DONE, P_FATAL };
enum { RES_OK, RES_HIT, RES_MISS, RES_ERR };

static _Atomic unsigned reports;

uint64_t
now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void report (Conn *c, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

static void
report (Conn *c, const char *fmt, ...)
{
  if (atomic_fetch_add_explicit (&reports, 1, memory_order_relaxed) >= cfg.max_reports)
    return;
  char msg[512];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fputs ("memcacheq-bench: ", stderr);
  /* TRANSLATORS: the connection's number and its queue (or key), then what went wrong. */
  fprintf (stderr, _("connection %u (%.*s): %s\n"), c->id, (int) c->keylen, c->key, msg);
}

/* A wrong or unexpected reply: counted, the connection goes on. */
#define bench_error(c, ...) do { (c)->w->errors++; report ((c), __VA_ARGS__); } while (0)

static void conn_fail (Conn *c, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

static void
conn_fail (Conn *c, const char *fmt, ...)
{
  if (c->dead)
    return;
  char msg[400];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  c->w->errors++;
  c->w->conns_lost++;
  report (c, _("%s; connection dropped with %u request(s) outstanding"), msg, c->scount);
  c->dead = true;
  if (!c->finished)
    c->w->active--;
  epoll_ctl (c->w->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close (c->fd);
  c->fd = -1;
}

/* Printable excerpt of a reply for error messages. */
static const char *
excerpt (const char *p, size_t n, char *buf, size_t cap)
{
  size_t o = 0;
  for (size_t i = 0; i < n && o + 5 < cap; i++)
    {
      unsigned char ch = (unsigned char) p[i];
      if (ch == '\r')
        { buf[o++] = '\\'; buf[o++] = 'r'; }
      else if (ch == '\n')
        { buf[o++] = '\\'; buf[o++] = 'n'; }
      else if (ch < 0x20 || ch >= 0x7f)
        o += (size_t) snprintf (buf + o, cap - o, "\\x%02x", ch);
      else
        buf[o++] = (char) ch;
    }
  if (n > 0 && o + 5 >= cap)
    { buf[o - 3] = '.'; buf[o - 2] = '.'; buf[o - 1] = '.'; }
  buf[o] = '\0';
  return buf;
}

/* ------------------------------------------------------------------------ */
/* setup                                                                    */

static size_t
fmt_u64 (char *dst, uint64_t v)
{
  char tmp[24];
  size_t n = 0;
  do
    {
      tmp[n++] = (char) ('0' + v % 10);
      v /= 10;
    }
  while (v);
  for (size_t i = 0; i < n; i++)
    dst[i] = tmp[n - 1 - i];
  return n;
}

Conn *
conn_new (uint32_t id, int fd)
{
  Conn *c = calloc (1, sizeof *c);
  if (!c)
    abort ();
  c->fd = fd;
  c->id = id;
  c->queue = id % cfg.queues;
  if (cfg.cache)
    c->keylen = (size_t) snprintf (c->key, sizeof c->key, "%sc%u", cfg.prefix, id);
  else
    c->keylen = (size_t) snprintf (c->key, sizeof c->key, "%s%u", cfg.prefix, c->queue);

  if (cfg.protocol == PROTO_MEMCACHE)
    {
      c->set_head_len = (size_t) snprintf (c->set_head, sizeof c->set_head, "set %s ", c->key);
      c->set_tail_len = (size_t) snprintf (c->set_tail, sizeof c->set_tail, " 0 %zu\r\n", cfg.size);
      c->get_req_len = (size_t) snprintf (c->get_req, sizeof c->get_req, "get %s\r\n", c->key);
    }
  else
    {
      c->set_head_len = (size_t) snprintf (c->set_head, sizeof c->set_head,
                                           "*3\r\n$5\r\nRPUSH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                                           c->keylen, c->key, cfg.size);
      c->set_tail_len = 0;
      c->get_req_len = (size_t) snprintf (c->get_req, sizeof c->get_req,
                                          "*2\r\n$4\r\nLPOP\r\n$%zu\r\n%s\r\n", c->keylen, c->key);
    }

  size_t per_req = cfg.size + 400;
  c->wcap = cfg.pipeline * per_req;
  c->rcap = 2 * per_req > 65536 ? 2 * per_req : 65536;
  c->wbuf = malloc (c->wcap);
  c->rbuf = malloc (c->rcap);
  c->slots = calloc (cfg.pipeline, sizeof (Slot));
  if (!cfg.cache)
    c->seen = calloc (SEEN_CHUNKS, sizeof *c->seen);
  if (!c->wbuf || !c->rbuf || !c->slots || (!cfg.cache && !c->seen))
    abort ();
  c->quota = UINT64_MAX;
  return c;
}

void
conn_free (Conn *c)
{
  if (!c)
    return;
  if (c->fd >= 0)
    close (c->fd);
  if (c->seen)
    {
      for (unsigned i = 0; i < SEEN_CHUNKS; i++)
        free ((void *) atomic_load (&c->seen[i]));
      free ((void *) c->seen);
    }
  free (c->wbuf);
  free (c->rbuf);
  free (c->slots);
  free (c);
}

/* ------------------------------------------------------------------------ */
/* sending                                                                  */

static void
append (Conn *c, const char *p, size_t n)
{
  memcpy (c->wbuf + c->wlen, p, n);
  c->wlen += n;
}

static void
append_set (Conn *c)
{
  MsgId id = { cfg.tag, c->queue, c->id, c->seq };
  if (c->seen)
    {
      uint64_t chunk = c->seq >> SEEN_CHUNK_BITS;
      if (chunk < SEEN_CHUNKS && atomic_load_explicit (&c->seen[chunk], memory_order_relaxed) == NULL)
        {
          _Atomic uint64_t *bits = calloc ((UINT64_C (1) << SEEN_CHUNK_BITS) / 64, sizeof (uint64_t));
          if (!bits)
            abort ();
          atomic_store_explicit (&c->seen[chunk], bits, memory_order_release);
        }
    }
  append (c, c->set_head, c->set_head_len);
  if (cfg.protocol == PROTO_MEMCACHE)
    {
      /* The flags echo the body's hash: a server must keep them with it. */
      char flagbuf[24];
      append (c, flagbuf, fmt_u64 (flagbuf, msg_flags_of_hash (msg_hash (&id))));
      append (c, c->set_tail, c->set_tail_len);
    }
  msg_build (c->wbuf + c->wlen, cfg.size, &id);
  c->wlen += cfg.size;
  append (c, "\r\n", 2);
  c->last_set_seq = c->seq;
  c->have_set = true;
  c->seq++;
  atomic_store_explicit (&c->issued, c->seq, memory_order_release);
}

/* Queue as many requests as the pipeline allows. */
static void
conn_fill (Conn *c, uint64_t now, int phase)
{
  if (c->dead || c->finished || phase == PHASE_DONE)
    return;
  if (c->wpos > 0)
    {
      memmove (c->wbuf, c->wbuf + c->wpos, c->wlen - c->wpos);
      c->wlen -= c->wpos;
      c->wpos = 0;
    }
  bool measured = phase == PHASE_MEASURE;
  while (c->scount < cfg.pipeline)
    {
      if (cfg.requests && measured)
        {
          if (c->quota == 0)
            break;
          c->quota--;
        }
      int op;
      switch (cfg.mix)
        {
        case MIX_SET: op = OP_SET; break;
        case MIX_GET: op = OP_GET; break;
        default:
          op = c->next_get ? OP_GET : OP_SET;
          c->next_get = !c->next_get;
          break;
        }
      Slot *s = &c->slots[(c->shead + c->scount) % cfg.pipeline];
      c->scount++;
      s->op = (uint8_t) op;
      s->t_sent = now;
      s->measured = measured;
      if (op == OP_SET)
        append_set (c);
      else
        {
          s->expect_valid = c->have_set;
          s->expect_seq = c->last_set_seq;
          append (c, c->get_req, c->get_req_len);
        }
      c->last_activity = now;
    }
  if (cfg.requests && measured && c->quota == 0 && c->scount == 0)
    {
      c->finished = true;
      c->w->active--;
    }
}

static void
conn_flush (Conn *c)
{
  while (c->wpos < c->wlen)
    {
      ssize_t n = send (c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
      if (n > 0)
        {
          c->wpos += (size_t) n;
          continue;
        }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        {
          if (!c->epollout)
            {
              struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
              epoll_ctl (c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
              c->epollout = true;
            }
          return;
        }
      conn_fail (c, "send: %s", n < 0 ? strerror (errno) : _("no progress"));
      return;
    }
  c->wpos = c->wlen = 0;
  if (c->epollout)
    {
      struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
      epoll_ctl (c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
      c->epollout = false;
    }
}

/* ------------------------------------------------------------------------ */
/* verification                                                             */

static int
check_value (Conn *c, Slot *s, const char *body, size_t len, bool have_flags, uint32_t flags)
{
  MsgId id;
  MsgStatus st = msg_verify (body, len, cfg.size, have_flags, flags, &id);
  if (st != MSG_OK)
    {
      char ex[96];
      bench_error (c, _("get: %s (%zu bytes: \"%s\")"), _(msg_status_str (st)), len,
                   excerpt (body, len < 48 ? len : 48, ex, sizeof ex));
      return RES_ERR;
    }
  if (id.queue != c->queue)
    {
      bench_error (c, _("get: message of queue %u read from queue %u"), id.queue, c->queue);
      return RES_ERR;
    }
  if (id.tag != cfg.tag)
    {
      /* Written by another run (e.g. a fill): well formed, nothing more to check. */
      if (cfg.cache && s->expect_valid)
        {
          bench_error (c, _("get: value of another run, expected the one just set"));
          return RES_ERR;
        }
      if (s->measured)
        c->w->foreign++;
      return RES_HIT;
    }
  if (id.producer >= g_nconns)
    {
      bench_error (c, _("get: message names producer %u, there are %u"), id.producer, g_nconns);
      return RES_ERR;
    }
  Conn *p = g_conns[id.producer];
  if (id.seq >= atomic_load_explicit (&p->issued, memory_order_acquire))
    {
      bench_error (c, _("get: message %u/%llu was never sent"), id.producer,
                   (unsigned long long) id.seq);
      return RES_ERR;
    }
  if (cfg.cache)
    {
      if (!s->expect_valid || id.producer != c->id || id.seq != s->expect_seq)
        {
          bench_error (c, _("get: stale value %u/%llu, expected %u/%llu"), id.producer,
                       (unsigned long long) id.seq, c->id, (unsigned long long) s->expect_seq);
          return RES_ERR;
        }
      return RES_HIT;
    }
  uint64_t chunk = id.seq >> SEEN_CHUNK_BITS;
  if (chunk < SEEN_CHUNKS)
    {
      _Atomic uint64_t *bits = atomic_load_explicit (&p->seen[chunk], memory_order_acquire);
      uint64_t bit = id.seq & ((UINT64_C (1) << SEEN_CHUNK_BITS) - 1);
      uint64_t mask = UINT64_C (1) << (bit & 63);
      if (bits == NULL || (atomic_fetch_or_explicit (&bits[bit >> 6], mask, memory_order_relaxed) & mask))
        {
          bench_error (c, _("get: message %u/%llu delivered twice"), id.producer,
                       (unsigned long long) id.seq);
          return RES_ERR;
        }
    }
  return RES_HIT;
}

/* ------------------------------------------------------------------------ */
/* reply parsing                                                            */

/* The decimal number p..end, read as the daemon reads its requests. */
static bool
parse_uint (const char *p, const char *end, uint64_t *out)
{
  return mcq_parse_u64 (p, (size_t) (end - p), out);
}

/* A get's "VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n" at p, whose
 * first line is linelen bytes; avail bytes are buffered. */
static int
parse_value_block (Conn *c, Slot *s, const char *p, size_t linelen, size_t avail, int *result)
{
  const char *le = p + linelen - 1;
  const char *f[3];
  const char *fe[3];
  const char *q = p + 6;
  unsigned nf = 0;
  uint64_t flags, bytes;
  char ex[160];

  if (le > p && le[-1] == '\r')
    le--;
  while (q < le && nf < 3)
    {
      f[nf] = q;
      while (q < le && *q != ' ')
        q++;
      fe[nf++] = q;
      if (q < le)
        q++;
    }
  if (nf != 3 || q != le || !parse_uint (f[1], fe[1], &flags) || flags > UINT32_MAX
      || !parse_uint (f[2], fe[2], &bytes))
    {
      conn_fail (c, _("get: malformed VALUE line \"%s\""), excerpt (p, linelen, ex, sizeof ex));
      return P_FATAL;
    }
  if (bytes > cfg.size)
    {
      conn_fail (c, _("get: VALUE of %llu bytes, expected %zu"), (unsigned long long) bytes, cfg.size);
      return P_FATAL;
    }
  size_t need = linelen + bytes + 2 + 5;
  if (avail < need)
    return P_NEED;
  const char *data = p + linelen;
  if (memcmp (data + bytes, "\r\nEND\r\n", 7) != 0)
    {
      conn_fail (c, _("get: VALUE block not followed by \\r\\nEND\\r\\n: \"%s\""),
                 excerpt (data + bytes, 7, ex, sizeof ex));
      return P_FATAL;
    }
  if ((size_t) (fe[0] - f[0]) != c->keylen || memcmp (f[0], c->key, c->keylen) != 0)
    {
      bench_error (c, _("get: VALUE for key \"%s\""),
                   excerpt (f[0], (size_t) (fe[0] - f[0]), ex, sizeof ex));
      *result = RES_ERR;
    }
  else
    *result = check_value (c, s, data, bytes, true, (uint32_t) flags);
  c->rpos += need;
  return P_DONE;
}

/* The reply's first line at rpos: P_DONE with *linelen (up to and with its
 * \n), P_NEED while it is incomplete, P_FATAL once more than max bytes
 * came without one. */
static int
reply_line (Conn *c, size_t max, size_t *linelen)
{
  const char *p = c->rbuf + c->rpos;
  size_t avail = c->rlen - c->rpos;
  const char *nl = memchr (p, '\n', avail);
  char ex[160];

  if (nl)
    {
      *linelen = (size_t) (nl - p) + 1;
      return P_DONE;
    }
  if (avail > max)
    {
      conn_fail (c, _("reply line too long: \"%s\""), excerpt (p, 80, ex, sizeof ex));
      return P_FATAL;
    }
  return P_NEED;
}

static int
parse_memcache (Conn *c, Slot *s, int *result)
{
  const char *p = c->rbuf + c->rpos;
  size_t avail = c->rlen - c->rpos;
  size_t linelen;
  char ex[160];
  int r = reply_line (c, c->keylen + 128, &linelen);
  if (r != P_DONE)
    return r;

  if (s->op == OP_SET)
    {
      if (linelen == 8 && memcmp (p, "STORED\r\n", 8) == 0)
        *result = RES_OK;
      else
        {
          bench_error (c, _("set: unexpected reply \"%s\""), excerpt (p, linelen, ex, sizeof ex));
          *result = RES_ERR;
        }
      c->rpos += linelen;
      return P_DONE;
    }

  if (linelen == 5 && memcmp (p, "END\r\n", 5) == 0)
    {
      c->rpos += 5;
      *result = RES_MISS;
      return P_DONE;
    }
  if (linelen > 6 && memcmp (p, "VALUE ", 6) == 0)
    return parse_value_block (c, s, p, linelen, avail, result);
  bench_error (c, _("get: unexpected reply \"%s\""), excerpt (p, linelen, ex, sizeof ex));
  c->rpos += linelen;
  *result = RES_ERR;
  return P_DONE;
}

static int
parse_redis (Conn *c, Slot *s, int *result)
{
  const char *p = c->rbuf + c->rpos;
  size_t avail = c->rlen - c->rpos;
  size_t linelen;
  char ex[160];
  int r = reply_line (c, 512, &linelen);
  if (r != P_DONE)
    return r;
  const char *nl = p + linelen - 1;
  if (linelen < 3 || nl[-1] != '\r')
    {
      conn_fail (c, _("malformed RESP reply \"%s\""), excerpt (p, linelen, ex, sizeof ex));
      return P_FATAL;
    }
  if (p[0] == '-')
    {
      bench_error (c, _("%s: error reply \"%s\""), s->op == OP_SET ? "RPUSH" : "LPOP",
                   excerpt (p, linelen, ex, sizeof ex));
      c->rpos += linelen;
      *result = RES_ERR;
      return P_DONE;
    }
  if (s->op == OP_SET)
    {
      uint64_t n;
      if (p[0] != ':' || !parse_uint (p + 1, nl - 1, &n))
        {
          conn_fail (c, _("RPUSH: unexpected reply \"%s\""), excerpt (p, linelen, ex, sizeof ex));
          return P_FATAL;
        }
      c->rpos += linelen;
      *result = RES_OK;
      return P_DONE;
    }
  if ((linelen == 5 && memcmp (p, "$-1\r\n", 5) == 0) || (linelen == 3 && memcmp (p, "_\r\n", 3) == 0))
    {
      c->rpos += linelen;
      *result = RES_MISS;
      return P_DONE;
    }
  uint64_t bytes;
  if (p[0] != '$' || !parse_uint (p + 1, nl - 1, &bytes))
    {
      conn_fail (c, _("LPOP: unexpected reply \"%s\""), excerpt (p, linelen, ex, sizeof ex));
      return P_FATAL;
    }
  if (bytes > cfg.size)
    {
      conn_fail (c, _("LPOP: value of %llu bytes, expected %zu"), (unsigned long long) bytes, cfg.size);
      return P_FATAL;
    }
  size_t need = linelen + bytes + 2;
  if (avail < need)
    return P_NEED;
  if (memcmp (p + linelen + bytes, "\r\n", 2) != 0)
    {
      conn_fail (c, _("LPOP: bulk string not followed by \\r\\n"));
      return P_FATAL;
    }
  *result = check_value (c, s, p + linelen, bytes, false, 0);
  c->rpos += need;
  return P_DONE;
}

/* ------------------------------------------------------------------------ */
/* receiving                                                                */

/* Reads what the socket has into rbuf (compacted first when full); FALSE
 * when nothing was read or the connection failed. */
static bool
conn_receive (Conn *c)
{
  if (c->rpos == c->rlen)
    c->rpos = c->rlen = 0;
  else if (c->rpos > 0 && c->rlen == c->rcap)
    {
      memmove (c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
      c->rlen -= c->rpos;
      c->rpos = 0;
    }
  if (c->rlen == c->rcap)
    {
      conn_fail (c, _("reply larger than the read buffer (%zu bytes)"), c->rcap);
      return false;
    }
  ssize_t n = recv (c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
  if (n == 0)
    {
      conn_fail (c, _("connection closed by the server"));
      return false;
    }
  if (n < 0)
    {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        conn_fail (c, "recv: %s", strerror (errno));
      return false;
    }
  c->rlen += (size_t) n;
  return true;
}

/* Counts a reply of the measured window in the worker's figures. */
static void
count_reply (Worker *w, const Slot *s, int result, uint64_t now)
{
  w->ops++;
  hist_record (&w->hist, now - s->t_sent);
  if (s->op == OP_SET)
    w->sets++;
  else
    {
      w->gets++;
      if (result == RES_HIT)
        w->hits++;
      else
        w->misses++;
    }
}

static void
conn_readable (Conn *c)
{
  if (!conn_receive (c))
    return;

  uint64_t now = now_ns ();
  int phase = atomic_load_explicit (&g_phase, memory_order_acquire);
  c->last_activity = now;
  bool cache_semantics = cfg.cache;
  while (c->rpos < c->rlen)
    {
      if (c->scount == 0)
        {
          char ex[160];
          conn_fail (c, _("unsolicited data from the server: \"%s\""),
                     excerpt (c->rbuf + c->rpos, c->rlen - c->rpos > 60 ? 60 : c->rlen - c->rpos,
                              ex, sizeof ex));
          return;
        }
      Slot *s = &c->slots[c->shead];
      int result = RES_ERR;
      int r = cfg.protocol == PROTO_MEMCACHE ? parse_memcache (c, s, &result)
                                             : parse_redis (c, s, &result);
      if (r == P_NEED)
        break;
      if (r == P_FATAL)
        return;
      c->shead = (c->shead + 1) % cfg.pipeline;
      c->scount--;
      if (result == RES_MISS && cfg.mix == MIX_SETGET && (s->expect_valid || !cache_semantics))
        {
          /* Every get follows its connection's own set, so a queue (or a
           * cache) can never be empty here: a miss is a lost message. */
          bench_error (c, _("get: empty reply although a message was stored before"));
          result = RES_ERR;
        }
      if (result != RES_ERR && s->measured && phase == PHASE_MEASURE)
        count_reply (c->w, s, result, now);
    }
  if (c->dead)
    return;
  conn_fill (c, now, phase);
  conn_flush (c);
}

/* ------------------------------------------------------------------------ */

void *
worker_main (void *arg)
{
  Worker *w = arg;
  struct epoll_event evs[128];
  uint64_t now = now_ns ();
  int phase = atomic_load_explicit (&g_phase, memory_order_acquire);
  uint64_t timeout_ns = (uint64_t) (cfg.timeout * 1e9);
  uint64_t last_check = now;

  w->active = w->nconns;
  for (unsigned i = 0; i < w->nconns; i++)
    {
      Conn *c = w->conns[i];
      struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
      if (epoll_ctl (w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        {
          conn_fail (c, "epoll_ctl: %s", strerror (errno));
          continue;
        }
      conn_fill (c, now, phase);
      conn_flush (c);
    }

  while (w->active > 0)
    {
      int n = epoll_wait (w->ep, evs, 128, 50);
      int prev = phase;
      phase = atomic_load_explicit (&g_phase, memory_order_acquire);
      if (phase == PHASE_DONE)
        break;
      if (n < 0 && errno != EINTR)
        {
          perror ("memcacheq-bench: epoll_wait");
          abort ();
        }
      for (int i = 0; i < n; i++)
        {
          Conn *c = evs[i].data.ptr;
          if (c->dead)
            continue;
          if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            conn_readable (c);
          if (!c->dead && (evs[i].events & EPOLLOUT))
            conn_flush (c);
        }
      now = now_ns ();
      if (prev != phase || now - last_check > 50000000u)
        {
          last_check = now;
          for (unsigned i = 0; i < w->nconns; i++)
            {
              Conn *c = w->conns[i];
              if (c->dead || c->finished)
                continue;
              if (c->scount == 0)
                {
                  /* Idle (e.g. the quota starts at the measured phase). */
                  conn_fill (c, now, phase);
                  conn_flush (c);
                }
              else if (now - c->last_activity > timeout_ns)
                conn_fail (c, _("no reply within %.1f s"), cfg.timeout);
            }
        }
    }
  w->finish_ns = now_ns ();
  atomic_store_explicit (&w->exited, 1, memory_order_release);
  return NULL;
}
