/*
 * The addresses a connect to PostgreSQL goes through, for connects that are polled. libpq,
 * polled, never leaves an address that takes the connection and then says nothing (a host gone
 * from the network): it applies connect_timeout only while it blocks. So the caller gives such
 * an address up itself and starts its next attempt past it, which needs every address spelled
 * out: a host name's addresses are resolved here, not left to libpq.
 */
#ifndef OSAGO_WORKER_PG_HOSTS_H
#define OSAGO_WORKER_PG_HOSTS_H

#define PG_HOSTS_ADDR_MAX 16      /* addresses taken from one name; the rest are not tried */
#define PG_HOSTS_ADDR_LEN 64      /* an IPv6 address with its scope (fe80::1%eth0) */

/* A name's addresses, as text, in the resolver's order: how many (0 when it has none). */
typedef int (*pg_resolve_fn)(const char *name, char addrs[][PG_HOSTS_ADDR_LEN], int max);

/* The host, hostaddr and port lists to connect with (each NULL when the conninfo's own will
 * do), n addresses in all (0: libpq's default, one). malloc'd: pg_hosts_free. */
typedef struct {
    char *host;
    char *hostaddr;
    char *port;
    int   n;
} pg_hosts_t;

/*
 * From a conninfo's host, hostaddr and port (each NULL when not given): every host name that is
 * not an address or a socket directory becomes one entry per address (host=name kept for TLS and
 * .pgpass, hostaddr=the address, its port repeated), unless hostaddr was given (the operator
 * chose the addresses) or the ports do not pair with the hosts (libpq refuses that itself); then
 * the lists, rotated left by skip modulo their length, so that the attempt starts at the
 * skip-th address and comes round to the others after it. resolve NULL: getaddrinfo
 * (pg_hosts_resolve). 0, or -1 when out of memory.
 */
int pg_hosts_plan(const char *host, const char *hostaddr, const char *port, int skip,
                  pg_resolve_fn resolve, pg_hosts_t *out);

void pg_hosts_free(pg_hosts_t *h);

/*
 * Which of the plan's addresses a connect is on, from what libpq says of it (PQhost,
 * PQhostaddr, PQport): the first entry from `from` on that matches, since libpq goes through
 * them in order; `from` when none does. libpq may pass several of them within one call (a
 * socket directory that does not exist fails at once), so the caller asks after every call
 * rather than count the changes it sees.
 */
int pg_hosts_find(const pg_hosts_t *h, int from, const char *host, const char *hostaddr,
                  const char *port);

/* getaddrinfo as libpq asks it (any family, stream sockets), as numeric text with any IPv6
 * scope; duplicates dropped. May block. */
int pg_hosts_resolve(const char *name, char addrs[][PG_HOSTS_ADDR_LEN], int max);

#endif
