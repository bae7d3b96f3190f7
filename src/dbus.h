/* dbus.h — memcacheq on D-Bus: the name org.memcacheq.MemcacheQ1, the daemon
 * object and one object per queue (data/org.memcacheq.MemcacheQ1.xml), fed
 * from store snapshots at most once a second.  The bus is optional: without
 * it the daemon logs one warning and serves memcache clients as usual. */
#pragma once

#include <gio/gio.h>
#include "server.h"

#define MCQ_DBUS_NAME "org.memcacheq.MemcacheQ1"
#define MCQ_DBUS_PATH "/org/memcacheq/MemcacheQ1"
#define MCQ_DBUS_QUEUE_PATH_PREFIX MCQ_DBUS_PATH "/queue/"
#define MCQ_DBUS_ERROR_NO_SUCH_QUEUE MCQ_DBUS_NAME ".Error.NoSuchQueue"
#define MCQ_DBUS_ERROR_FAILED MCQ_DBUS_NAME ".Error.Failed"

typedef struct _McqDbus McqDbus;

/* Starts connecting to bus_type (G_BUS_TYPE_SYSTEM honours
 * DBUS_SYSTEM_BUS_ADDRESS) in the background; srv->store must be open.
 * Never fails: returns NULL for G_BUS_TYPE_NONE. */
McqDbus *mcq_dbus_start (McqServer *srv, GBusType bus_type);

/* Leaves the bus and frees everything; call before the store closes.
 * Method calls still running complete on their own.  NULL is accepted. */
void mcq_dbus_stop (McqDbus *d);

/* The object path of queue `name` (any bytes but NUL): the prefix above
 * followed by g_dbus_escape_object_path (name). */
char *mcq_dbus_queue_path (const char *name);
