/* store-quarantine.h — integrity.db, the store's record of damage: message
 * records found damaged are set aside there (inside the Berkeley DB
 * environment, so whatever copies the environment copies them too), and it
 * says which queues may still hold records written before checksums. */
#pragma once

#include <db.h>
#include <gio/gio.h>

typedef struct _McqQuarantine McqQuarantine;

/* Opens integrity.db in env, creating it if missing.  Main thread (the
 * store's transaction thread) only, like every call below but
 * mcq_quarantine_count. */
McqQuarantine *mcq_quarantine_open (DB_ENV *env, GError **error);

/* TRUE until mcq_quarantine_upgrade has run on this store: the store was
 * written by a version without record checksums (or is new). */
gboolean mcq_quarantine_needs_upgrade (McqQuarantine *qr);

/* Notes, in txn, that queue id may hold legacy records below seq end.
 * Call for every queue, then mcq_quarantine_upgrade in the same txn. */
gboolean mcq_quarantine_note_legacy (McqQuarantine *qr, DB_TXN *txn, guint32 id, guint64 end,
                                     GError **error);

/* Records, in txn, that every queue with legacy records has been noted. */
gboolean mcq_quarantine_upgrade (McqQuarantine *qr, DB_TXN *txn, GError **error);

/* Whether the record seq of queue id may be a legacy one. */
gboolean mcq_quarantine_legacy_ok (McqQuarantine *qr, guint32 id, guint64 seq);

/* Sets aside, in txn, the damaged record seq of queue `queue` (id): the
 * bytes found (rec, len; NULL/0 if it could not be read at all), why it is
 * damaged.  The caller removes it from messages.db in the same txn.
 * Returns a Berkeley DB error code (0 on success). */
int mcq_quarantine_put (McqQuarantine *qr, DB_TXN *txn, const char *queue, guint32 id,
                        guint64 seq, const guint8 *rec, size_t len, const char *why);

/* Logs a warning naming the queue, the damaged or missing messages
 * first..last and why. */
void mcq_quarantine_report (McqQuarantine *qr, const char *queue, guint64 first, guint64 last,
                            const char *why);

/* Why a message is skipped when its record cannot be read (English;
 * mcq_quarantine_report translates). */
extern const char mcq_why_missing[];
extern const char mcq_why_page_missing[];

/* Counts n more damaged or missing messages passed over (once their
 * transaction has committed). */
void mcq_quarantine_count_add (McqQuarantine *qr, guint64 n);

/* Damaged or missing messages passed over since the store opened.  Any
 * thread. */
guint64 mcq_quarantine_count (McqQuarantine *qr);

/* Called with every Berkeley DB error the store reports: the first
 * DB_RUNRECOVERY (Berkeley DB has stopped the environment, as a damaged
 * page makes it do) gets one warning saying what it means and what to
 * do.  Any thread. */
void mcq_quarantine_note_error (int ret);

/* Looks for the record of message seq of queue id item by item around
 * where the cursor's search for it lands, up to MCQ_SEEK_SPAN items each
 * way: a damaged key on a page can misdirect Berkeley DB's binary search
 * past records that are there.  0 with the cursor on it; else
 * DB_NOTFOUND (or another Berkeley DB error) and *next is the lowest
 * sequence number above seq seen for queue id (G_MAXUINT64 if none): the
 * messages in between are gone. */
#define MCQ_SEEK_SPAN 256
int mcq_quarantine_seek (DBC *cursor, guint32 id, guint64 seq, guint64 *next);

void mcq_quarantine_close (McqQuarantine *qr);
