/* Option parsing. A repeated option is an error rather than "last wins":
 * with rates and bursts a silent override is more likely a typo than a
 * wish. */
#include "opts.h"

#include "diag.h"

#include <string.h>

static bool is_option(const char *arg)
{
    /* A lone "-" is a (valid) name, not an option. */
    return arg[0] == '-' && arg[1] != '\0';
}

/* Consumes the option at argv[*i] (and its value, if separate). */
static int take_option(const char *ctx, int argc, char **argv, int *i, struct opt *opts,
                       size_t nopts)
{
    const char *arg = argv[*i], *name, *eq;
    char q[DIAG_QUOTE_MAX];
    struct opt *o = NULL;
    size_t len;

    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
        return OPTS_HELP;
    if (arg[1] != '-')
        return diag_usage("%sunknown option %s", ctx, diag_quote(arg, q));

    name = arg + 2;
    eq = strchr(name, '=');
    len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    for (size_t k = 0; k < nopts; k++) {
        if (strlen(opts[k].name) == len && strncmp(opts[k].name, name, len) == 0) {
            o = &opts[k];
            break;
        }
    }
    if (o == NULL) {
        /* Show the name only: after '=' may come a password. */
        char shown[DIAG_QUOTE_MAX];
        size_t n = len + 2 < sizeof(shown) ? len + 2 : sizeof(shown) - 1;

        memcpy(shown, arg, n);
        shown[n] = '\0';
        return diag_usage("%sunknown option %s", ctx, diag_quote(shown, q));
    }
    if (o->seen)
        return diag_usage("%soption --%s given more than once", ctx, o->name);

    if (!o->takes_value) {
        if (eq != NULL)
            return diag_usage("%soption --%s takes no value", ctx, o->name);
    } else if (eq != NULL) {
        o->value = eq + 1;
    } else if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
        /* A value may start with a single '-' so that "--rate -1" is
         * reported as a bad rate, not as a missing one. */
        o->value = argv[++*i];
    } else {
        return diag_usage("%soption --%s needs a value", ctx, o->name);
    }
    o->seen = true;
    return EXIT_OK;
}

int opts_parse(const char *ctx, int argc, char **argv, struct opt *opts, size_t nopts,
               const char **pos, size_t maxpos, size_t *npos)
{
    bool options_done = false;
    char q[DIAG_QUOTE_MAX];

    *npos = 0;
    for (int i = 0; i < argc; i++) {
        if (!options_done && strcmp(argv[i], "--") == 0) {
            options_done = true;
        } else if (!options_done && is_option(argv[i])) {
            int rc = take_option(ctx, argc, argv, &i, opts, nopts);

            if (rc != EXIT_OK)
                return rc;
        } else if (*npos < maxpos) {
            pos[(*npos)++] = argv[i];
        } else {
            return diag_usage("%sunexpected argument %s", ctx, diag_quote(argv[i], q));
        }
    }
    return EXIT_OK;
}

int opts_parse_leading(int argc, char **argv, struct opt *opts, size_t nopts, int *next)
{
    int i = 0;

    for (; i < argc && is_option(argv[i]); i++) {
        int rc;

        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        rc = take_option("", argc, argv, &i, opts, nopts);
        if (rc != EXIT_OK)
            return rc;
    }
    *next = i;
    return EXIT_OK;
}
