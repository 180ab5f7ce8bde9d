/* Where an HTTP/1.1 response ends in a receive buffer: the framing both load tools need
 * (bench/pace.c, bench/parker.c). Status line, Content-Length, chunked (trailers allowed),
 * bodiless statuses, and a body delimited by the close. */
#ifndef BENCH_HTTP_RESPONSE_H
#define BENCH_HTTP_RESPONSE_H

#include <stddef.h>

typedef struct {
    int    status;
    size_t size;          /* bytes of the whole response, headers included */
    int    close_after;   /* "Connection: close" */
} http_response_t;

/*
 * 1: a complete response starts b[0..len), *out filled; 0: not yet; -1: malformed.
 * eof: the peer has closed, which ends a body that has neither Content-Length nor chunking
 * (and makes a response still incomplete malformed).
 */
int http_response_parse(const char *b, size_t len, int eof, http_response_t *out);

#endif
