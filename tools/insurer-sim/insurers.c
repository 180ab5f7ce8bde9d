/* Insurer names and the insurer list file for the worker (DESIGN.md, "Insurers"). */
#include "insurers.h"
#include "json_out.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct insurer_name {
    const char *code, *name;
};

static const struct insurer_name insurers_known[] = {
    { "alfa", "АльфаСтрахование" },     { "ingos", "Ингосстрах" },
    { "reso", "РЕСО-Гарантия" },        { "vsk", "ВСК" },
    { "rosgosstrakh", "Росгосстрах" },  { "sogaz", "СОГАЗ" },
    { "renins", "Ренессанс Страхование" }, { "soglasie", "Согласие" },
    { "maks", "МАКС" },                 { "ugoria", "Югория" },
    { "zetta", "Зетта Страхование" },   { "sber", "СберСтрахование" },
    { "absolut", "Абсолют Страхование" }, { "tinkoff", "Т-Страхование" },
};

const char *insurers_name(const char *code)
{
    for (size_t i = 0; i < sizeof(insurers_known) / sizeof(insurers_known[0]); i++)
        if (strcmp(insurers_known[i].code, code) == 0)
            return insurers_known[i].name;
    return code;
}

const struct insurer *insurers_find(const struct sim_config *cfg, const char *code, size_t len)
{
    for (int i = 0; i < cfg->ninsurers; i++)
        if (strlen(cfg->insurer[i].code) == len && memcmp(cfg->insurer[i].code, code, len) == 0)
            return &cfg->insurer[i];
    return NULL;
}

int insurers_write_file(const struct sim_config *cfg, int port, const char *path, char *err,
                        size_t errsize)
{
    struct json_out j;
    char url[256], tmp[4096];
    const char *buf;
    size_t len;
    FILE *f;
    int rc = -1;

    if (json_out_init(&j) < 0) {
        snprintf(err, errsize, "out of memory");
        return -1;
    }
    json_out_array_open(&j);
    for (int i = 0; i < cfg->ninsurers; i++) {
        const struct insurer *ins = &cfg->insurer[i];

        snprintf(url, sizeof(url), "http://%s:%d/insurers/%s/quote", cfg->host, port, ins->code);
        json_out_map_open(&j);
        json_out_kv_str(&j, "code", ins->code);
        json_out_kv_str(&j, "name", ins->name);
        json_out_kv_str(&j, "url", url);
        json_out_kv_int(&j, "timeout_ms", 60000);
        json_out_map_close(&j);
    }
    json_out_array_close(&j);
    if (json_out_result(&j, &buf, &len) < 0) {
        snprintf(err, errsize, "JSON generation failed");
        goto out;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    f = fopen(tmp, "w");
    if (f == NULL) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fwrite(buf, 1, len, f) != len || fputc('\n', f) == EOF || fclose(f) != 0) {
        snprintf(err, errsize, "%s: write failed", tmp);
        unlink(tmp);
        goto out;
    }
    /* The worker may be reading the old file: a rename replaces it whole. */
    if (rename(tmp, path) < 0) {
        snprintf(err, errsize, "rename to %s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    json_out_free(&j);
    return rc;
}
