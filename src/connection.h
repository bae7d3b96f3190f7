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

/* Shutdown: the connection parses no more requests, its gets not yet run
 * take nothing (they answer as if empty, so that no message is taken that
 * the client might not read before the deadline), and it closes itself
 * once every reply owed has been sent. */
void mcq_connection_drain (McqConnection *conn);

/* Closes every connection at once (last step of shutdown). */
void mcq_connection_close_all (McqServer *server);
