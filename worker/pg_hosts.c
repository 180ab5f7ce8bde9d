/*
 * A conninfo's addresses spelled out and rotated, for polled connects (pg_hosts.h). The lists
 * produced replace the conninfo's own: libpq takes a later keyword over an earlier one.
 */
#include "pg_hosts.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* One address to try; the strings are borrowed from the split lists, but a looked-up address
 * (addr NULL) is in buf, so that the entries can move. */
typedef struct {
    const char *host;
    const char *addr;
    const char *port;
    char        buf[PG_HOSTS_ADDR_LEN];
} ph_entry_t;

typedef struct {
    char **items;
    int    n;
} ph_list_t;

static void ph_list_free(ph_list_t *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* A comma-separated list into its elements (none when s is NULL). 0, or -1. */
static int ph_split(const char *s, ph_list_t *l)
{
    int cap = 1;

    l->items = NULL;
    l->n = 0;
    if (s == NULL)
        return 0;
    for (const char *p = s; *p != '\0'; p++)
        cap += *p == ',';
    if ((l->items = calloc((size_t) cap, sizeof(*l->items))) == NULL)
        return -1;
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");

        if ((l->items[l->n] = strndup(p, len)) == NULL) {
            ph_list_free(l);
            return -1;
        }
        l->n++;
        p += len;
        if (*p == '\0')
            return 0;
    }
}

/* What libpq connects to without asking a resolver: an address (an IPv6 one perhaps with its
 * scope, and no name has a colon), a socket directory, or its default (an empty element). */
static int ph_literal(const char *host)
{
    unsigned char bin[sizeof(struct in_addr)];

    return host[0] == '\0' || host[0] == '/' || host[0] == '@' || strchr(host, ':') != NULL
           || inet_pton(AF_INET, host, bin) == 1;
}

int pg_hosts_resolve(const char *name, char addrs[][PG_HOSTS_ADDR_LEN], int max)
{
    struct addrinfo  hints, *res = NULL;
    int              n = 0;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(name, NULL, &hints, &res) != 0)
        return 0;
    for (struct addrinfo *ai = res; ai != NULL && n < max; ai = ai->ai_next) {
        int seen = 0;

        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            || getnameinfo(ai->ai_addr, ai->ai_addrlen, addrs[n], PG_HOSTS_ADDR_LEN, NULL, 0,
                           NI_NUMERICHOST) != 0)
            continue;
        for (int i = 0; i < n && !seen; i++)
            seen = strcmp(addrs[i], addrs[n]) == 0;
        n += !seen;
    }
    freeaddrinfo(res);
    return n;
}

enum { PH_HOST, PH_ADDR, PH_PORT };

static const char *ph_field(const ph_entry_t *e, int field)
{
    if (field == PH_ADDR)
        return e->addr != NULL ? e->addr : e->buf;
    return field == PH_HOST ? e->host : e->port;
}

/* One field of the entries joined with commas, from the skip-th entry round; NULL when out of
 * memory. */
static char *ph_join(const ph_entry_t *e, int n, int skip, int field)
{
    size_t len = 1;
    char  *out, *at;

    for (int i = 0; i < n; i++)
        len += strlen(ph_field(&e[i], field)) + 1;
    if ((out = malloc(len)) == NULL)
        return NULL;
    at = out;
    for (int i = 0; i < n; i++) {
        const char *s = ph_field(&e[(i + skip) % n], field);
        size_t      l = strlen(s);

        if (i > 0)
            *at++ = ',';
        memcpy(at, s, l);
        at += l;
    }
    *at = '\0';
    return out;
}

/* The entries of a conninfo whose addresses are given (hostaddr) or are not to be looked up. */
static int ph_given(const ph_list_t *h, const ph_list_t *a, const ph_list_t *p, ph_entry_t *e)
{
    int n = h->n > 0 ? h->n : a->n;

    for (int i = 0; i < n; i++) {
        e[i].host = h->n == n ? h->items[i] : "";
        e[i].addr = a->n == n ? a->items[i] : "";
        e[i].port = p->n == n ? p->items[i] : "";
    }
    return n;
}

/* Each host name's addresses as entries of their own; returns how many, or -1. */
static int ph_expand(const ph_list_t *h, const ph_list_t *p, pg_resolve_fn resolve,
                     ph_entry_t **e)
{
    char addrs[PG_HOSTS_ADDR_MAX][PG_HOSTS_ADDR_LEN];
    int  n = 0, cap = h->n;

    for (int i = 0; i < h->n; i++) {
        const char *port = p->n == h->n ? p->items[i] : "";
        int         k = ph_literal(h->items[i]) ? 0 : resolve(h->items[i], addrs, PG_HOSTS_ADDR_MAX);

        if (n + (k > 0 ? k : 1) > cap) {
            ph_entry_t *more;

            cap = (n + (k > 0 ? k : 1)) * 2;
            if ((more = realloc(*e, sizeof(**e) * (size_t) cap)) == NULL)
                return -1;
            *e = more;
        }
        /* no address (a literal, or a name the resolver does not know): libpq's to try */
        for (int j = 0; j < (k > 0 ? k : 1); j++, n++) {
            (*e)[n].host = h->items[i];
            (*e)[n].port = port;
            (*e)[n].addr = NULL;
            memcpy((*e)[n].buf, k > 0 ? addrs[j] : "", k > 0 ? PG_HOSTS_ADDR_LEN : 1);
        }
    }
    return n;
}

int pg_hosts_plan(const char *host, const char *hostaddr, const char *port, int skip,
                  pg_resolve_fn resolve, pg_hosts_t *out)
{
    ph_list_t   h, a = { NULL, 0 }, p = { NULL, 0 };
    ph_entry_t *e = NULL;
    int         n = -1, any_addr = 0, rc = -1;

    memset(out, 0, sizeof(*out));
    if (ph_split(host, &h) != 0)
        return -1;
    if (ph_split(hostaddr, &a) != 0 || ph_split(port, &p) != 0)
        goto done;
    if (h.n + a.n == 0) {
        rc = 0;                     /* libpq's default host: one address, nothing to rotate */
        goto done;
    }
    if ((e = calloc((size_t) (h.n > a.n ? h.n : a.n), sizeof(*e))) == NULL)
        goto done;
    /* ports that do not pair with the hosts would pair with the addresses by accident */
    n = a.n > 0 || (p.n > 1 && p.n != h.n)
        ? ph_given(&h, &a, &p, e)
        : ph_expand(&h, &p, resolve != NULL ? resolve : pg_hosts_resolve, &e);
    if (n <= 0)
        goto done;
    for (int i = 0; i < n; i++)
        any_addr |= ph_field(&e[i], PH_ADDR)[0] != '\0';
    skip = skip < 0 ? 0 : skip % n;
    /* a list libpq would refuse (counts that do not match) is left to libpq to refuse */
    if ((h.n == 0 || (out->host = ph_join(e, n, skip, PH_HOST)) != NULL)
        && (!any_addr || (out->hostaddr = ph_join(e, n, skip, PH_ADDR)) != NULL)
        && (p.n != (a.n > 0 ? n : h.n) || p.n < 2
            || (out->port = ph_join(e, n, skip, PH_PORT)) != NULL)) {
        out->n = n;
        rc = 0;
    }
done:
    if (rc != 0)
        pg_hosts_free(out);
    free(e);
    ph_list_free(&h);
    ph_list_free(&a);
    ph_list_free(&p);
    return rc;
}

/* Whether the i-th element of list is value; an empty element (libpq's default, or its own
 * lookup) and a list not given match anything. */
static int ph_element_is(const char *list, int i, const char *value)
{
    size_t len;

    if (list == NULL)
        return 1;
    for (; i > 0 && list != NULL; i--)
        if ((list = strchr(list, ',')) != NULL)
            list++;
    if (list == NULL)
        return 0;
    len = strcspn(list, ",");
    return len == 0 || (value != NULL && strlen(value) == len && strncmp(list, value, len) == 0);
}

int pg_hosts_find(const pg_hosts_t *h, int from, const char *host, const char *hostaddr,
                  const char *port)
{
    for (int i = from; i < h->n; i++)
        if (ph_element_is(h->host, i, host) && ph_element_is(h->hostaddr, i, hostaddr)
            && ph_element_is(h->port, i, port))
            return i;
    return from;
}

void pg_hosts_free(pg_hosts_t *h)
{
    free(h->host);
    free(h->hostaddr);
    free(h->port);
    memset(h, 0, sizeof(*h));
}
