/* connection.h — one client connection: reads requests, hands them to the
 * store, and writes the replies back in request order. */
#pragma once

#include "server.h"

typedef struct _McqConnection McqConnection;

/* Takes ownership of fd (a connected, non-blocking stream socket).
 * Returns NULL, having answered SERVER_ERROR and closed fd, when the
 * kernel refuses to watch it (no epoll instance, too many watches). */
McqConnection *mcq_connection_new (McqServer *server, int fd);

/* Refuses fd politely (too many connections) and closes it. */
void mcq_connection_refuse (int fd, const char *reply);

/* Shutdown: the connection goes on serving, and closes itself the first
 * time nothing is owed and no request is half received. */
void mcq_connection_drain (McqConnection *conn);

/* Closes every connection at once (last step of shutdown). */
void mcq_connection_close_all (McqServer *server);
