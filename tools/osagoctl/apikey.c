/* Key generation and hashing. Keys carry 256 bits from OpenSSL's CSPRNG;
 * base64url keeps them inside the printable ASCII the edge accepts and free of
 * characters that need quoting in shells, URLs or headers. */
#include "apikey.h"

#include "diag.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* OpenSSL may have queued no reason at all; never hand printf a NULL. */
static const char *ssl_reason(void)
{
    const char *r = ERR_reason_error_string(ERR_get_error());

    return r != NULL ? r : "no reason given";
}

/* Unpadded RFC 4648 section 5; out needs 4*ceil(len/3)+1 bytes at most. */
static size_t base64url_encode(const unsigned char *in, size_t len, char *out)
{
    size_t n = 0, i = 0;

    for (; i + 3 <= len; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8 | in[i + 2];

        out[n++] = b64url[(v >> 18) & 63];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
        out[n++] = b64url[v & 63];
    }
    if (len - i == 1) {
        unsigned long v = (unsigned long)in[i] << 16;

        out[n++] = b64url[(v >> 18) & 63];
        out[n++] = b64url[(v >> 12) & 63];
    } else if (len - i == 2) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8;

        out[n++] = b64url[(v >> 18) & 63];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
    }
    out[n] = '\0';
    return n;
}

bool apikey_generate(char key[APIKEY_LEN + 1])
{
    unsigned char raw[APIKEY_RANDOM_BYTES];
    size_t prefix = sizeof(APIKEY_PREFIX) - 1;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        diag_error("cannot generate a key: the random generator failed (%s)", ssl_reason());
        return false;
    }
    memcpy(key, APIKEY_PREFIX, prefix);
    base64url_encode(raw, sizeof(raw), key + prefix);
    OPENSSL_cleanse(raw, sizeof(raw));
    return true;
}

bool apikey_hash_hex(const char *key, char hex[APIKEY_HASH_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (EVP_Digest(key, strlen(key), md, &mdlen, EVP_sha256(), NULL) != 1 ||
        mdlen * 2 != APIKEY_HASH_HEX_LEN) {
        diag_error("cannot hash the key: SHA-256 failed (%s)",
                   ssl_reason());
        return false;
    }
    for (unsigned int i = 0; i < mdlen; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[APIKEY_HASH_HEX_LEN] = '\0';
    return true;
}

void apikey_wipe(char key[APIKEY_LEN + 1])
{
    OPENSSL_cleanse(key, APIKEY_LEN + 1);
}
