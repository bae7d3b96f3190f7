/* listener.h — listening sockets: taken from systemd socket activation, or
 * opened from -p/-l/-s; accepted connections go to connection.c. */
#pragma once

#include <glib.h>
#include "server.h"

typedef struct _McqListener McqListener;

McqListener *mcq_listener_new (void);

/* Adopts the sockets passed by the service manager.  Returns the number
 * taken (0 when not socket-activated) or -1 with error set. */
int mcq_listener_adopt_activated (McqListener *l, GError **error);

gboolean mcq_listener_add_tcp (McqListener *l, const char *address, guint16 port, GError **error);
gboolean mcq_listener_add_unix (McqListener *l, const char *path, guint mode, GError **error);

/* Starts accepting on the default main context. */
void mcq_listener_start (McqListener *l, McqServer *server);

/* A one-line description of what is listened on, for status and logs. */
const char *mcq_listener_describe (McqListener *l);

/* Stops accepting and closes the sockets (unlinking unix paths we made). */
void mcq_listener_free (McqListener *l);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (McqListener, mcq_listener_free)
