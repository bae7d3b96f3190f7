/* main.c — memcacheq-bench: options, connections, the measured window, the report. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "../i18n.h"
#include "../switches.h"
#include "../textout.h"

BenchConfig cfg;
_Atomic int g_phase;
Conn **g_conns;
unsigned g_nconns;

static const char description[] =
  /* xgettext:no-c-format */
  N_("memcacheq-bench is a closed-loop load generator for message queues that speak\n"
     "the memcache text protocol (memcacheq) or Redis RESP (lists), in the manner\n"
     "of redis-benchmark or memtier_benchmark.  It opens --connections connections,\n"
     "spread over --threads threads that each drive their share with non-blocking\n"
     "sockets and epoll.  Every connection keeps --pipeline requests in flight\n"
     "(default 1) and sends the next one as soon as a reply arrives.  Connection i\n"
     "works on queue i modulo --queues.  With --mix=set it only appends (memcache\n"
     "\"set\", Redis RPUSH), with --mix=get it only takes (\"get\", LPOP), and with\n"
     "--mix=setget it alternates a set and a get on the same connection.  After\n"
     "--warmup seconds it measures for --duration seconds, or until --requests\n"
     "requests have completed, then prints the throughput, the latency percentiles\n"
     "p50, p99 and p99.9 (from a log-linear histogram with under 1% error), the\n"
     "number of errors and, given --pid, the CPU time the server process spent per\n"
     "operation, read from /proc/PID/stat before and after the window.\n"
     "\n"
     "Every message body is self-verifying: it carries a run tag, its queue, the\n"
     "connection that sent it, that connection's sequence number and a hash of\n"
     "these, and is filled to --size bytes with a pattern selected by the hash.\n"
     "Every message read back is checked for size, header, hash, filler, memcache\n"
     "flags, queue, and that it was really sent and is not delivered twice; with\n"
     "--cache (for memcached) each connection uses its own key and a get must\n"
     "return exactly the value that connection set last.  In setget mode an empty\n"
     "reply is a lost message.  Failed checks, error replies and dropped\n"
     "connections count as errors, never as operations, and make the exit status 1.\n"
     "\n"
     "Exit status: 0 when the run completed without errors, 1 when there were\n"
     "errors, 2 on bad usage or when the server cannot be reached.");

static gchar *opt_server = NULL;
static gint opt_port = -1;
static gchar *opt_unix = NULL;
static gint opt_conns = 50;
static gint opt_queues = 10;
static gint64 opt_size = 100;
static gchar *opt_mix = NULL;
static gdouble opt_duration = 10;
static gboolean opt_duration_given = FALSE;
static gint64 opt_requests = 0;
static gdouble opt_warmup = 1;
static gboolean opt_warmup_given = FALSE;
static gint opt_pipeline = 1;
static gchar *opt_protocol = NULL;
static gint opt_pid = 0;
static gint opt_threads = 0;
static gboolean opt_json = FALSE;
static gboolean opt_cache = FALSE;
static gchar *opt_prefix = NULL;
static gdouble opt_timeout = 10;
static gboolean opt_quiet = FALSE;
static gboolean opt_version = FALSE;
static gchar *opt_auth_file = NULL;
/* --auth-file: the auth set every connection sends first, or NULL. */
static char *auth_req = NULL;

/* --duration and --warmup: whether each was given is kept apart from its
 * value, so that a negative one is refused rather than taken for "not
 * given" (the default). */
static gboolean
on_seconds (const char *name, const char *value, gpointer data, GError **error)
{
  gboolean duration = strcmp (name, "-t") == 0 || strcmp (name, "--duration") == 0;
  char *end = NULL;
  double v = g_ascii_strtod (value, &end);

  if (*value == '\0' || end == NULL || *end != '\0')
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   _("%s: %s: expected a number of seconds"), name, value);
      return FALSE;
    }
  *(duration ? &opt_duration : &opt_warmup) = v;
  *(duration ? &opt_duration_given : &opt_warmup_given) = TRUE;
  return TRUE;
}

static const GOptionEntry entries[] = {
  { "server", 's', 0, G_OPTION_ARG_STRING, &opt_server, N_("server host name or address (default 127.0.0.1)"), N_("HOST") },
  { "port", 'p', 0, G_OPTION_ARG_INT, &opt_port, N_("TCP port (default 22201 for memcache, 6379 for redis)"), N_("PORT") },
  { "unix", 'u', 0, G_OPTION_ARG_FILENAME, &opt_unix, N_("connect to this unix stream socket instead of TCP"), N_("PATH") },
  { "connections", 'c', 0, G_OPTION_ARG_INT, &opt_conns, N_("connections (default 50)"), N_("N") },
  { "queues", 'q', 0, G_OPTION_ARG_INT, &opt_queues, N_("queues; connection i uses queue i mod N (default 10)"), N_("N") },
  { "size", 'd', 0, G_OPTION_ARG_INT64, &opt_size, N_("message size in bytes, at least 40 (default 100)"), N_("BYTES") },
  { "mix", 'm', 0, G_OPTION_ARG_STRING, &opt_mix, N_("set, get or setget: a set then a get on each connection (default setget)"), N_("MIX") },
  { "duration", 't', 0, G_OPTION_ARG_CALLBACK, (gpointer) on_seconds, N_("seconds to measure (default 10)"), N_("SECONDS") },
  { "requests", 'n', 0, G_OPTION_ARG_INT64, &opt_requests, N_("measure this many requests in all instead of a duration"), N_("N") },
  { "warmup", 'w', 0, G_OPTION_ARG_CALLBACK, (gpointer) on_seconds, N_("seconds of load before measuring (default 1, or 0 with -n)"), N_("SECONDS") },
  { "pipeline", 'P', 0, G_OPTION_ARG_INT, &opt_pipeline, N_("requests in flight per connection (default 1)"), N_("N") },
  { "protocol", 'r', 0, G_OPTION_ARG_STRING, &opt_protocol, N_("memcache (set/get) or redis (RPUSH/LPOP) (default memcache)"), N_("PROTO") },
  { "pid", 0, 0, G_OPTION_ARG_INT, &opt_pid, N_("server process id: report its CPU time per operation"), N_("PID") },
  { "threads", 'T', 0, G_OPTION_ARG_INT, &opt_threads, N_("worker threads (default: one per CPU, at most one per connection)"), N_("N") },
  { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json, N_("print the result as one line of JSON"), NULL },
  { "cache", 0, 0, G_OPTION_ARG_NONE, &opt_cache, N_("the server is a cache (memcached): one key per connection, a get returns the last set"), NULL },
  { "key-prefix", 'k', 0, G_OPTION_ARG_STRING, &opt_prefix, N_("queue/key name prefix (default \"bench\")"), N_("PREFIX") },
  { "timeout", 0, 0, G_OPTION_ARG_DOUBLE, &opt_timeout, N_("seconds a connection may wait for a reply before it is dropped (default 10)"), N_("SECONDS") },
  { "quiet", 0, 0, G_OPTION_ARG_NONE, &opt_quiet, N_("do not print error details, only count them"), NULL },
  { "auth-file", 'Y', 0, G_OPTION_ARG_FILENAME, &opt_auth_file, N_("authenticate each connection first with the first user:password line of this file (a server started with -Y)"), N_("FILE") },
  { "version", 'V', 0, G_OPTION_ARG_NONE, &opt_version, N_("print the version and exit"), NULL },
  { NULL }
};

static G_NORETURN void usage_error (const char *fmt, ...) G_GNUC_PRINTF (1, 2);

static G_NORETURN void
usage_error (const char *fmt, ...)
{
  va_list ap;
  fputs ("memcacheq-bench: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputs ("\n", stderr);
  exit (2);
}

/* utime + stime of a process in µs, or -1. */
static double
proc_cpu_us (int pid)
{
  char path[64], buf[2048];
  snprintf (path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen (path, "r");
  if (!f)
    return -1;
  size_t n = fread (buf, 1, sizeof buf - 1, f);
  fclose (f);
  buf[n] = '\0';
  char *p = strrchr (buf, ')');
  if (!p)
    return -1;
  p++;
  unsigned long long ut = 0, st = 0;
  /* After the command: state ppid pgrp session tty_nr tpgid flags minflt
   * cminflt majflt cmajflt utime stime */
  if (sscanf (p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  long hz = sysconf (_SC_CLK_TCK);
  return (double) (ut + st) * 1e6 / (double) (hz > 0 ? hz : 100);
}

static double
self_cpu_us (void)
{
  struct rusage ru;
  getrusage (RUSAGE_SELF, &ru);
  return (double) ru.ru_utime.tv_sec * 1e6 + (double) ru.ru_utime.tv_usec
         + (double) ru.ru_stime.tv_sec * 1e6 + (double) ru.ru_stime.tv_usec;
}

static void
sleep_s (double s)
{
  struct timespec ts = { (time_t) s, (long) ((s - (double) (time_t) s) * 1e9) };
  while (nanosleep (&ts, &ts) < 0 && errno == EINTR)
    ;
}

/* The auth set for --auth-file, "set auth 0 0 <n>\r\n<user> <password>\r\n",
 * from the first user:password line of path; NULL with the reason in err.
 * The file's bytes are wiped once read. */
static char *
auth_request (const char *path, char *err, size_t errlen)
{
  g_autoptr(GError) error = NULL;
  char *text = NULL, *line, *colon, *req = NULL;
  gsize len = 0;

  if (!g_file_get_contents (path, &text, &len, &error))
    {
      snprintf (err, errlen, "%s", error->message);
      return NULL;
    }
  line = text + strspn (text, "\r\n");
  line[strcspn (line, "\r\n")] = '\0';
  colon = strchr (line, ':');
  if (colon == NULL || colon == line || colon[1] == '\0')
    snprintf (err, errlen, _("%s: the first line is not user:password"), path);
  else
    {
      *colon = ' ';
      req = g_strdup_printf ("set auth 0 0 %zu\r\n%s\r\n", strlen (line), line);
    }
  explicit_bzero (text, len);
  g_free (text);
  return req;
}

/* Sends the auth set on a blocking socket and reads its one-line reply. */
static bool
authenticate (int fd, char *err, size_t errlen)
{
  struct timeval tv = { (time_t) opt_timeout, 0 };
  char reply[256];
  size_t got = 0;

  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (send (fd, auth_req, strlen (auth_req), MSG_NOSIGNAL) != (ssize_t) strlen (auth_req))
    {
      snprintf (err, errlen, "send: %s", strerror (errno));
      return false;
    }
  while (got < sizeof reply - 1 && (got == 0 || reply[got - 1] != '\n'))
    {
      ssize_t n = recv (fd, reply + got, sizeof reply - 1 - got, 0);
      if (n <= 0)
        {
          snprintf (err, errlen, _("no reply to the authentication: %s"),
                    n == 0 ? _("connection closed") : strerror (errno));
          return false;
        }
      got += (size_t) n;
    }
  reply[got] = '\0';
  tv.tv_sec = 0;
  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (strcmp (reply, "STORED\r\n") == 0)
    return true;
  reply[strcspn (reply, "\r\n")] = '\0';
  snprintf (err, errlen, _("authentication refused: %s"), reply);
  return false;
}

static int
connect_one (const struct sockaddr *sa, socklen_t salen, int family, char *err, size_t errlen)
{
  int fd = socket (family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    {
      snprintf (err, errlen, "socket: %s", strerror (errno));
      return -1;
    }
  if (connect (fd, sa, salen) < 0)
    {
      snprintf (err, errlen, "%s", strerror (errno));
      close (fd);
      return -1;
    }
  if (family != AF_UNIX)
    {
      int one = 1;
      setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
  if (auth_req != NULL && !authenticate (fd, err, errlen))
    {
      close (fd);
      return -1;
    }
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* "  label   " of the text report: the values start three columns after
 * the widest label. */
static void
label (const char *text, guint width)
{
  printf ("  %s%*s", text, (int) (width + 3 - mcq_text_width (text)), "");
}

/* Closes and frees every connection opened so far (g_conns is zeroed
 * past the last one) and the workers' epoll sets. */
static void
free_connections (Worker *workers, unsigned threads)
{
  for (unsigned i = 0; i < g_nconns; i++)
    conn_free (g_conns[i]);
  for (unsigned t = 0; t < threads; t++)
    {
      close (workers[t].ep);
      free (workers[t].conns);
    }
  free (workers);
  free (g_conns);
}

/* Where the connections go, and its name for the report. */
typedef struct {
  struct sockaddr_storage ss;
  socklen_t sslen;
  int family;
  char name[600];
} Target;

/* The measured window: wall clock and CPU times at its two ends. */
typedef struct {
  uint64_t t0, t1;
  double srv0, srv1, self0, self1;
} Window;

/* The workers' counters summed. */
typedef struct {
  Hist *hist;
  uint64_t ops, sets, gets, hits, misses, foreign, errors, lost;
} Totals;

/* Parses the command line into the opt_ variables; exits on bad usage. */
static void
parse_options (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  GOptionContext *ctx = g_option_context_new (N_("- load generator and verifier for memcacheq"));
  g_option_context_set_translation_domain (ctx, GETTEXT_PACKAGE);
  g_option_context_add_main_entries (ctx, entries, GETTEXT_PACKAGE);
  g_option_context_set_summary (ctx,
      N_("Measure a message queue server: ops/s, latency percentiles, errors and\n"
         "server CPU per operation, verifying every message read back."));
  g_option_context_set_description (ctx, description);
  gboolean parsed = mcq_option_check_switches (entries, argc, argv, &error) &&
                    g_option_context_parse (ctx, &argc, &argv, &error);
  g_option_context_free (ctx);
  if (!parsed)
    usage_error (_("%s (see --help)"), error->message);
  if (opt_version)
    {
      printf ("memcacheq-bench %s\n", MCQ_VERSION);
      exit (0);
    }
  if (argc > 1)
    usage_error (_("unexpected argument \"%s\" (see --help)"), argv[1]);
}

/* --protocol, --mix and the ranges of the numeric options; exits on the
 * first bad one. */
static void
check_ranges (void)
{
  if (!opt_protocol || strcmp (opt_protocol, "memcache") == 0)
    cfg.protocol = PROTO_MEMCACHE;
  else if (strcmp (opt_protocol, "redis") == 0)
    cfg.protocol = PROTO_REDIS;
  else
    usage_error (_("--protocol: \"%s\": expected memcache or redis"), opt_protocol);
  if (!opt_mix || strcmp (opt_mix, "setget") == 0)
    cfg.mix = MIX_SETGET;
  else if (strcmp (opt_mix, "set") == 0)
    cfg.mix = MIX_SET;
  else if (strcmp (opt_mix, "get") == 0)
    cfg.mix = MIX_GET;
  else
    usage_error (_("--mix: \"%s\": expected set, get or setget"), opt_mix);
  if (opt_conns < 1 || (guint) opt_conns >= MSG_MAX_PRODUCERS)
    usage_error (_("--connections: %d: expected 1 to %u"), opt_conns, MSG_MAX_PRODUCERS - 1);
  if (opt_queues < 1 || (guint) opt_queues > MSG_MAX_QUEUES)
    usage_error (_("--queues: %d: expected 1 to %u"), opt_queues, MSG_MAX_QUEUES);
  if (opt_size < MSG_MIN_SIZE || opt_size > 256 * 1024 * 1024)
    usage_error (_("--size: %lld: expected %d to %d bytes"), (long long) opt_size, MSG_MIN_SIZE,
                 256 * 1024 * 1024);
  if (opt_pipeline < 1 || opt_pipeline > 4096)
    usage_error (_("--pipeline: %d: expected 1 to 4096"), opt_pipeline);
  if (opt_requests < 0)
    usage_error (_("--requests: %lld: expected a positive count"), (long long) opt_requests);
  if (opt_requests > 0 && opt_duration_given)
    usage_error (_("--duration and --requests exclude each other"));
  if (opt_requests == 0 && !(opt_duration > 0 && opt_duration < 1e7))
    usage_error (_("--duration: %g: expected a positive number of seconds"), opt_duration);
  if (!opt_warmup_given && opt_requests > 0)
    opt_warmup = 0;
  if (!(opt_warmup >= 0 && opt_warmup < 1e7))
    usage_error (_("--warmup: %g: expected seconds"), opt_warmup);
  if (!(opt_timeout > 0 && opt_timeout < 1e7))
    usage_error (_("--timeout: %g: expected a positive number of seconds"), opt_timeout);
  if (opt_threads < 0 || opt_threads > 1024)
    usage_error (_("--threads: %d: expected 1 to 1024"), opt_threads);
  if (opt_pid < 0 || (opt_pid > 0 && proc_cpu_us (opt_pid) < 0))
    usage_error (_("--pid: %d: no such process (cannot read /proc/%d/stat)"), opt_pid, opt_pid);
}

/* The options that depend on each other, then cfg filled in from them. */
static void
configure (void)
{
  check_ranges ();
  if (opt_cache && cfg.protocol != PROTO_MEMCACHE)
    usage_error (_("--cache needs --protocol=memcache"));
  if (opt_auth_file && cfg.protocol != PROTO_MEMCACHE)
    usage_error (_("--auth-file needs --protocol=memcache"));
  if (opt_auth_file)
    {
      char err[512];
      if ((auth_req = auth_request (opt_auth_file, err, sizeof err)) == NULL)
        usage_error ("--auth-file: %s", err);
    }
  cfg.prefix = opt_prefix ? opt_prefix : "bench";
  if (strlen (cfg.prefix) > 200 || strpbrk (cfg.prefix, " \r\n\t"))
    usage_error (_("--key-prefix: at most 200 characters and no white space"));
  if (opt_unix && (opt_server || opt_port >= 0))
    usage_error (_("--unix excludes --server and --port"));
  if (opt_port > 65535 || opt_port == 0)
    usage_error (_("--port: %d: expected 1 to 65535"), opt_port);

  cfg.conns = (unsigned) opt_conns;
  cfg.queues = (unsigned) opt_queues;
  cfg.size = (size_t) opt_size;
  cfg.pipeline = (unsigned) opt_pipeline;
  cfg.requests = (uint64_t) opt_requests;
  cfg.timeout = opt_timeout;
  cfg.cache = opt_cache;
  cfg.max_reports = opt_quiet ? 0 : 10;
  long ncpu = sysconf (_SC_NPROCESSORS_ONLN);
  cfg.threads = opt_threads > 0 ? (unsigned) opt_threads : (unsigned) (ncpu > 0 ? ncpu : 1);
  if (cfg.threads > cfg.conns)
    cfg.threads = cfg.conns;
  if (getrandom (&cfg.tag, sizeof cfg.tag, 0) != sizeof cfg.tag)
    cfg.tag = (uint32_t) (now_ns () ^ ((uint64_t) getpid () << 16));
}

/* --unix, else --server:--port resolved; exits when the name does not resolve. */
static void
resolve_target (Target *t)
{
  int port = opt_port > 0 ? opt_port : (cfg.protocol == PROTO_REDIS ? 6379 : 22201);

  if (opt_unix)
    {
      struct sockaddr_un *sun = (struct sockaddr_un *) &t->ss;
      memset (sun, 0, sizeof *sun);
      if (strlen (opt_unix) >= sizeof sun->sun_path)
        usage_error (_("--unix: path too long"));
      sun->sun_family = AF_UNIX;
      strcpy (sun->sun_path, opt_unix);
      t->sslen = sizeof *sun;
      t->family = AF_UNIX;
      snprintf (t->name, sizeof t->name, "unix:%s", opt_unix);
    }
  else
    {
      const char *host = opt_server ? opt_server : "127.0.0.1";
      struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
      char portstr[16];
      snprintf (portstr, sizeof portstr, "%d", port);
      int rc = getaddrinfo (host, portstr, &hints, &ai);
      if (rc != 0 || !ai)
        usage_error ("%s: %s", host, gai_strerror (rc));
      memcpy (&t->ss, ai->ai_addr, ai->ai_addrlen);
      t->sslen = ai->ai_addrlen;
      t->family = ai->ai_family;
      freeaddrinfo (ai);
      snprintf (t->name, sizeof t->name, "%s:%d", host, port);
    }
}

/* The workers and their epoll sets, then every connection, dealt to the
 * workers in turn.  NULL (everything freed, the reason printed) when a
 * connection fails. */
static Worker *
open_connections (const Target *t)
{
  g_nconns = cfg.conns;
  g_conns = calloc (cfg.conns, sizeof (Conn *));
  Worker *workers = calloc (cfg.threads, sizeof (Worker));
  if (!g_conns || !workers)
    abort ();
  for (unsigned i = 0; i < cfg.threads; i++)
    {
      workers[i].idx = i;
      workers[i].ep = epoll_create1 (EPOLL_CLOEXEC);
      workers[i].conns = calloc (cfg.conns / cfg.threads + 1, sizeof (Conn *));
      if (workers[i].ep < 0 || !workers[i].conns)
        abort ();
    }
  for (unsigned i = 0; i < cfg.conns; i++)
    {
      char err[256];
      int fd = connect_one ((const struct sockaddr *) &t->ss, t->sslen, t->family, err, sizeof err);
      if (fd < 0)
        {
          fputs ("memcacheq-bench: ", stderr);
          fprintf (stderr, _("cannot connect to %s (connection %u): %s"), t->name, i, err);
          fputs ("\n", stderr);
          free_connections (workers, cfg.threads);
          return NULL;
        }
      Conn *c = conn_new (i, fd);
      Worker *w = &workers[i % cfg.threads];
      c->w = w;
      if (cfg.requests)
        c->quota = cfg.requests / cfg.conns + (i < cfg.requests % cfg.conns ? 1 : 0);
      w->conns[w->nconns++] = c;
      g_conns[i] = c;
    }
  return workers;
}

static void
window_open (Window *win)
{
  win->srv0 = opt_pid ? proc_cpu_us (opt_pid) : -1;
  win->self0 = self_cpu_us ();
  win->t0 = now_ns ();
}

static void
window_close (Window *win)
{
  win->srv1 = opt_pid ? proc_cpu_us (opt_pid) : -1;
  win->self1 = self_cpu_us ();
}

/* --duration: sleeps until the window's end or until every worker has
 * exited (all its connections dropped), then stops and joins them. */
static void
wait_duration (Worker *workers, Window *win)
{
  uint64_t end = win->t0 + (uint64_t) (opt_duration * 1e9);
  for (;;)
    {
      uint64_t now = now_ns ();
      if (now >= end)
        break;
      bool all_exited = true;
      for (unsigned t = 0; t < cfg.threads; t++)
        if (!atomic_load (&workers[t].exited))
          all_exited = false;
      if (all_exited)
        break;
      double left = (double) (end - now) / 1e9;
      sleep_s (left < 0.02 ? left : 0.02);
    }
  win->t1 = now_ns ();
  atomic_store_explicit (&g_phase, PHASE_DONE, memory_order_release);
  window_close (win);
  for (unsigned t = 0; t < cfg.threads; t++)
    pthread_join (workers[t].thread, NULL);
}

/* --requests: joins the workers; the window ends with the last one done. */
static void
wait_requests (Worker *workers, Window *win)
{
  for (unsigned t = 0; t < cfg.threads; t++)
    pthread_join (workers[t].thread, NULL);
  win->t1 = win->t0;
  for (unsigned t = 0; t < cfg.threads; t++)
    if (workers[t].finish_ns > win->t1)
      win->t1 = workers[t].finish_ns;
  window_close (win);
  atomic_store_explicit (&g_phase, PHASE_DONE, memory_order_release);
}

/* Starts the workers, warms up, and measures one window; FALSE when a
 * worker thread cannot start. */
static bool
run (Worker *workers, Window *win)
{
  atomic_store (&g_phase, opt_warmup > 0 ? PHASE_WARMUP : PHASE_MEASURE);
  if (opt_warmup <= 0)
    window_open (win);
  for (unsigned t = 0; t < cfg.threads; t++)
    if (pthread_create (&workers[t].thread, NULL, worker_main, &workers[t]) != 0)
      {
        perror ("memcacheq-bench: pthread_create");
        return false;
      }
  if (opt_warmup > 0)
    {
      sleep_s (opt_warmup);
      window_open (win);
      atomic_store_explicit (&g_phase, PHASE_MEASURE, memory_order_release);
    }
  if (!cfg.requests)
    wait_duration (workers, win);
  else
    wait_requests (workers, win);
  return true;
}

static void
sum_workers (const Worker *workers, Totals *tot)
{
  tot->hist = calloc (1, sizeof (Hist));
  for (unsigned t = 0; t < cfg.threads; t++)
    {
      const Worker *w = &workers[t];
      hist_merge (tot->hist, &w->hist);
      tot->ops += w->ops;
      tot->sets += w->sets;
      tot->gets += w->gets;
      tot->hits += w->hits;
      tot->misses += w->misses;
      tot->foreign += w->foreign;
      tot->errors += w->errors;
      tot->lost += w->conns_lost;
    }
}

/* The figures both reports print, derived from the window and the totals. */
typedef struct {
  double secs, rate, srv_us_op, self_us_op, self_util;
  double p50, p99, p999, pmax, mean;
  const char *mix, *proto;
} Figures;

static void
compute_figures (const Window *win, const Totals *tot, Figures *f)
{
  static const char *mixes[] = { "set", "get", "setget" };

  f->secs = (double) (win->t1 - win->t0) / 1e9;
  f->rate = f->secs > 0 ? (double) tot->ops / f->secs : 0;
  f->srv_us_op = (opt_pid && win->srv0 >= 0 && win->srv1 >= 0 && tot->ops)
    ? (win->srv1 - win->srv0) / (double) tot->ops : -1;
  f->self_us_op = tot->ops ? (win->self1 - win->self0) / (double) tot->ops : -1;
  f->self_util = f->secs > 0 ? (win->self1 - win->self0) / 1e6 / f->secs / cfg.threads : 0;
  f->p50 = hist_quantile (tot->hist, 0.50) / 1e3;
  f->p99 = hist_quantile (tot->hist, 0.99) / 1e3;
  f->p999 = hist_quantile (tot->hist, 0.999) / 1e3;
  f->pmax = (double) tot->hist->max / 1e3;
  f->mean = hist_mean (tot->hist) / 1e3;
  f->mix = mixes[cfg.mix];
  f->proto = cfg.protocol == PROTO_REDIS ? "redis" : "memcache";
}

/* --json: the result as one line of JSON. */
static void
report_json (const Target *t, const Window *win, const Totals *tot, const Figures *f)
{
  GString *j = g_string_new ("{");
  g_string_append (j, "\"target\":");
  mcq_json_append_string (j, t->name);
  g_string_append_printf (j, ",\"protocol\":\"%s\",\"mix\":\"%s\",\"connections\":%u,\"threads\":%u,"
                          "\"queues\":%u,\"size\":%zu,\"pipeline\":%u,\"cache\":%s,\"warmup_s\":%.3f,"
                          "\"seconds\":%.6f,\"ops\":%" G_GUINT64_FORMAT ",\"ops_per_sec\":%.1f,"
                          "\"sets\":%" G_GUINT64_FORMAT ",\"gets\":%" G_GUINT64_FORMAT
                          ",\"hits\":%" G_GUINT64_FORMAT ",\"misses\":%" G_GUINT64_FORMAT
                          ",\"foreign\":%" G_GUINT64_FORMAT ",\"errors\":%" G_GUINT64_FORMAT
                          ",\"connections_lost\":%" G_GUINT64_FORMAT
                          ",\"mean_us\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f",
                          f->proto, f->mix, cfg.conns, cfg.threads, cfg.queues, cfg.size, cfg.pipeline,
                          cfg.cache ? "true" : "false", opt_warmup, f->secs, tot->ops, f->rate,
                          tot->sets, tot->gets, tot->hits, tot->misses, tot->foreign, tot->errors,
                          tot->lost, f->mean, f->p50, f->p99, f->p999, f->pmax);
  if (opt_pid)
    g_string_append_printf (j, ",\"pid\":%d", opt_pid);
  if (f->srv_us_op >= 0)
    g_string_append_printf (j, ",\"server_cpu_us_per_op\":%.3f,\"server_cpu_s\":%.3f",
                            f->srv_us_op, (win->srv1 - win->srv0) / 1e6);
  else
    g_string_append (j, ",\"server_cpu_us_per_op\":null");
  g_string_append_printf (j, ",\"bench_cpu_us_per_op\":%.3f,\"bench_cpu_util\":%.3f}",
                          f->self_us_op, f->self_util);
  puts (j->str);
  g_string_free (j, TRUE);
}

/* The CPU lines of the text report: the server's (--pid) and the bench's. */
static void
report_cpu (const Window *win, const Figures *f, guint width, const char *l_server,
            const char *l_bench)
{
  if (opt_pid)
    {
      label (l_server, width);
      if (f->srv_us_op >= 0)
        printf (_("%.2f µs/op (pid %d: %.2f s user+system)\n"), f->srv_us_op, opt_pid,
                (win->srv1 - win->srv0) / 1e6);
      else
        printf (_("unknown (pid %d)\n"), opt_pid);
    }
  label (l_bench, width);
  printf (_("%.2f µs/op (%.0f%% of %u thread(s))\n"), f->self_us_op, f->self_util * 100, cfg.threads);
  if (f->self_util > 0.9)
    {
      printf ("  ");
      printf (_("note: the bench's threads were busy %.0f%% of the time: it may be the bottleneck\n"),
              f->self_util * 100);
    }
}

/* The text report, one labelled line per figure. */
static void
report_text (const Target *t, const Window *win, const Totals *tot, const Figures *f)
{
  /* TRANSLATORS: the report's labels; the values are lined up after the
   * widest one. */
  const char *l_measured = _("measured"), *l_throughput = _("throughput"),
             *l_foreign = _("foreign"), *l_latency = _("latency"), *l_errors = _("errors"),
             *l_server = _("server CPU"), *l_bench = _("bench CPU");
  const char *all[] = { l_measured, l_throughput, l_foreign, l_latency, l_errors, l_server, l_bench };
  guint width = 0;

  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    width = MAX (width, mcq_text_width (all[i]));
  printf (_("memcacheq-bench %s: %s %s, %u connection(s), %u thread(s), %u queue(s), "
            "%zu-byte messages, mix %s, pipeline %u%s\n"),
          MCQ_VERSION, f->proto, t->name, cfg.conns, cfg.threads, cfg.queues, cfg.size, f->mix,
          cfg.pipeline, cfg.cache ? _(", cache semantics") : "");
  label (l_measured, width);
  printf (_("%.3f s after %.1f s of warm-up\n"), f->secs, opt_warmup);
  label (l_throughput, width);
  printf (_("%.0f ops/s (%llu ops: %llu sets, %llu gets: %llu hits, %llu empty)\n"),
          f->rate, (unsigned long long) tot->ops, (unsigned long long) tot->sets,
          (unsigned long long) tot->gets, (unsigned long long) tot->hits,
          (unsigned long long) tot->misses);
  if (tot->foreign)
    {
      label (l_foreign, width);
      printf (_("%llu messages of other runs read (well formed)\n"), (unsigned long long) tot->foreign);
    }
  label (l_latency, width);
  printf (_("p50 %.1f µs   p99 %.1f µs   p99.9 %.1f µs   max %.1f µs   mean %.1f µs\n"),
          f->p50, f->p99, f->p999, f->pmax, f->mean);
  label (l_errors, width);
  printf ("%llu", (unsigned long long) tot->errors);
  if (tot->lost)
    printf (_(" (%llu connection(s) dropped)"), (unsigned long long) tot->lost);
  printf ("\n");
  report_cpu (win, f, width, l_server, l_bench);
}

/* The option strings and the auth request (wiped), at exit. */
static void
free_options (void)
{
  g_free (opt_server);
  g_free (opt_unix);
  g_free (opt_mix);
  g_free (opt_protocol);
  g_free (opt_prefix);
  g_free (opt_auth_file);
  if (auth_req != NULL)
    explicit_bzero (auth_req, strlen (auth_req));
  g_free (auth_req);
}

int
main (int argc, char **argv)
{
  Target target = { 0 };
  Window win = { .srv0 = -1, .srv1 = -1 };
  Totals tot = { 0 };
  Figures fig;
  Worker *workers;

  mcq_i18n_init ();
  parse_options (argc, argv);
  configure ();
  signal (SIGPIPE, SIG_IGN);
  msg_init (cfg.size);
  resolve_target (&target);
  workers = open_connections (&target);
  if (workers == NULL)
    return 2;
  if (!run (workers, &win))
    return 2;

  sum_workers (workers, &tot);
  compute_figures (&win, &tot, &fig);
  if (opt_json)
    report_json (&target, &win, &tot, &fig);
  else
    report_text (&target, &win, &tot, &fig);
  fflush (stdout);
  if (tot.errors && !opt_json)
    {
      fputs ("memcacheq-bench: ", stderr);
      fprintf (stderr, _("%llu error(s)\n"), (unsigned long long) tot.errors);
    }

  free_connections (workers, cfg.threads);
  free (tot.hist);
  msg_free ();
  free_options ();
  return tot.errors ? 1 : 0;
}
