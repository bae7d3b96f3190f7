/* store-quarantine.c — integrity.db (see store-quarantine.h): damaged
 * message records set aside, and the bounds below which a queue may still
 * hold records written before checksums. */
#include "store-quarantine.h"
#include "i18n.h"

#include <string.h>

/*
 * Keys (a letter, then big-endian numbers), so db_dump -p shows them:
 *   "F"               -> version:u32   the store has been upgraded
 *   "L" id:u32        -> end:u64       queue id may hold legacy records < end
 *   "Q" id:u32 seq:u64 n:u16 -> queue name, NUL, why, NUL, the record's bytes
 *                       (n counts records set aside for the same message)
 */
#define FORMAT_VERSION 1

const char mcq_why_missing[] = N_("missing from messages.db");
const char mcq_why_page_missing[] = N_("its page is missing from messages.db");

struct _McqQuarantine {
  DB *db;
  gboolean upgraded;           /* the "F" key is there */
  GHashTable *legacy;          /* id -> end (guint64*), from the "L" keys */
  guint64 held;                /* "Q" keys */
  guint64 count;               /* atomic: reported since open */
};

static void
be32 (guint8 *p, guint32 v)
{
  v = GUINT32_TO_BE (v);
  memcpy (p, &v, 4);
}

static void
be64 (guint8 *p, guint64 v)
{
  v = GUINT64_TO_BE (v);
  memcpy (p, &v, 8);
}

static guint64
read64 (const guint8 *p)
{
  guint64 v;
  memcpy (&v, p, 8);
  return GUINT64_FROM_BE (v);
}

static void
dbt (DBT *d, const void *data, size_t size)
{
  memset (d, 0, sizeof *d);
  d->data = (void *) data;
  d->size = (u_int32_t) size;
}

static gboolean
fail (int ret, GError **error, const char *what)
{
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "integrity.db: %s: %s", what,
               db_strerror (ret));
  return FALSE;
}

/* Reads every key once: the format mark, the legacy bounds, and how many
 * records are set aside. */
static gboolean
load (McqQuarantine *qr, GError **error)
{
  DBC *cur = NULL;
  DBT k, v;
  int ret;

  if ((ret = qr->db->cursor (qr->db, NULL, &cur, 0)) != 0)
    return fail (ret, error, "reading");
  dbt (&k, NULL, 0);
  dbt (&v, NULL, 0);
  while ((ret = cur->get (cur, &k, &v, DB_NEXT)) == 0)
    {
      const guint8 *key = k.data;
      if (k.size == 1 && key[0] == 'F')
        qr->upgraded = TRUE;
      else if (k.size == 5 && key[0] == 'L' && v.size == 8)
        {
          guint32 id;
          guint64 end = read64 (v.data);
          memcpy (&id, key + 1, 4);
          g_hash_table_insert (qr->legacy, GUINT_TO_POINTER (GUINT32_FROM_BE (id)),
                               g_memdup2 (&end, sizeof end));
        }
      else if (k.size == 15 && key[0] == 'Q')
        qr->held++;
    }
  cur->close (cur);
  if (ret != DB_NOTFOUND)
    return fail (ret, error, "reading");
  return TRUE;
}

McqQuarantine *
mcq_quarantine_open (DB_ENV *env, GError **error)
{
  McqQuarantine *qr = g_new0 (McqQuarantine, 1);
  int ret;

  qr->legacy = g_hash_table_new_full (NULL, NULL, NULL, g_free);
  if ((ret = db_create (&qr->db, env, 0)) != 0 ||
      (ret = qr->db->open (qr->db, NULL, "integrity.db", NULL, DB_BTREE,
                           DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0600)) != 0)
    {
      fail (ret, error, "opening");
      mcq_quarantine_close (qr);
      return NULL;
    }
  if (!load (qr, error))
    {
      mcq_quarantine_close (qr);
      return NULL;
    }
  if (qr->held > 0)
    g_message (_("integrity.db holds %llu damaged message records set aside "
                 "(see “Damaged messages” in memcacheq(8))"), (unsigned long long) qr->held);
  return qr;
}

gboolean
mcq_quarantine_needs_upgrade (McqQuarantine *qr)
{
  return !qr->upgraded;
}

gboolean
mcq_quarantine_note_legacy (McqQuarantine *qr, DB_TXN *txn, guint32 id, guint64 end,
                            GError **error)
{
  guint8 key[5] = { 'L' }, val[8];
  DBT k, v;
  int ret;

  be32 (key + 1, id);
  be64 (val, end);
  dbt (&k, key, sizeof key);
  dbt (&v, val, sizeof val);
  if ((ret = qr->db->put (qr->db, txn, &k, &v, 0)) != 0)
    return fail (ret, error, "noting a queue's records without checksums");
  g_hash_table_insert (qr->legacy, GUINT_TO_POINTER (id), g_memdup2 (&end, sizeof end));
  return TRUE;
}

gboolean
mcq_quarantine_upgrade (McqQuarantine *qr, DB_TXN *txn, GError **error)
{
  guint8 key[1] = { 'F' }, val[4];
  DBT k, v;
  int ret;

  be32 (val, FORMAT_VERSION);
  dbt (&k, key, sizeof key);
  dbt (&v, val, sizeof val);
  if ((ret = qr->db->put (qr->db, txn, &k, &v, 0)) != 0)
    return fail (ret, error, "recording the format");
  qr->upgraded = TRUE;
  return TRUE;
}

gboolean
mcq_quarantine_legacy_ok (McqQuarantine *qr, guint32 id, guint64 seq)
{
  const guint64 *end;

  if (g_hash_table_size (qr->legacy) == 0)
    return FALSE;
  end = g_hash_table_lookup (qr->legacy, GUINT_TO_POINTER (id));
  return end != NULL && seq < *end;
}

int
mcq_quarantine_put (McqQuarantine *qr, DB_TXN *txn, const char *queue, guint32 id,
                    guint64 seq, const guint8 *rec, size_t len, const char *why)
{
  g_autoptr(GByteArray) val = g_byte_array_new ();
  guint8 key[15] = { 'Q' };
  DBT k, v;
  int ret = DB_KEYEXIST;

  be32 (key + 1, id);
  be64 (key + 5, seq);
  g_byte_array_append (val, (const guint8 *) queue, (guint) strlen (queue) + 1);
  g_byte_array_append (val, (const guint8 *) why, (guint) strlen (why) + 1);
  if (len > 0)
    g_byte_array_append (val, rec, (guint) len);
  dbt (&v, val->data, val->len);
  for (guint n = 0; n <= G_MAXUINT16 && ret == DB_KEYEXIST; n++)
    {
      key[13] = (guint8) (n >> 8);
      key[14] = (guint8) n;
      dbt (&k, key, sizeof key);
      ret = qr->db->put (qr->db, txn, &k, &v, DB_NOOVERWRITE);
    }
  if (ret == 0)
    qr->held++;
  return ret;
}

void
mcq_quarantine_report (McqQuarantine *qr, const char *queue, guint64 first, guint64 last,
                       const char *why)
{
  if (first == last)
    g_warning (_("queue “%s”: message %llu is damaged (%s); skipped, "
                 "the queue goes on with the next one"), queue, (unsigned long long) first, _(why));
  else
    g_warning (_("queue “%s”: messages %llu to %llu are damaged (%s); skipped, "
                 "the queue goes on with the next one"), queue, (unsigned long long) first,
               (unsigned long long) last, _(why));
}

void
mcq_quarantine_count_add (McqQuarantine *qr, guint64 n)
{
  __atomic_add_fetch (&qr->count, n, __ATOMIC_RELAXED);
}

guint64
mcq_quarantine_count (McqQuarantine *qr)
{
  return __atomic_load_n (&qr->count, __ATOMIC_RELAXED);
}

void
mcq_quarantine_note_error (int ret)
{
  static gint told = 0;

  if (ret == DB_RUNRECOVERY && g_atomic_int_compare_and_exchange (&told, 0, 1))
    g_warning (_("Berkeley DB has stopped the environment (DB_RUNRECOVERY), as a damaged page in "
                 "a database file makes it do: every request fails until memcacheq is restarted; "
                 "if it happens again after a restart, salvage the home (see “Damaged messages” "
                 "in memcacheq(8))"));
}

/* Steps from where the cursor is (ret: how it got there) with `step`,
 * comparing each key with the one wanted and noting in *next the lowest
 * later sequence number of the same queue. */
static int
walk (DBC *cur, DBT *k, DBT *d, int ret, u_int32_t step, const guint8 *key, guint64 *next)
{
  guint64 seq = read64 (key + 4);

  for (int i = 0; i < MCQ_SEEK_SPAN && ret == 0; i++)
    {
      if (k->size == 12 && memcmp (k->data, key, 12) == 0)
        return 0;
      if (k->size == 12 && memcmp (k->data, key, 4) == 0)
        {
          guint64 s = read64 ((const guint8 *) k->data + 4);
          if (s > seq && s < *next)
            *next = s;
        }
      ret = cur->get (cur, k, d, step);
    }
  return ret == 0 || ret == DB_BUFFER_SMALL ? DB_NOTFOUND : ret;
}

int
mcq_quarantine_seek (DBC *cur, guint32 id, guint64 seq, guint64 *next)
{
  guint8 key[12], buf[64];
  DBT k, d;
  int ret;

  be32 (key, id);
  be64 (key + 4, seq);
  *next = G_MAXUINT64;
  for (int back = 0; back < 2; back++)
    {
      memcpy (buf, key, sizeof key);
      dbt (&k, buf, sizeof key);
      k.ulen = sizeof buf;
      k.flags = DB_DBT_USERMEM;
      dbt (&d, NULL, 0);
      d.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;   /* keys only */
      ret = cur->get (cur, &k, &d, DB_SET_RANGE);
      if (back && ret == DB_NOTFOUND)
        ret = cur->get (cur, &k, &d, DB_LAST);
      ret = walk (cur, &k, &d, ret, back ? DB_PREV : DB_NEXT, key, next);
      if (ret != DB_NOTFOUND)
        return ret;
    }
  return DB_NOTFOUND;
}

void
mcq_quarantine_close (McqQuarantine *qr)
{
  if (qr == NULL)
    return;
  if (qr->db != NULL)
    qr->db->close (qr->db, 0);
  g_hash_table_destroy (qr->legacy);
  g_free (qr);
}
