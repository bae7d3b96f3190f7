/* connection.h — one client connection: reads requests, hands them to the
 * store, and writes the replies back in request order. */
#pragma once

#include "server.h"

typedef struct _McqConnection McqConnection;

/* Takes ownership of fd (a connected, non-blocking stream socket). */
McqConnection *mcq_connection_new (McqServer *server, int fd);

/* Refuses fd politely (too many connections) and closes it. */
void mcq_connection_refuse (int fd, const char *reply);

/* Shutdown: stop reading; the connection closes itself once every reply
 * already owed has been written (or the peer is gone). */
void mcq_connection_drain (McqConnection *conn);

/* Closes every connection at once (last step of shutdown). */
void mcq_connection_close_all (McqServer *server);
