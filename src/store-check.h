/* store-check.h — what a store's files must look like before it is opened
 * (present, not empty, the log as long as it was), and the mark
 * (memcacheq.state) that records how far the log is known to be on disk and
 * whether the last stop was clean. */
#pragma once

#include <db.h>
#include <glib.h>

typedef struct _McqStoreMark McqStoreMark;

/* Before the environment is opened in `home`: refuses (FALSE, one message
 * naming the file and what to do) a database file of 0 bytes, a log that
 * ends before what the mark says was on disk, a database file newer than
 * the log, and missing log files after a stop that was not clean.  When
 * the log files are all gone and the stop was clean (or no mark says
 * otherwise), resets the database files to a new log and warns. */
gboolean mcq_store_check_files (const char *home, GError **error);

/* Creates or opens <home>/memcacheq.state and records a running store,
 * with the log's end as now on disk.  NULL (with a warning) if the file
 * cannot be written: the store runs without it. */
McqStoreMark *mcq_store_mark_open (const char *home, DB_ENV *env);

/* Records how far the log is now known to be on disk (after a log flush or
 * a checkpoint).  Any thread; m may be NULL. */
void mcq_store_mark_log (McqStoreMark *m, DB_ENV *env);

/* Records whether the stop was clean (the last checkpoint succeeded, so
 * the database files hold everything) and frees m (NULL allowed). */
void mcq_store_mark_close (McqStoreMark *m, DB_ENV *env, gboolean clean);
