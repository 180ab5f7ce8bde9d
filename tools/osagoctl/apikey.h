/* API keys: how they are made and the only form in which they are stored. */
#ifndef OSAGOCTL_APIKEY_H
#define OSAGOCTL_APIKEY_H

#include <stdbool.h>

#define APIKEY_PREFIX "osk_"
#define APIKEY_RANDOM_BYTES 32
/* "osk_" + unpadded base64url of 32 bytes (43 characters). */
#define APIKEY_LEN (sizeof(APIKEY_PREFIX) - 1 + (APIKEY_RANDOM_BYTES * 4 + 2) / 3)
#define APIKEY_HASH_HEX_LEN 64

/* Returns false (after reporting) if the CSPRNG cannot deliver. */
bool apikey_generate(char key[APIKEY_LEN + 1]);

/* Lowercase hex SHA-256, exactly what the edge computes from X-API-Key. */
bool apikey_hash_hex(const char *key, char hex[APIKEY_HASH_HEX_LEN + 1]);

/* Clears a key from memory once it has been shown. */
void apikey_wipe(char key[APIKEY_LEN + 1]);

#endif
