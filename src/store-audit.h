/* store-audit.h — queues.db against messages.db, once at start: every
 * message a queue record lists must exist, and every message must be
 * reachable from a queue record. */
#pragma once

#include <db.h>
#include <glib.h>

/* After the databases are opened and recovered, before the queues are
 * loaded: refuses when messages.db lacks messages that queues.db lists;
 * gives messages that no queue record reaches (orphans) a queue again and
 * widens a record to every message of its queue, with a warning naming
 * each queue and the counts. */
gboolean mcq_store_audit_queues (DB_ENV *env, DB *queues, DB *messages, DB *purge,
                                 GError **error);
