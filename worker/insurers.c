/*
 * The insurer list file: a JSON array of {code, name, url, timeout_ms, auth_header}, the format
 * tools/insurer-sim --write-insurers produces. Unknown members are errors: a misspelt
 * "timeout" silently falling back to the default would be found only in production; so are
 * repeated members.
 */
#include "insurers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <yajl/yajl_tree.h>

#define INSURERS_FILE_MAX (1024 * 1024)

static int code_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* "Name: value": an HTTP token, a colon, a space, a non-empty value without CR or LF. */
static int auth_header_valid(const char *s)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    size_t i = 0;
    while (s[i] != '\0' && s[i] != ':') {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(tchar, c) != NULL))
            return 0;
        i++;
    }
    if (i == 0 || s[i] != ':' || s[i + 1] != ' ' || s[i + 2] == '\0')
        return 0;
    for (const char *p = s + i + 2; *p; p++)
        if (*p == '\r' || *p == '\n' || *p == '\0')
            return 0;
    return 1;
}

/* A header that frames or routes the request, or carries the trace: curl would send it in
 * place of its own (a Content-Length of the header's, then the whole body). */
static int auth_header_reserved(const char *s)
{
    static const char *const reserved[] = {
        "Host", "Content-Length", "Transfer-Encoding", "Content-Type", "Expect", "Connection",
        "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection", "traceparent",
        "tracestate"
    };
    size_t n = strcspn(s, ":");

    for (size_t r = 0; r < sizeof(reserved) / sizeof(reserved[0]); r++)
        if (strlen(reserved[r]) == n && strncasecmp(s, reserved[r], n) == 0)
            return 1;
    return 0;
}

/* An http:// or https:// URL with a host, printable ASCII only, that curl parses: a URL curl
 * cannot use would fail every call to that insurer, found only once quotes end in errors. */
static int url_valid(const char *s)
{
    CURLU *u;
    char  *host = NULL;
    int    ok;

    if (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0)
        return 0;
    /* curl reads "http:///x" as the host "x": the text itself must name a host */
    if (strchr("/?#", s[s[4] == 's' ? 8 : 7]) != NULL)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p <= ' ' || *p >= 0x7f)
            return 0;
    u = curl_url();
    if (u == NULL)
        return 0;
    ok = curl_url_set(u, CURLUPART_URL, s, 0) == CURLUE_OK
         && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host[0] != '\0';
    if (ok) {
        /* credentials in the URL would be logged with it: they belong in auth_header */
        char *user = NULL;

        ok = curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_NO_USER;
        curl_free(user);
    }
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

/* Whether a JSON text escapes a NUL (\u0000) in a string: yajl's tree hands strings over
 * NUL-terminated, so "alfa\u0000x" would load as "alfa" without a word. */
static int escapes_nul(const char *text)
{
    for (const char *p = text; *p != '\0'; p++) {
        if (*p != '\\')
            continue;
        if (p[1] == 'u' && strncmp(p + 2, "0000", 4) == 0)
            return 1;
        if (p[1] != '\0')
            p++;                    /* the escaped character, a backslash included */
    }
    return 0;
}

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(INSURERS_FILE_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, INSURERS_FILE_MAX + 1, f) : 0;
    int failed = buf == NULL || ferror(f);
    fclose(f);
    if (failed) {
        snprintf(err, errlen, "%s: cannot read", path);
        free(buf);
        return NULL;
    }
    if (n > INSURERS_FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %d bytes", path, INSURERS_FILE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL || escapes_nul(buf)) {
        snprintf(err, errlen, "%s: not a JSON text (contains a NUL byte, raw or as \\u0000)",
                 path);
        free(buf);
        return NULL;
    }
    return buf;
}

#define FAIL_AT(i, ...)                                                           \
    do {                                                                          \
        int n_ = snprintf(err, errlen, "%s: /%d", path, (i));                      \
        if (n_ >= 0 && (size_t)n_ < errlen)                                       \
            snprintf(err + n_, errlen - (size_t)n_, __VA_ARGS__);                  \
        return -1;                                                                \
    } while (0)

static int load_one(const char *path, int i, yajl_val obj, int default_timeout_ms,
                    insurer_t *ins, char *err, size_t errlen)
{
    static const char *const members[] = { "code", "name", "url", "timeout_ms", "auth_header",
                                           "connect_timeout_ms" };
    unsigned seen = 0;
    int have_code = 0, have_url = 0;

    if (!YAJL_IS_OBJECT(obj))
        FAIL_AT(i, ": must be an object");
    memset(ins, 0, sizeof(*ins));
    ins->timeout_ms = default_timeout_ms;

    for (size_t k = 0; k < obj->u.object.len; k++) {
        const char *key = obj->u.object.keys[k];
        yajl_val v = obj->u.object.values[k];
        size_t m = 0;

        /* yajl keeps both of a repeated member: which one wins would be a guess */
        while (m < sizeof(members) / sizeof(members[0]) && strcmp(key, members[m]) != 0)
            m++;
        if (m < sizeof(members) / sizeof(members[0])) {
            if (seen & (1u << m))
                FAIL_AT(i, "/%s: given twice", key);
            seen |= 1u << m;
        }

        if (strcmp(key, "timeout_ms") == 0 || strcmp(key, "connect_timeout_ms") == 0) {
            if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 1 || YAJL_GET_INTEGER(v) > 600000)
                FAIL_AT(i, "/%s: must be an integer 1..600000", key);
            *(key[0] == 't' ? &ins->timeout_ms : &ins->connect_timeout_ms)
                = (int)YAJL_GET_INTEGER(v);
            continue;
        }
        if (strcmp(key, "code") != 0 && strcmp(key, "name") != 0 && strcmp(key, "url") != 0 &&
            strcmp(key, "auth_header") != 0)
            FAIL_AT(i, ": unknown member \"%s\" (code, name, url, timeout_ms, "
                    "connect_timeout_ms, auth_header)", key);
        if (!YAJL_IS_STRING(v))
            FAIL_AT(i, "/%s: must be a string", key);
        const char *s = v->u.string;

        if (strcmp(key, "code") == 0) {
            if (!code_valid(s))
                FAIL_AT(i, "/code: must match [a-z0-9_-]{1,32}");
            strcpy(ins->code, s);
            have_code = 1;
        } else if (strcmp(key, "name") == 0) {
            if (*s == '\0' || strlen(s) >= sizeof(ins->name))
                FAIL_AT(i, "/name: must be 1..%zu bytes", sizeof(ins->name) - 1);
            strcpy(ins->name, s);
        } else if (strcmp(key, "url") == 0) {
            if (strlen(s) >= sizeof(ins->url) || !url_valid(s))
                FAIL_AT(i, "/url: must be an http:// or https:// URL of at most %zu bytes",
                        sizeof(ins->url) - 1);
            strcpy(ins->url, s);
            have_url = 1;
        } else {
            if (strlen(s) >= sizeof(ins->auth_header) || !auth_header_valid(s))
                FAIL_AT(i, "/auth_header: must be \"Name: value\" (at most %zu bytes)",
                        sizeof(ins->auth_header) - 1);
            if (auth_header_reserved(s))
                FAIL_AT(i, "/auth_header: %.*s is the request's own header, not an "
                        "authorization", (int)strcspn(s, ":"), s);
            strcpy(ins->auth_header, s);
        }
    }
    if (!have_code)
        FAIL_AT(i, ": \"code\" is missing");
    if (!have_url)
        FAIL_AT(i, ": \"url\" is missing");
    if (ins->name[0] == '\0')
        strcpy(ins->name, ins->code);   /* the read model always shows a name */
    if (ins->connect_timeout_ms == 0)
        ins->connect_timeout_ms = INSURERS_CONNECT_TIMEOUT_MS;
    if (ins->connect_timeout_ms > ins->timeout_ms)
        ins->connect_timeout_ms = ins->timeout_ms;     /* the whole call's bound comes first */
    return 0;
}

int insurers_load(const char *path, int default_timeout_ms, insurer_list_t *out,
                  char *err, size_t errlen)
{
    char perr[256];
    int rc = -1;

    memset(out, 0, sizeof(*out));
    char *text = read_file(path, err, errlen);
    if (text == NULL)
        return -1;
    yajl_val root = yajl_tree_parse(text, perr, sizeof(perr));
    free(text);
    if (root == NULL) {
        char *nl = strchr(perr, '\n');
        if (nl != NULL)
            *nl = '\0';
        snprintf(err, errlen, "%s: malformed JSON: %s", path, perr);
        return -1;
    }
    if (!YAJL_IS_ARRAY(root)) {
        snprintf(err, errlen, "%s: must be a JSON array of insurers", path);
        goto out;
    }
    if (root->u.array.len < 1 || root->u.array.len > INSURERS_MAX) {
        snprintf(err, errlen, "%s: must list 1..%d insurers, has %zu", path, INSURERS_MAX,
                 root->u.array.len);
        goto out;
    }
    for (size_t i = 0; i < root->u.array.len; i++) {
        insurer_t *ins = &out->items[i];
        if (load_one(path, (int)i, root->u.array.values[i], default_timeout_ms, ins, err,
                     errlen) < 0)
            goto out;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(out->items[j].code, ins->code) == 0) {
                snprintf(err, errlen, "%s: /%zu/code: \"%s\" is also at /%zu", path, i,
                         ins->code, j);
                goto out;
            }
        }
    }
    out->n = (int)root->u.array.len;
    rc = 0;
out:
    yajl_tree_free(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

const insurer_t *insurers_find(const insurer_list_t *list, const char *code)
{
    for (int i = 0; i < list->n; i++)
        if (strcmp(list->items[i].code, code) == 0)
            return &list->items[i];
    return NULL;
}

/* curl hands an IPv6 host over in its brackets; inet_pton and no_proxy entries have none */
static const char *unbracketed(const char *host, char *buf, size_t cap)
{
    size_t n = strlen(host);

    if (n < 2 || host[0] != '[' || host[n - 1] != ']' || n - 2 >= cap)
        return host;
    memcpy(buf, host + 1, n - 2);
    buf[n - 2] = '\0';
    return buf;
}

static int host_is_loopback(const char *host)
{
    unsigned char a[16];
    char          bare[64];

    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, unbracketed(host, bare, sizeof(bare)), a) != 1)
        return 0;
    if (IN6_IS_ADDR_V4MAPPED((struct in6_addr *) a))
        return a[12] == 127;
    return memcmp(a, &in6addr_loopback, 16) == 0;
}

/* Whether libcurl would take an http:// URL through a proxy: http_proxy (lowercase only: curl
 * ignores HTTP_PROXY, which a CGI client could set), all_proxy or ALL_PROXY */
static int proxy_in_env(void)
{
    static const char *const names[] = { "http_proxy", "all_proxy", "ALL_PROXY" };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = getenv(names[i]);
        if (v != NULL && *v != '\0')
            return 1;
    }
    return 0;
}

/* Whether no_proxy (or NO_PROXY) lists the host itself, or "*": entries are compared whole,
 * which may miss an entry curl would honour, never the other way round. */
static int no_proxy_lists(const char *host)
{
    const char *list = getenv("no_proxy");
    char        bare[256];
    size_t      hn;

    if (list == NULL || *list == '\0')
        list = getenv("NO_PROXY");
    if (list == NULL)
        return 0;
    host = unbracketed(host, bare, sizeof(bare));
    hn = strlen(host);
    for (const char *p = list; *p != '\0';) {
        size_t n;

        p += strspn(p, " ,");
        n = strcspn(p, " ,");
        if ((n == 1 && *p == '*') || (n == hn && n > 0 && strncasecmp(p, host, n) == 0))
            return 1;
        p += n;
    }
    return 0;
}

int insurers_auth_in_clear(const insurer_t *ins, char *host, size_t hostlen)
{
    CURLU *u;
    char  *h = NULL;
    int    clear = AUTH_CLEAR_HOST;

    if (ins->auth_header[0] == '\0' || strncmp(ins->url, "http://", 7) != 0)
        return AUTH_SEALED;
    snprintf(host, hostlen, "%s", "(a host curl could not read)");
    u = curl_url();
    if (u != NULL && curl_url_set(u, CURLUPART_URL, ins->url, 0) == CURLUE_OK
        && curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK) {
        snprintf(host, hostlen, "%s", h);
        if (host_is_loopback(h))
            clear = proxy_in_env() && !no_proxy_lists(h) ? AUTH_CLEAR_PROXY : AUTH_SEALED;
    }
    curl_free(h);
    curl_url_cleanup(u);
    return clear;
}
