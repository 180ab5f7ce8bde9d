#include "http_response.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Case-insensitive search for a header's value within [h, end). */
static const char *find_header(const char *h, const char *end, const char *name)
{
    size_t nl = strlen(name);
    const char *p = h;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t) (end - p));
        if (eol == NULL) {
            eol = end;
        }
        if ((size_t) (eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            p += nl + 1;
            while (p < eol && (*p == ' ' || *p == '\t')) {
                p++;
            }
            return p;
        }
        p = eol + 1;
    }
    return NULL;
}

/* A chunked body starting at p: 1 complete (*stop just after it), 0 not yet, -1 malformed. */
static int chunked_end(const char *p, const char *end, const char **stop)
{
    for (;;) {
        const char *eol = memchr(p, '\n', (size_t) (end - p));
        if (eol == NULL) {
            return 0;
        }
        char *after;
        unsigned long long sz = strtoull(p, &after, 16);
        if (after == p) {
            return -1;
        }
        p = eol + 1;
        if (sz == 0) {
            /* trailers, if any, then the empty line */
            for (;;) {
                eol = memchr(p, '\n', (size_t) (end - p));
                if (eol == NULL) {
                    return 0;
                }
                if (eol == p || (eol == p + 1 && *p == '\r')) {
                    *stop = eol + 1;
                    return 1;
                }
                p = eol + 1;
            }
        }
        if ((unsigned long long) (end - p) < sz + 2) {
            return 0;
        }
        p += sz + 2;
    }
}

int http_response_parse(const char *b, size_t len, int eof, http_response_t *out)
{
    const char *hend = NULL;
    for (size_t i = 3; i < len; i++) {
        if (b[i] == '\n' && b[i - 1] == '\r' && b[i - 2] == '\n' && b[i - 3] == '\r') {
            hend = b + i + 1;
            break;
        }
    }
    if (hend == NULL) {
        return eof ? -1 : 0;
    }
    if (len < 12 || strncmp(b, "HTTP/1.", 7) != 0) {
        return -1;
    }
    int st = atoi(b + 9);
    if (st < 100 || st > 999) {
        return -1;
    }
    const char *v = find_header(b, hend, "Connection");
    size_t hlen = (size_t) (hend - b);

    out->status = st;
    out->close_after = v != NULL && strncasecmp(v, "close", 5) == 0;
    if (st == 204 || st == 304 || st < 200) {
        out->size = hlen;
        return 1;
    }
    v = find_header(b, hend, "Transfer-Encoding");
    if (v != NULL && strncasecmp(v, "chunked", 7) == 0) {
        const char *stop = NULL;
        int done = chunked_end(hend, b + len, &stop);
        if (done == 1) {
            out->size = (size_t) (stop - b);
        }
        return done == 0 && eof ? -1 : done;
    }
    v = find_header(b, hend, "Content-Length");
    if (v != NULL) {
        unsigned long long blen = strtoull(v, NULL, 10);
        if (len >= hlen + blen) {
            out->size = hlen + (size_t) blen;
            return 1;
        }
        return eof ? -1 : 0;
    }
    /* delimited by the close */
    out->size = len;
    out->close_after = 1;
    return eof ? 1 : 0;
}
