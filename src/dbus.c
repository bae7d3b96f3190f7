/* dbus.c — memcacheq's D-Bus service: owns org.memcacheq.MemcacheQ1, exports
 * the daemon object and an ObjectManager with one object per queue, answers
 * Checkpoint/DeleteQueue through the store, and reconnects when the bus goes.
 * Nothing here runs per message: objects follow store snapshots, ≤ 1 Hz. */
#include "dbus.h"

#include <string.h>

#include "config.h"
#include "i18n.h"
#include "mcq-bus-generated.h"
#include "protocol.h"

#define FLUSH_INTERVAL_US G_USEC_PER_SEC   /* at most one PropertiesChanged per object per second */
#define PIN_US 1000                        /* see McqQueueIface.pin */
#define RETRY_MIN_S 1
#define RETRY_MAX_S 60

/* RequestName flags and replies (D-Bus specification). */
#define NAME_FLAG_DO_NOT_QUEUE 4
#define NAME_REPLY_PRIMARY_OWNER 1
#define NAME_REPLY_ALREADY_OWNER 4

/* ---------------------------------------------------------------------------
 * Interface skeletons whose counters are read from the store when a client
 * asks, so a Get always agrees with "stats queue"; the values cached in the
 * generated skeleton are only what the coalesced PropertiesChanged carry.
 * GObject runs the get_property of the class that installed a property, so
 * the subclasses install the interface's properties again (same ids) and
 * hand everything they do not compute to the generated skeleton.
 * ------------------------------------------------------------------------- */

#define MCQ_TYPE_QUEUE_IFACE (mcq_queue_iface_get_type ())
G_DECLARE_FINAL_TYPE (McqQueueIface, mcq_queue_iface, MCQ, QUEUE_IFACE, McqBusQueueSkeleton)

struct _McqQueueIface {
  McqBusQueueSkeleton parent;
  McqStore *store;
  char *name;                   /* the exact queue name */
  guint generation;             /* last flush that saw the queue */
  /* The figures one GetAll reports come from one snapshot: reading Name
   * (the first property) or a pin older than PIN_US takes a new one. */
  McqQueueInfo pin;
  gboolean pin_valid;
  gint64 pin_time;
};

G_DEFINE_TYPE (McqQueueIface, mcq_queue_iface, MCQ_BUS_TYPE_QUEUE_SKELETON)

static GParamSpec *queue_pspec_name, *queue_pspec_enqueued, *queue_pspec_dequeued,
                  *queue_pspec_depth, *queue_pspec_bytes, *queue_pspec_age;

static guint64
oldest_age (const McqQueueInfo *info)
{
  gint64 age;

  if (info->depth == 0 || info->head_time <= 0)
    return 0;
  age = g_get_real_time () - info->head_time;
  return age > 0 ? (guint64) age : 0;
}

static void
mcq_queue_iface_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  McqQueueIface *self = MCQ_QUEUE_IFACE (object);
  gint64 now = g_get_monotonic_time ();

  G_OBJECT_CLASS (mcq_queue_iface_parent_class)->get_property (object, prop_id, value, pspec);
  if (pspec == queue_pspec_name || !self->pin_valid || now - self->pin_time > PIN_US)
    {
      self->pin_valid = mcq_store_queue_info (self->store, self->name, &self->pin);
      self->pin_time = now;
    }
  if (!self->pin_valid)
    return;                     /* deleted a moment ago: the last figures published */
  if (pspec == queue_pspec_enqueued)
    g_value_set_uint64 (value, self->pin.enqueued);
  else if (pspec == queue_pspec_dequeued)
    g_value_set_uint64 (value, self->pin.dequeued);
  else if (pspec == queue_pspec_depth)
    g_value_set_uint64 (value, self->pin.depth);
  else if (pspec == queue_pspec_bytes)
    g_value_set_uint64 (value, self->pin.bytes);
  else if (pspec == queue_pspec_age)
    g_value_set_uint64 (value, oldest_age (&self->pin));
}

static void
mcq_queue_iface_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  G_OBJECT_CLASS (mcq_queue_iface_parent_class)->set_property (object, prop_id, value, pspec);
}

static void
mcq_queue_iface_finalize (GObject *object)
{
  g_free (MCQ_QUEUE_IFACE (object)->name);
  G_OBJECT_CLASS (mcq_queue_iface_parent_class)->finalize (object);
}

static void
mcq_queue_iface_class_init (McqQueueIfaceClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = mcq_queue_iface_get_property;
  object_class->set_property = mcq_queue_iface_set_property;
  object_class->finalize = mcq_queue_iface_finalize;
  mcq_bus_queue_override_properties (object_class, 1);   /* the skeleton's ids */
  queue_pspec_name = g_object_class_find_property (object_class, "name");
  queue_pspec_enqueued = g_object_class_find_property (object_class, "enqueued");
  queue_pspec_dequeued = g_object_class_find_property (object_class, "dequeued");
  queue_pspec_depth = g_object_class_find_property (object_class, "depth");
  queue_pspec_bytes = g_object_class_find_property (object_class, "bytes");
  queue_pspec_age = g_object_class_find_property (object_class, "oldest-message-age");
}

static void
mcq_queue_iface_init (McqQueueIface *self)
{
}

#define MCQ_TYPE_DAEMON_IFACE (mcq_daemon_iface_get_type ())
G_DECLARE_FINAL_TYPE (McqDaemonIface, mcq_daemon_iface, MCQ, DAEMON_IFACE, McqBusDaemonSkeleton)

struct _McqDaemonIface {
  McqBusDaemonSkeleton parent;
  McqServer *srv;
};

G_DEFINE_TYPE (McqDaemonIface, mcq_daemon_iface, MCQ_BUS_TYPE_DAEMON_SKELETON)

static GParamSpec *daemon_pspec_curr, *daemon_pspec_total, *daemon_pspec_queues, *daemon_pspec_damaged;

static void
mcq_daemon_iface_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  McqServer *srv = MCQ_DAEMON_IFACE (object)->srv;

  if (pspec == daemon_pspec_curr)
    g_value_set_uint (value, srv->curr_conns);
  else if (pspec == daemon_pspec_total)
    g_value_set_uint64 (value, srv->total_conns);
  else if (pspec == daemon_pspec_queues)
    g_value_set_uint (value, (guint) mcq_store_queue_count (srv->store));
  else if (pspec == daemon_pspec_damaged)
    g_value_set_uint64 (value, mcq_store_damaged (srv->store));
  else
    G_OBJECT_CLASS (mcq_daemon_iface_parent_class)->get_property (object, prop_id, value, pspec);
}

static void
mcq_daemon_iface_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  G_OBJECT_CLASS (mcq_daemon_iface_parent_class)->set_property (object, prop_id, value, pspec);
}

static void
mcq_daemon_iface_class_init (McqDaemonIfaceClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = mcq_daemon_iface_get_property;
  object_class->set_property = mcq_daemon_iface_set_property;
  mcq_bus_daemon_override_properties (object_class, 1);
  daemon_pspec_curr = g_object_class_find_property (object_class, "current-connections");
  daemon_pspec_total = g_object_class_find_property (object_class, "total-connections");
  daemon_pspec_queues = g_object_class_find_property (object_class, "queue-count");
  daemon_pspec_damaged = g_object_class_find_property (object_class, "damaged-messages");
}

static void
mcq_daemon_iface_init (McqDaemonIface *self)
{
}

/* ------------------------------------------------------------------------- */

struct _McqDbus {
  McqServer *srv;
  GBusType bus_type;
  const char *bus_label;        /* "system" or "session", for messages */

  GCancellable *cancel;         /* the connection attempt and its calls */
  GDBusConnection *conn;
  gulong closed_handler;
  gboolean owned;
  gboolean reloaded;            /* ReloadConfig tried after an AccessDenied */
  gboolean complained;          /* a warning was logged since the last success */
  guint retry_source;
  guint retry_delay_s;

  McqDaemonIface *daemon;
  GDBusObjectManagerServer *manager;
  GHashTable *queues;           /* queue name → McqBusObjectSkeleton* */
  guint generation;

  guint flush_source;
  gint64 last_flush;            /* monotonic µs */
  guint poll_source;
  guint published_conns;
  guint64 published_total;

  GList *calls;                 /* BusCall* still in the store */
};

/* A method call waiting for the store; outlives McqDbus if need be. */
typedef struct {
  McqOp op;
  GDBusMethodInvocation *invocation;
  McqDbus *owner;               /* NULL once mcq_dbus_stop ran */
  char *name;                   /* DeleteQueue */
} BusCall;

static void connect_bus (McqDbus *d);

char *
mcq_dbus_queue_path (const char *name)
{
  g_autofree char *escaped = g_dbus_escape_object_path (name);
  return g_strconcat (MCQ_DBUS_QUEUE_PATH_PREFIX, escaped, NULL);
}

/* --- queue objects ------------------------------------------------------- */

static McqQueueIface *
queue_iface (McqBusObjectSkeleton *obj)
{
  g_autoptr(McqBusQueue) iface = mcq_bus_object_get_queue (MCQ_BUS_OBJECT (obj));
  return MCQ_QUEUE_IFACE (iface);   /* the object holds the reference */
}

static void
queue_update (McqQueueIface *iface, const McqQueueInfo *info)
{
  McqBusQueue *q = MCQ_BUS_QUEUE (iface);

  /* Each setter compares with the cached value; the skeleton sends the
   * changed ones together in one PropertiesChanged from an idle. */
  mcq_bus_queue_set_enqueued (q, info->enqueued);
  mcq_bus_queue_set_dequeued (q, info->dequeued);
  mcq_bus_queue_set_depth (q, info->depth);
  mcq_bus_queue_set_bytes (q, info->bytes);
  mcq_bus_queue_set_oldest_message_age (q, oldest_age (info));   /* not signalled */
}

static void
queue_add (McqDbus *d, const McqQueueInfo *info)
{
  g_autofree char *path = mcq_dbus_queue_path (info->name);
  g_autofree char *display = g_utf8_make_valid (info->name, -1);
  g_autoptr(McqBusObjectSkeleton) obj = mcq_bus_object_skeleton_new (path);
  g_autoptr(McqQueueIface) iface = g_object_new (MCQ_TYPE_QUEUE_IFACE, NULL);

  iface->store = d->srv->store;
  iface->name = g_strdup (info->name);
  iface->generation = d->generation;
  mcq_bus_queue_set_name (MCQ_BUS_QUEUE (iface), display);
  queue_update (iface, info);
  mcq_bus_object_skeleton_set_queue (obj, MCQ_BUS_QUEUE (iface));
  g_hash_table_insert (d->queues, g_strdup (info->name), g_object_ref (obj));
  g_dbus_object_manager_server_export (d->manager, G_DBUS_OBJECT_SKELETON (obj));   /* InterfacesAdded */
}

static void
queue_remove (McqDbus *d, const char *name)
{
  McqBusObjectSkeleton *obj = g_hash_table_lookup (d->queues, name);

  if (obj == NULL)
    return;
  g_dbus_object_manager_server_unexport (d->manager,
      g_dbus_object_get_object_path (G_DBUS_OBJECT (obj)));   /* InterfacesRemoved */
  g_hash_table_remove (d->queues, name);
}

/* Brings the objects in line with the store: new queues appear, deleted
 * ones go, changed figures are queued for one PropertiesChanged each. */
static void
flush (McqDbus *d)
{
  g_autoptr(GPtrArray) snap = mcq_store_snapshot (d->srv->store);
  McqBusDaemon *daemon = MCQ_BUS_DAEMON (d->daemon);
  GHashTableIter it;
  gpointer name, obj;

  d->generation++;
  for (guint i = 0; i < snap->len; i++)
    {
      const McqQueueInfo *info = snap->pdata[i];
      McqBusObjectSkeleton *o = g_hash_table_lookup (d->queues, info->name);

      if (o == NULL)
        queue_add (d, info);
      else
        {
          McqQueueIface *iface = queue_iface (o);
          iface->generation = d->generation;
          queue_update (iface, info);
        }
    }
  g_hash_table_iter_init (&it, d->queues);
  while (g_hash_table_iter_next (&it, &name, &obj))
    if (queue_iface (obj)->generation != d->generation)
      {
        g_dbus_object_manager_server_unexport (d->manager,
            g_dbus_object_get_object_path (G_DBUS_OBJECT (obj)));
        g_hash_table_iter_remove (&it);
      }

  d->published_conns = d->srv->curr_conns;
  d->published_total = d->srv->total_conns;
  mcq_bus_daemon_set_queue_count (daemon, snap->len);
  mcq_bus_daemon_set_current_connections (daemon, d->published_conns);
  mcq_bus_daemon_set_total_connections (daemon, d->published_total);
  mcq_bus_daemon_set_damaged_messages (daemon, mcq_store_damaged (d->srv->store));
}

static gboolean
on_flush (gpointer data)
{
  McqDbus *d = data;

  d->flush_source = 0;
  d->last_flush = g_get_monotonic_time ();
  flush (d);
  return G_SOURCE_REMOVE;
}

/* Flushes now if the last flush is a second old, else when it will be. */
static void
schedule_flush (McqDbus *d)
{
  gint64 wait_us;

  if (d->flush_source != 0)
    return;
  wait_us = d->last_flush + FLUSH_INTERVAL_US - g_get_monotonic_time ();
  if (wait_us < 0)
    wait_us = 0;
  d->flush_source = g_timeout_add ((guint) ((wait_us + 999) / 1000), on_flush, d);
}

/* Runs after every store batch that changed a queue: keep it O(1). */
static void
on_store_changed (gpointer data)
{
  schedule_flush (data);
}

/* Connections come and go without touching the store. */
static gboolean
on_poll (gpointer data)
{
  McqDbus *d = data;

  if (d->srv->curr_conns != d->published_conns || d->srv->total_conns != d->published_total)
    schedule_flush (d);
  return G_SOURCE_CONTINUE;
}

/* --- methods ------------------------------------------------------------- */

static void
call_free (BusCall *call)
{
  mcq_op_release (&call->op);
  g_clear_object (&call->invocation);
  g_free (call->name);
  g_free (call);
}

static void
on_call_done (McqOp *op)
{
  BusCall *call = (BusCall *) op;   /* op is the first member */
  GDBusMethodInvocation *inv = call->invocation;

  if (call->owner != NULL)
    call->owner->calls = g_list_remove (call->owner->calls, call);
  switch (op->status)
    {
    case MCQ_OP_OK:
      if (op->type == MCQ_OP_DELETE && call->owner != NULL)
        queue_remove (call->owner, call->name);   /* gone before the reply */
      g_dbus_method_invocation_return_value (inv, NULL);
      break;
    case MCQ_OP_NOT_FOUND:
      g_dbus_method_invocation_return_dbus_error (inv, MCQ_DBUS_ERROR_NO_SUCH_QUEUE,
                                                  "No such queue");
      break;
    case MCQ_OP_FAILED:
    default:
      g_dbus_method_invocation_return_dbus_error (inv, MCQ_DBUS_ERROR_FAILED,
                                                  op->error ? op->error->message : "failed");
      break;
    }
  call_free (call);
}

static void
submit (McqDbus *d, GDBusMethodInvocation *invocation, McqOpType type, const char *name)
{
  BusCall *call = g_new0 (BusCall, 1);

  call->op.type = type;
  call->op.done = on_call_done;
  call->invocation = g_object_ref (invocation);
  call->owner = d;
  if (name != NULL)
    {
      call->name = g_strdup (name);
      mcq_op_add_key (&call->op, name, strlen (name));
    }
  d->calls = g_list_prepend (d->calls, call);
  mcq_store_submit (d->srv->store, &call->op);
}

static gboolean
on_handle_checkpoint (McqBusDaemon *daemon, GDBusMethodInvocation *invocation, gpointer data)
{
  g_debug ("D-Bus: Checkpoint from %s", g_dbus_method_invocation_get_sender (invocation));
  submit (data, invocation, MCQ_OP_CHECKPOINT, NULL);
  return G_DBUS_METHOD_INVOCATION_HANDLED;
}

static gboolean
on_handle_delete_queue (McqBusDaemon *daemon, GDBusMethodInvocation *invocation,
                        const char *name, gpointer data)
{
  if (mcq_check_key (name, strlen (name)) != NULL || name[0] == '\0' || strchr (name, ' ') != NULL)
    {
      g_dbus_method_invocation_return_error (invocation, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS,
                                             "Not a valid queue name: at most %d bytes, no spaces "
                                             "or control characters", MCQ_KEY_MAX);
      return G_DBUS_METHOD_INVOCATION_HANDLED;
    }
  g_info (_("D-Bus: DeleteQueue “%s” from %s"), name, g_dbus_method_invocation_get_sender (invocation));
  submit (data, invocation, MCQ_OP_DELETE, name);
  return G_DBUS_METHOD_INVOCATION_HANDLED;
}

/* --- the connection ------------------------------------------------------ */

static gboolean
on_retry (gpointer data)
{
  McqDbus *d = data;

  d->retry_source = 0;
  connect_bus (d);
  return G_SOURCE_REMOVE;
}

static void
schedule_retry (McqDbus *d)
{
  if (d->retry_source != 0)
    return;
  g_debug ("D-Bus: trying the %s bus again in %u s", d->bus_label, d->retry_delay_s);
  d->retry_source = g_timeout_add_seconds (d->retry_delay_s, on_retry, d);
  d->retry_delay_s = MIN (d->retry_delay_s * 2, RETRY_MAX_S);
}

/* The first failure since the last success is a warning, the rest debug.
 * what says what failed, "cannot connect to the system bus" (translated). */
static void
complain (McqDbus *d, const char *what, const GError *error)
{
  if (!d->complained)
    g_warning (_("D-Bus: %s: %s; memcache clients are served as usual, the "
                 "statistics are not on the bus (retrying in the background)"),
               what, error->message);
  else
    g_debug ("D-Bus: %s: %s", what, error->message);
  d->complained = TRUE;
}

static void
drop_connection (McqDbus *d)
{
  if (d->conn == NULL)
    return;
  g_clear_handle_id (&d->poll_source, g_source_remove);
  g_clear_signal_handler (&d->closed_handler, d->conn);
  g_dbus_object_manager_server_set_connection (d->manager, NULL);
  if (g_dbus_interface_skeleton_has_connection (G_DBUS_INTERFACE_SKELETON (d->daemon), d->conn))
    g_dbus_interface_skeleton_unexport_from_connection (G_DBUS_INTERFACE_SKELETON (d->daemon),
                                                        d->conn);
  if (!g_dbus_connection_is_closed (d->conn))
    g_dbus_connection_close (d->conn, NULL, NULL, NULL);   /* releases the name */
  g_clear_object (&d->conn);
  d->owned = FALSE;
}

static void
on_closed (GDBusConnection *conn, gboolean remote_peer_vanished, GError *error, gpointer data)
{
  McqDbus *d = data;

  /* TRANSLATORS: "the system bus" or "the session bus": the value of --dbus. */
  if (error != NULL)
    g_warning (_("D-Bus: lost the connection to the %s bus: %s; memcache clients are served "
                 "as usual; reconnecting in the background"), d->bus_label, error->message);
  else
    g_warning (_("D-Bus: lost the connection to the %s bus; memcache clients are served as "
                 "usual; reconnecting in the background"), d->bus_label);
  d->complained = TRUE;
  drop_connection (d);
  d->retry_delay_s = RETRY_MIN_S;
  schedule_retry (d);
}

static void request_name (McqDbus *d);

static void
on_reload_config (GObject *source, GAsyncResult *res, gpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = g_dbus_connection_call_finish (G_DBUS_CONNECTION (source), res, &error);
  McqDbus *d = data;

  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return;
  if (error != NULL)
    g_debug ("D-Bus: ReloadConfig: %s", error->message);
  request_name (d);
}

static void
on_request_name (GObject *source, GAsyncResult *res, gpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GVariant) reply = g_dbus_connection_call_finish (G_DBUS_CONNECTION (source), res, &error);
  McqDbus *d = data;
  guint32 result;

  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return;
  if (error != NULL && g_dbus_error_is_remote_error (error) && !d->reloaded &&
      g_error_matches (error, G_DBUS_ERROR, G_DBUS_ERROR_ACCESS_DENIED))
    {
      /* dbus-daemon resolves the user names of its policy when it loads it;
       * a systemd DynamicUser= only exists once the service runs, so the
       * <policy user="memcacheq"> rule needs a reload to apply. */
      d->reloaded = TRUE;
      g_debug ("D-Bus: RequestName refused; asking the bus to reload its policy");
      g_dbus_connection_call (d->conn, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus", "ReloadConfig", NULL, NULL,
                              G_DBUS_CALL_FLAGS_NONE, -1, d->cancel, on_reload_config, d);
      return;
    }
  if (error != NULL)
    {
      g_dbus_error_strip_remote_error (error);
      g_warning (_("D-Bus: cannot own the name %s on the %s bus: %s; memcache clients are "
                   "served as usual, the statistics are not on the bus"), MCQ_DBUS_NAME,
                 d->bus_label, error->message);
      return;
    }
  g_variant_get (reply, "(u)", &result);
  if (result == NAME_REPLY_PRIMARY_OWNER || result == NAME_REPLY_ALREADY_OWNER)
    {
      d->owned = TRUE;
      if (d->complained)
        g_message (_("D-Bus: %s is on the %s bus again"), MCQ_DBUS_NAME, d->bus_label);
      else
        g_info (_("D-Bus: %s is on the %s bus"), MCQ_DBUS_NAME, d->bus_label);
      d->complained = FALSE;
    }
  else
    g_warning (_("D-Bus: the name %s is already taken on the %s bus (another memcacheq?); "
                 "this one's statistics are not on the bus"), MCQ_DBUS_NAME, d->bus_label);
}

static void
request_name (McqDbus *d)
{
  g_dbus_connection_call (d->conn, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "RequestName",
                          g_variant_new ("(su)", MCQ_DBUS_NAME, NAME_FLAG_DO_NOT_QUEUE),
                          G_VARIANT_TYPE ("(u)"), G_DBUS_CALL_FLAGS_NONE, -1, d->cancel,
                          on_request_name, d);
}

static void
on_connected (GObject *source, GAsyncResult *res, gpointer data)
{
  g_autoptr(GError) error = NULL;
  GDBusConnection *conn = g_dbus_connection_new_for_address_finish (res, &error);
  McqDbus *d = data;

  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return;
  if (conn == NULL)
    {
      /* TRANSLATORS: "the system bus" or "the session bus": the value of --dbus. */
      g_autofree char *what = g_strdup_printf (_("cannot connect to the %s bus"), d->bus_label);
      complain (d, what, error);
      schedule_retry (d);
      return;
    }
  d->conn = conn;
  d->retry_delay_s = RETRY_MIN_S;
  d->reloaded = FALSE;
  g_dbus_connection_set_exit_on_close (conn, FALSE);
  d->closed_handler = g_signal_connect (conn, "closed", G_CALLBACK (on_closed), d);

  /* Objects first, then the name: whoever sees the name sees the objects. */
  flush (d);
  if (!g_dbus_interface_skeleton_export (G_DBUS_INTERFACE_SKELETON (d->daemon), conn,
                                         MCQ_DBUS_PATH, &error))
    {
      g_autofree char *what = g_strdup_printf (_("cannot export the daemon object on the %s bus"),
                                               d->bus_label);
      complain (d, what, error);
      drop_connection (d);
      schedule_retry (d);
      return;
    }
  g_dbus_object_manager_server_set_connection (d->manager, conn);
  d->poll_source = g_timeout_add_seconds (1, on_poll, d);
  request_name (d);
}

static void
connect_bus (McqDbus *d)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *address = g_dbus_address_get_for_bus_sync (d->bus_type, d->cancel, &error);

  if (address == NULL)
    {
      g_autofree char *what = g_strdup_printf (_("cannot find the %s bus"), d->bus_label);
      complain (d, what, error);
      schedule_retry (d);
      return;
    }
  g_debug ("D-Bus: connecting to the %s bus at %s", d->bus_label, address);
  g_dbus_connection_new_for_address (address,
                                     G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                     G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                     NULL, d->cancel, on_connected, d);
}

/* --- lifetime ------------------------------------------------------------ */

McqDbus *
mcq_dbus_start (McqServer *srv, GBusType bus_type)
{
  McqDbus *d;
  McqBusDaemon *daemon;

  if (bus_type == G_BUS_TYPE_NONE)
    return NULL;
  d = g_new0 (McqDbus, 1);
  d->srv = srv;
  d->bus_type = bus_type;
  d->bus_label = bus_type == G_BUS_TYPE_SESSION ? "session" : "system";
  d->cancel = g_cancellable_new ();
  d->retry_delay_s = RETRY_MIN_S;
  d->queues = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_object_unref);
  d->manager = g_dbus_object_manager_server_new (MCQ_DBUS_PATH);

  d->daemon = g_object_new (MCQ_TYPE_DAEMON_IFACE, NULL);
  d->daemon->srv = srv;
  daemon = MCQ_BUS_DAEMON (d->daemon);
  mcq_bus_daemon_set_version (daemon, MCQ_VERSION);
  mcq_bus_daemon_set_start_time (daemon, (guint64) srv->start_time * G_USEC_PER_SEC);
  mcq_bus_daemon_set_durable (daemon, mcq_store_durable (srv->store));
  mcq_bus_daemon_set_state_directory (daemon, mcq_store_home (srv->store));
  g_signal_connect (daemon, "handle-checkpoint", G_CALLBACK (on_handle_checkpoint), d);
  g_signal_connect (daemon, "handle-delete-queue", G_CALLBACK (on_handle_delete_queue), d);

  mcq_store_watch (srv->store, on_store_changed, d);
  connect_bus (d);
  return d;
}

void
mcq_dbus_stop (McqDbus *d)
{
  if (d == NULL)
    return;
  mcq_store_watch (d->srv->store, NULL, NULL);
  g_cancellable_cancel (d->cancel);
  g_clear_handle_id (&d->flush_source, g_source_remove);
  g_clear_handle_id (&d->retry_source, g_source_remove);
  drop_connection (d);
  for (GList *l = d->calls; l != NULL; l = l->next)
    ((BusCall *) l->data)->owner = NULL;   /* they answer without us */
  g_list_free (d->calls);
  g_signal_handlers_disconnect_by_data (d->daemon, d);
  g_clear_object (&d->daemon);
  g_clear_object (&d->manager);
  g_clear_pointer (&d->queues, g_hash_table_unref);
  g_clear_object (&d->cancel);
  g_free (d);
}
