/* store-space.c — the store's disk-space model: the log and database bytes
 * a message costs, the reserve kept for draining and recovery, and the
 * measurement of the home's free space (see store-space.h). */
#include "store-space.h"

#include <gio/gio.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

/* An overflow page's header; the rest of the page holds data. */
#define OVFL_PAGE_HEADER 32
/* Each overflow page is logged with its data and a page-allocation or
 * page-free record; the item's leaf entry, the queue record and the
 * commit come once per record. */
#define LOG_PER_OVFL_PAGE 192
#define LOG_PER_RECORD 1024
/* A record kept on a leaf page: its log records besides the data. */
#define LOG_PER_LEAF_RECORD 384
/* The log is cut into files at record boundaries: a file can end with
 * up to one record's worth unused, and opens with a header. */
#define LOG_FILE_SLACK(g) ((g)->page_size + LOG_PER_OVFL_PAGE + 1024)
/* The checkpoint that follows a drain step (or ends recovery). */
#define CHECKPOINT_LOG 4096
/* queues.db and purge.db pages, file-system metadata, page splits. */
#define RESERVE_MARGIN (256 * 1024)
/* Free space a set never takes, even for a moment. */
#define SET_MARGIN (256 * 1024)

/* Berkeley DB moves an item to overflow pages past about a quarter of a
 * page (less the page and item headers; 1,007 bytes for 4 KiB pages).
 * Costs count a record as overflow from a little below that; credits
 * count only records surely on one side of it. */
static gboolean
is_overflow (const McqSpaceGeometry *g, guint64 record_len)
{
  return record_len > g->page_size / 4 - 40;
}

static gboolean
surely_overflow (const McqSpaceGeometry *g, guint64 record_len)
{
  return record_len > g->page_size / 4;
}

static guint64
ovfl_pages (const McqSpaceGeometry *g, guint64 record_len)
{
  guint64 per_page = g->page_size - OVFL_PAGE_HEADER;
  return (record_len + per_page - 1) / per_page;
}

guint64
mcq_space_log_bytes (const McqSpaceGeometry *g, guint64 record_len)
{
  if (!is_overflow (g, record_len))
    return record_len + LOG_PER_LEAF_RECORD;
  return ovfl_pages (g, record_len) * (g->page_size + LOG_PER_OVFL_PAGE) + LOG_PER_RECORD;
}

guint64
mcq_space_db_bytes (const McqSpaceGeometry *g, guint64 record_len)
{
  /* A leaf record's share of a leaf page that may be only half full. */
  if (!is_overflow (g, record_len))
    return 2 * (record_len + 48);
  return ovfl_pages (g, record_len) * g->page_size;
}

guint64
mcq_space_db_freed (const McqSpaceGeometry *g, guint64 record_len)
{
  return surely_overflow (g, record_len) ? ovfl_pages (g, record_len) * g->page_size : 0;
}

/* What a leaf record takes of its page at least: the key item, the data
 * item and their two index entries. */
#define LEAF_RECORD_FOOTPRINT 20

guint64
mcq_space_leaf_pages_freed (const McqSpaceGeometry *g, guint64 record_len, guint64 *drained)
{
  guint64 pages;

  if (is_overflow (g, record_len))
    return 0;
  *drained += record_len + LEAF_RECORD_FOOTPRINT;
  pages = *drained / g->page_size;
  if (pages <= 2)
    return 0;
  *drained -= (pages - 2) * g->page_size;
  return (pages - 2) * g->page_size;
}

guint64
mcq_space_log_growth (const McqSpaceGeometry *g, guint64 offset, guint64 bytes)
{
  guint64 cap = g->log_file_bytes - LOG_FILE_SLACK (g);
  guint64 left = offset < cap ? cap - offset : 0;
  if (bytes <= left)
    return 0;
  return (bytes - left + cap - 1) / cap * g->log_file_bytes;
}

guint64
mcq_space_step_bytes (const McqSpaceGeometry *g)
{
  return mcq_space_log_bytes (g, g->max_record);
}

guint64
mcq_space_reserve (const McqSpaceGeometry *g)
{
  /* From a log file with no room left: the step and its checkpoint in
   * new files, which also leaves recovery room for its checkpoint. */
  return mcq_space_log_growth (g, g->log_file_bytes, mcq_space_step_bytes (g) + CHECKPOINT_LOG) +
         RESERVE_MARGIN;
}

gboolean
mcq_space_measure (const char *home, DB_ENV *env, DB *messages_db, const char *messages_path,
                   McqSpaceLook *out)
{
  struct statvfs vfs;
  struct stat st;
  DB_LOG_STAT *ls = NULL;
  db_pgno_t last = 0;
  u_int32_t page_size = 0;

  if (statvfs (home, &vfs) != 0)
    return FALSE;
  out->avail = (guint64) vfs.f_bavail * vfs.f_frsize;
  out->log_file = 0;
  out->log_offset = 0;
  if (env->log_stat (env, &ls, 0) == 0)
    {
      out->log_file = ls->st_cur_file;
      out->log_offset = ls->st_cur_offset;
      free (ls);
    }
  out->db_unwritten = 0;
  if (messages_db->get_pagesize (messages_db, &page_size) == 0 &&
      messages_db->get_mpf (messages_db)->get_last_pgno (messages_db->get_mpf (messages_db),
                                                         &last) == 0 &&
      stat (messages_path, &st) == 0)
    {
      guint64 cached = ((guint64) last + 1) * page_size;
      guint64 allocated = (guint64) st.st_blocks * 512;
      out->db_unwritten = cached > allocated ? cached - allocated : 0;
    }
  return TRUE;
}

void
mcq_space_init (McqSpace *sp, const McqSpaceGeometry *g, const char *home)
{
  memset (sp, 0, sizeof *sp);
  sp->geom = *g;
  sp->home = g_strdup (home);
  sp->messages_path = g_build_filename (home, "messages.db", NULL);
}

void
mcq_space_clear (McqSpace *sp)
{
  g_clear_pointer (&sp->home, g_free);
  g_clear_pointer (&sp->messages_path, g_free);
}

/* Space already promised: the cache's pages past the database file's
 * blocks, and, when log files grow as they are written (-N), the rest of
 * the current one, which fills before any checkpoint can remove it. */
static guint64
owed (const McqSpace *sp)
{
  guint64 f = sp->geom.log_file_bytes, off = sp->look.log_offset;

  return sp->look.db_unwritten + (sp->geom.log_prealloc || off >= f ? 0 : f - off);
}

/* Commits between looks only ever spend. */
#define LOOK_EVERY_US (100 * 1000)

gboolean
mcq_space_look (McqSpace *sp, gboolean force, guint ckp_gen, DB_ENV *env, DB *messages_db)
{
  gint64 now = g_get_monotonic_time ();

  if ((force || now - sp->looked_at >= LOOK_EVERY_US || ckp_gen != sp->ckp_gen ||
       (gint64) sp->spent >= sp->room / 4) &&
      mcq_space_measure (sp->home, env, messages_db, sp->messages_path, &sp->look))
    {
      sp->looked_at = now;
      sp->ckp_gen = ckp_gen;
      sp->spent = 0;
      sp->room = (gint64) sp->look.avail - (gint64) owed (sp) -
                 (gint64) mcq_space_reserve (&sp->geom);
    }
  return !mcq_space_fits (sp, sp->geom.log_file_bytes, sp->geom.max_record, NULL);
}

gboolean
mcq_space_fits (const McqSpace *sp, guint64 offset, guint64 record_len, guint64 *cost)
{
  const McqSpaceGeometry *g = &sp->geom;
  guint64 db = mcq_space_db_bytes (g, record_len);
  guint64 log = mcq_space_log_growth (g, offset, mcq_space_log_bytes (g, record_len) + CHECKPOINT_LOG);
  gint64 usable = (gint64) sp->look.avail - (gint64) owed (sp) - SET_MARGIN;

  db = db > sp->db_free ? db - sp->db_free : 0;
  if (cost != NULL)
    *cost = db + log;
  return (gint64) db <= sp->room - (gint64) sp->spent &&
         (gint64) (db + log) <= usable - (gint64) sp->spent;
}

gboolean
mcq_space_fits_log (const McqSpace *sp, guint64 log_bytes)
{
  guint64 growth = mcq_space_log_growth (&sp->geom, sp->look.log_offset, log_bytes);
  return (gint64) growth <= sp->room - (gint64) sp->spent;
}

guint64
mcq_space_worst (const McqSpace *sp, guint64 set_log, guint64 set_db, guint64 get_keys,
                 guint others)
{
  const McqSpaceGeometry *g = &sp->geom;
  guint64 log = set_log + get_keys * mcq_space_step_bytes (g) + others * (guint64) CHECKPOINT_LOG;

  return mcq_space_log_growth (g, g->log_file_bytes, log) + set_db;
}

void
mcq_space_refuse (const McqSpace *sp, guint64 body_len, guint64 cost, GError **error)
{
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
               "%" G_GUINT64_FORMAT " KiB free in the home directory, of which %"
               G_GUINT64_FORMAT " KiB are kept so that the queues can always be drained and %"
               G_GUINT64_FORMAT " KiB are owed to pages and log not yet written; this %" G_GUINT64_FORMAT
               "-byte message may take %" G_GUINT64_FORMAT " KiB more; new messages are "
               "refused until space is freed", sp->look.avail / 1024,
               mcq_space_reserve (&sp->geom) / 1024, owed (sp) / 1024, body_len,
               (cost + 1023) / 1024);
}
