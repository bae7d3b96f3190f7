/* store-check.c — start-up checks of a store's files (present, not empty,
 * the log as long as it was), and the mark (memcacheq.state) that lets them
 * tell a lost or cut log from a new one. */
#include "store-check.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "i18n.h"

#define STATE_NAME "memcacheq.state"
/* One fixed-width line, so that each update is one pwrite over the last. */
#define STATE_FORMAT "memcacheq-state 1 clean=%d log=%010u/%010u\n"
/* A log record's header (with its checksum) is at most this long. */
#define LOG_HEADER_MAX 28
/* The header that opens each log file is at most this long. */
#define LOG_FILE_HEADER_MAX 64

static const char *const db_files[] = { "queues.db", "messages.db", "purge.db" };

struct _McqStoreMark {
  int fd;
  GMutex lock;
  DB_LSN written;              /* lock: the log end last recorded */
};

typedef struct {
  gboolean present;
  gboolean clean;              /* the last stop was clean */
  DB_LSN log;                  /* the log was on disk at least this far */
} State;

/* ---- the mark ------------------------------------------------------------ */

static void
read_state (const char *home, State *st)
{
  g_autofree char *path = g_build_filename (home, STATE_NAME, NULL);
  g_autofree char *text = NULL;
  int clean;

  memset (st, 0, sizeof *st);
  if (!g_file_get_contents (path, &text, NULL, NULL))
    return;
  if (sscanf (text, "memcacheq-state 1 clean=%d log=%u/%u", &clean, &st->log.file,
              &st->log.offset) != 3)
    {
      g_warning (_("%s does not read as a memcacheq state file: ignored"), path);
      return;
    }
  st->present = TRUE;
  st->clean = clean != 0;
}

static void
write_state (McqStoreMark *m, gboolean clean, const DB_LSN *lsn)
{
  char line[64];
  int n = g_snprintf (line, sizeof line, STATE_FORMAT, clean ? 1 : 0, lsn->file, lsn->offset);

  if (pwrite (m->fd, line, (size_t) n, 0) != n)
    g_debug ("writing %s: %s", STATE_NAME, g_strerror (errno));
  m->written = *lsn;
}

/* The end of the log known to be on disk (synced), or 0/0. */
static DB_LSN
disk_lsn (DB_ENV *env)
{
  DB_LSN lsn = { 0, 0 };
  DB_LOG_STAT *st = NULL;

  if (env->log_stat (env, &st, 0) == 0)
    {
      lsn.file = st->st_disk_file;
      lsn.offset = st->st_disk_offset;
      free (st);
    }
  return lsn;
}

McqStoreMark *
mcq_store_mark_open (const char *home, DB_ENV *env)
{
  g_autofree char *path = g_build_filename (home, STATE_NAME, NULL);
  McqStoreMark *m;
  DB_LSN lsn;
  int fd;

  fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      g_warning (_("cannot write %s: %s; a lost or cut log will not be noticed"), path,
                 g_strerror (errno));
      return NULL;
    }
  m = g_new0 (McqStoreMark, 1);
  m->fd = fd;
  g_mutex_init (&m->lock);
  env->log_flush (env, NULL);
  lsn = disk_lsn (env);
  write_state (m, FALSE, &lsn);
  /* "Not stopped cleanly" must be on disk before anything is served. */
  if (fdatasync (fd) != 0)
    g_debug ("syncing %s: %s", STATE_NAME, g_strerror (errno));
  return m;
}

void
mcq_store_mark_log (McqStoreMark *m, DB_ENV *env)
{
  DB_LSN lsn;

  if (m == NULL)
    return;
  lsn = disk_lsn (env);
  g_mutex_lock (&m->lock);
  if (log_compare (&lsn, &m->written) > 0)
    write_state (m, FALSE, &lsn);
  g_mutex_unlock (&m->lock);
}

void
mcq_store_mark_close (McqStoreMark *m, DB_ENV *env, gboolean clean)
{
  DB_LSN lsn;

  if (m == NULL)
    return;
  lsn = disk_lsn (env);
  write_state (m, clean, &lsn);
  if (fdatasync (m->fd) != 0)
    g_debug ("syncing %s: %s", STATE_NAME, g_strerror (errno));
  close (m->fd);
  g_mutex_clear (&m->lock);
  g_free (m);
}

/* ---- the files, before the environment opens ------------------------------ */

static void
quiet_errcall (const DB_ENV *env, const char *prefix, const char *msg)
{
  g_debug ("Berkeley DB (start-up check): %s", msg);
}

/* A private environment on `home` that runs no recovery and writes no log
 * record: with the log only, to read it, or with the cache only, for
 * lsn_reset (which, with a log, refuses files newer than it). */
static DB_ENV *
scratch_env (const char *home, gboolean for_reset, GError **error)
{
  DB_ENV *env = NULL;
  u_int32_t flags = DB_CREATE | DB_PRIVATE | (for_reset ? DB_INIT_MPOOL : DB_INIT_LOG);
  int ret;

  if ((ret = db_env_create (&env, 0)) == 0)
    {
      env->set_errcall (env, quiet_errcall);
      if ((ret = env->open (env, home, flags, 0600)) == 0)
        return env;
      env->close (env, 0);
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, _("reading the log in %s: %s"), home,
               db_strerror (ret));
  return NULL;
}

/* Where the log's last record ends; 0/0 for an empty or unreadable log. */
static DB_LSN
log_end (const char *home)
{
  DB_LSN lsn = { 0, 0 }, end = { 0, 0 };
  DB_LOGC *cur = NULL;
  DB_ENV *env = scratch_env (home, FALSE, NULL);
  DBT d;

  if (env == NULL)
    return end;
  memset (&d, 0, sizeof d);
  if (env->log_cursor (env, &cur, 0) == 0)
    {
      if (cur->get (cur, &lsn, &d, DB_LAST) == 0)
        {
          end.file = lsn.file;
          end.offset = lsn.offset + d.size + LOG_HEADER_MAX;
        }
      cur->close (cur, 0);
    }
  env->close (env, 0);
  return end;
}

/* Page 0's LSN (the newest log record a database file's metadata has
 * seen) and the file's page size.  FALSE for a file that is not a btree
 * of this machine's byte order: opening it will say what is wrong. */
static gboolean
read_meta (const char *path, DB_LSN *lsn, guint32 *page_size)
{
  guint8 page[24];
  guint32 magic;
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  gboolean ok;

  if (fd < 0)
    return FALSE;
  ok = pread (fd, page, sizeof page, 0) == sizeof page;
  close (fd);
  memcpy (lsn, page, sizeof *lsn);
  memcpy (&magic, page + 12, sizeof magic);
  memcpy (page_size, page + 20, sizeof *page_size);
  return ok && magic == DB_BTREEMAGIC;
}

static gboolean
meta_lsn (const char *path, DB_LSN *lsn)
{
  guint32 page_size;
  return read_meta (path, lsn, &page_size);
}

static guint
count_logs (const char *home, gboolean remove)
{
  g_autoptr(GDir) dir = g_dir_open (home, 0, NULL);
  const char *name;
  guint n = 0;

  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
    if (g_str_has_prefix (name, "log.") && strlen (name) == 14 &&
        strspn (name + 4, "0123456789") == 10)
      {
        n++;
        if (remove)
          {
            g_autofree char *path = g_build_filename (home, name, NULL);
            if (g_unlink (path) != 0)
              g_warning (_("cannot remove %s: %s"), path, g_strerror (errno));
          }
      }
  return n;
}

/* Starts the database files on a new log: removes the log files and
 * clears every page's LSN, as Berkeley DB requires for files whose log
 * is gone. */
static gboolean
start_new_log (const char *home, GError **error)
{
  DB_ENV *env;
  int ret = 0;

  count_logs (home, TRUE);
  if ((env = scratch_env (home, TRUE, error)) == NULL)
    return FALSE;
  for (guint i = 0; i < G_N_ELEMENTS (db_files) && ret == 0; i++)
    {
      g_autofree char *path = g_build_filename (home, db_files[i], NULL);
      DB_LSN meta;
      if (meta_lsn (path, &meta))
        ret = env->lsn_reset (env, db_files[i], 0);
      if (ret != 0)
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED,
                     _("%s: cannot start it on a new log: %s"), path, db_strerror (ret));
    }
  env->close (env, 0);
  return ret == 0;
}

/* A database file of 0 bytes, or shorter than its first page: recovery
 * cannot use it. */
static gboolean
refuse_short (const char *file, guint64 size, GError **error)
{
  const char *todo = strcmp (file, "messages.db") == 0
    ? _("restore it from a backup, or move the home away to start empty")
    : strcmp (file, "queues.db") == 0
    ? _("restore it from a backup, or delete it to rebuild the queues from messages.db")
    : _("restore it from a backup, or delete it (deleted queues not yet purged then come back)");
  if (size == 0)
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                 _("%s is empty (0 bytes): %s"), file, todo);
  else
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                 _("%s is cut short (%llu bytes, less than its first page): %s"), file,
                 (unsigned long long) size, todo);
  return FALSE;
}

/* The log is missing, cut, or behind the databases: after a clean stop the
 * database files hold everything and start a new log; otherwise refuses,
 * saying what to restore or, as `todo`, what to move to accept the loss. */
static gboolean
log_lost (const char *home, const State *st, const char *what, const char *todo,
          GError **error)
{
  if (st->present && st->clean)
    {
      if (!start_new_log (home, error))
        return FALSE;
      g_warning (_("%s in %s; memcacheq had stopped cleanly, so the database files hold "
                   "every message: they now start a new log"), what, home);
      return TRUE;
    }
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
               _("%s, and memcacheq did not stop cleanly, so what was stored or taken since "
                 "the last checkpoint is only in the log: restore the log files; or, %s"),
               what, todo);
  return FALSE;
}

/* The database files: FALSE (refused) if one is empty or shorter than a
 * page; *any_db tells whether there is a store at all. */
static gboolean
check_db_files (const char *home, const State *st, gboolean *any_db, GError **error)
{
  *any_db = FALSE;
  for (guint i = 0; i < G_N_ELEMENTS (db_files); i++)
    {
      g_autofree char *path = g_build_filename (home, db_files[i], NULL);
      guint32 page_size = 0;
      GStatBuf sb;
      DB_LSN lsn;

      if (g_stat (path, &sb) != 0)
        {
          if (st->present)
            g_warning (_("%s is missing from %s: it is rebuilt from the log files as far as "
                         "they reach, then checked"), db_files[i], home);
          continue;
        }
      if (sb.st_size == 0 ||
          (read_meta (path, &lsn, &page_size) && (guint64) sb.st_size < page_size))
        return refuse_short (db_files[i], (guint64) sb.st_size, error);
      *any_db = TRUE;
    }
  return TRUE;
}

/* The log ends before `mark`.  A mark just past the header of the next log
 * file (no record in it yet) asks for nothing the log lacks. */
static gboolean
log_short (const DB_LSN *end, const DB_LSN *mark)
{
  if (mark->file == end->file + 1 && mark->offset <= LOG_FILE_HEADER_MAX)
    return FALSE;
  return log_compare (end, mark) < 0;
}

/* The log against the mark, and against each database file's metadata. */
static gboolean
check_log (const char *home, const State *st, GError **error)
{
  DB_LSN end = log_end (home);

  if (st->present && log_short (&end, &st->log))
    {
      g_autofree char *what = g_strdup_printf (
          _("the log ends at log.%010u offset %u, before log.%010u offset %u, which was on "
            "disk (log files were removed or cut short)"),
          end.file, end.offset, st->log.file, st->log.offset);
      return log_lost (home, st, what,
                       _("to recover what the remaining log holds (losing the rest), move "
                         "memcacheq.state out of the home"), error);
    }
  for (guint i = 0; i < G_N_ELEMENTS (db_files); i++)
    {
      g_autofree char *path = g_build_filename (home, db_files[i], NULL);
      DB_LSN meta;

      if (meta_lsn (path, &meta) && log_compare (&meta, &end) > 0)
        {
          g_autofree char *what = g_strdup_printf (
              _("%s is newer than the log (log.%010u offset %u; the log ends at log.%010u "
                "offset %u: log files were removed or cut short)"),
              db_files[i], meta.file, meta.offset, end.file, end.offset);
          return log_lost (home, st, what,
                           _("to start from the database files alone (losing that), move "
                             "the log.* files and memcacheq.state out of the home"), error);
        }
    }
  return TRUE;
}

gboolean
mcq_store_check_files (const char *home, GError **error)
{
  gboolean any_db;
  State st;

  read_state (home, &st);
  if (!check_db_files (home, &st, &any_db, error))
    return FALSE;
  if (!any_db)
    return TRUE;
  if (count_logs (home, FALSE) > 0)
    return check_log (home, &st, error);
  if (st.present)
    return log_lost (home, &st, _("the log files (log.*) are missing"),
                     _("to start from the database files alone (losing that), move "
                       "memcacheq.state out of the home"), error);
  /* No mark: a store of an older memcacheq, or one whose owner moved the
   * mark away to accept the loss. */
  if (!start_new_log (home, error))
    return FALSE;
  g_warning (_("the log files (log.*) were missing from %s: started from the database files "
               "alone; if memcacheq was not stopped cleanly, what was stored or taken after "
               "their last checkpoint is lost"), home);
  return TRUE;
}
