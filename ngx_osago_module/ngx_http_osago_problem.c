/*
 * How the module answers: response headers and bodies, error responses as
 * application/problem+json (RFC 9457), and the JSON string escaping they
 * need.
 */

#include "ngx_http_osago_module.h"


/* JSON needs '"', '\\' and control characters escaped; the rest is as is */
size_t
ngx_http_osago_json_escaped_len(u_char *src, size_t size)
{
    size_t  n;

    for (n = size; size; size--, src++) {
        if (*src == '"' || *src == '\\') {
            n++;

        } else if (*src < 0x20) {
            n += 5;     /* \u00XX */
        }
    }

    return n;
}


u_char *
ngx_http_osago_json_escape(u_char *dst, u_char *src, size_t size)
{
    static u_char  hex[] = "0123456789abcdef";

    for ( /* void */ ; size; size--, src++) {

        if (*src == '"' || *src == '\\') {
            *dst++ = '\\';
            *dst++ = *src;

        } else if (*src < 0x20) {
            *dst++ = '\\';
            *dst++ = 'u';
            *dst++ = '0';
            *dst++ = '0';
            *dst++ = hex[*src >> 4];
            *dst++ = hex[*src & 0xf];

        } else {
            *dst++ = *src;
        }
    }

    return dst;
}


ngx_int_t
ngx_http_osago_problem_send(ngx_http_request_t *r,
    ngx_http_osago_problem_t *problem)
{
    size_t        len;
    u_char       *p;
    ngx_int_t     rc;
    ngx_buf_t    *b;

    static ngx_str_t  type = ngx_string("application/problem+json");

    /*
     * The body of a refused request is of no interest, keep-alive is; and
     * a client that asked "Expect: 100-continue" is not invited to send it.
     * Such a client may then never send it, and what it sends next on the
     * connection would be discarded as the body: the connection closes
     * after the answer, as after nginx's own 413.
     */
    if (!r->expect_tested
        && r->request_body == NULL
        && r->headers_in.expect != NULL
        && r->headers_in.expect->value.len == sizeof("100-continue") - 1
        && ngx_strncasecmp(r->headers_in.expect->value.data,
                           (u_char *) "100-continue",
                           sizeof("100-continue") - 1) == 0
        && (r->headers_in.content_length_n > 0 || r->headers_in.chunked))
    {
        r->keepalive = 0;
    }

    r->expect_tested = 1;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    len = sizeof("{\"type\":\"\",\"title\":\"\",\"status\":,\"detail\":\"\"}\n")
          - 1 + NGX_INT_T_LEN
          + ngx_http_osago_json_escaped_len(problem->type.data,
                                            problem->type.len)
          + ngx_http_osago_json_escaped_len(problem->title.data,
                                            problem->title.len)
          + ngx_http_osago_json_escaped_len(problem->detail.data,
                                            problem->detail.len);

    if (problem->pointer.len) {
        len += sizeof(",\"pointer\":\"\"") - 1
               + ngx_http_osago_json_escaped_len(problem->pointer.data,
                                                 problem->pointer.len);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"type\":\"", sizeof("{\"type\":\"") - 1);
    p = ngx_http_osago_json_escape(p, problem->type.data, problem->type.len);
    p = ngx_cpymem(p, "\",\"title\":\"", sizeof("\",\"title\":\"") - 1);
    p = ngx_http_osago_json_escape(p, problem->title.data, problem->title.len);
    p = ngx_sprintf(p, "\",\"status\":%ui,\"detail\":\"", problem->status);
    p = ngx_http_osago_json_escape(p, problem->detail.data,
                                   problem->detail.len);
    *p++ = '"';

    if (problem->pointer.len) {
        p = ngx_cpymem(p, ",\"pointer\":\"", sizeof(",\"pointer\":\"") - 1);
        p = ngx_http_osago_json_escape(p, problem->pointer.data,
                                       problem->pointer.len);
        *p++ = '"';
    }

    *p++ = '}';
    *p++ = '\n';

    b->last = p;

    if (problem->status == 422) {
        /* nginx 1.22 knows no reason phrase for it */
        ngx_str_set(&r->headers_out.status_line, "422 Unprocessable Content");
    }

    return ngx_http_osago_send(r, problem->status, &type, b);
}


ngx_int_t
ngx_http_osago_add_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;

    return NGX_OK;
}


ngx_int_t
ngx_http_osago_add_header_uint(ngx_http_request_t *r, const char *name,
    ngx_uint_t n)
{
    ngx_str_t  value;

    value.data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    value.len = ngx_sprintf(value.data, "%ui", n) - value.data;

    return ngx_http_osago_add_header(r, name, &value);
}


/* A whole response from one buffer, headers first. */
ngx_int_t
ngx_http_osago_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *content_type, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_type = *content_type;
    r->headers_out.content_type_len = content_type->len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
