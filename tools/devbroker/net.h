/* Loopback TCP helpers shared by the relay and the control port. */
#ifndef DEVBROKER_NET_H
#define DEVBROKER_NET_H

#include <netinet/in.h>
#include <stddef.h>

/* Parses "HOST:PORT" (IPv4 literal) into addr; returns 0 or -1. Port 0 is allowed. */
int net_parse_addr(const char *text, struct sockaddr_in *addr);

/* A non-blocking listening socket bound to addr (SO_REUSEADDR, so a restart does not wait out
 * TIME_WAIT); fills addr's port when it was 0. Returns the fd or -1 (errno set). */
int net_listen(struct sockaddr_in *addr, int backlog);

/* Starts a non-blocking connect; returns the fd (connected or in progress) or -1. */
int net_connect_start(const struct sockaddr_in *addr);

/* An accepted connection: O_NONBLOCK, and Nagle off (an answer must not wait for the ACK of
 * the one before it). Returns 0 or -1. */
int net_accepted(int fd);

/* Sets O_NONBLOCK; returns 0 or -1. */
int net_set_nonblock(int fd);

/* "127.0.0.1:9092" into buf. */
void net_format_addr(const struct sockaddr_in *addr, char *buf, size_t size);

#endif
