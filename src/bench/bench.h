/* bench.h — memcacheq-bench: shared configuration and per-thread state. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "msg.h"

enum { PROTO_MEMCACHE, PROTO_REDIS };
enum { MIX_SET, MIX_GET, MIX_SETGET };
enum { PHASE_WARMUP, PHASE_MEASURE, PHASE_DONE };
enum { OP_SET, OP_GET };

typedef struct {
  int protocol;
  int mix;
  unsigned conns;
  unsigned queues;
  unsigned threads;
  unsigned pipeline;
  size_t size;
  uint64_t requests;            /* measured requests in all; 0: run for a duration */
  double timeout;               /* seconds a busy connection may go without a reply */
  bool cache;                   /* memcached semantics: own key per connection, get = last set */
  const char *prefix;           /* key prefix */
  uint32_t tag;                 /* run tag written into every message */
  unsigned max_reports;         /* error messages printed at most */
} BenchConfig;

/* One outstanding request. */
typedef struct {
  uint64_t t_sent;              /* ns, CLOCK_MONOTONIC */
  uint64_t expect_seq;          /* cache mode: the seq the get must return */
  uint8_t op;
  uint8_t measured;             /* sent during the measured window */
  uint8_t expect_valid;
} Slot;

typedef struct Worker Worker;

/* Duplicate detection (queue semantics): one bit per message a producer sent,
 * in chunks of 2^SEEN_CHUNK_BITS allocated by the producer as its sequence
 * number enters them (one allocation per million messages, never per op).
 * Any thread's reader sets the bit with an atomic OR; a bit already set is a
 * message delivered twice. */
#define SEEN_CHUNK_BITS 20
#define SEEN_CHUNKS 1024

typedef struct Conn {
  int fd;
  uint32_t id;                  /* producer id written in messages */
  uint32_t queue;               /* queue index */
  Worker *w;

  char key[256];
  size_t keylen;
  /* Precomputed request texts. */
  char set_head[320];           /* memcache: "set <key> " / redis: "*3..$<size>\r\n" */
  size_t set_head_len;
  char set_tail[48];            /* memcache: " 0 <size>\r\n" */
  size_t set_tail_len;
  char get_req[320];
  size_t get_req_len;

  char *rbuf;
  size_t rcap, rpos, rlen;
  char *wbuf;
  size_t wcap, wpos, wlen;

  Slot *slots;
  unsigned shead, scount;

  _Atomic uint64_t issued;      /* seqs [0, issued) have been built (read by any thread) */
  uint64_t seq;
  _Atomic (_Atomic uint64_t *) *seen;

  uint64_t last_set_seq;
  bool have_set;
  bool next_get;                /* setget: the next request is the get */
  uint64_t quota;               /* requests mode: measured requests left to send */
  uint64_t last_activity;
  bool dead, finished, epollout;
} Conn;

struct Worker {
  unsigned idx;
  pthread_t thread;
  int ep;
  Conn **conns;
  unsigned nconns;
  unsigned active;
  /* measured window only */
  Hist hist;
  uint64_t ops, sets, gets, hits, misses, foreign;
  /* whole run */
  uint64_t errors;
  uint64_t conns_lost;
  uint64_t finish_ns;
  _Atomic int exited;
};

extern BenchConfig cfg;
extern _Atomic int g_phase;
extern Conn **g_conns;
extern unsigned g_nconns;

uint64_t now_ns (void);
/* Set up a connected, non-blocking socket as connection `id`. */
Conn *conn_new (uint32_t id, int fd);
void conn_free (Conn *c);
void *worker_main (void *arg);
