/*
 * Shared memory zone (see ngx_http_osago_zone.h).
 *
 * Partner nodes are never freed: there are as many as partners, and the
 * workers keep pointers to them so that counting a decision is a single
 * atomic add without the zone lock.
 */

#include "ngx_http_osago_zone.h"


static ngx_int_t ngx_http_osago_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);


ngx_int_t
ngx_http_osago_zone_add(ngx_conf_t *cf, ngx_http_osago_main_conf_t *omcf)
{
    ngx_str_t               name = ngx_string("osago");
    ngx_http_osago_zone_t  *zone;

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_osago_zone_t));
    if (zone == NULL) {
        return NGX_ERROR;
    }

    omcf->shm_zone = ngx_shared_memory_add(cf, &name, omcf->zone_size,
                                           &ngx_http_osago_module);
    if (omcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    omcf->shm_zone->init = ngx_http_osago_zone_init;
    omcf->shm_zone->data = zone;

    return NGX_OK;
}


static void
ngx_http_osago_zone_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t             **p;
    ngx_http_osago_shm_partner_t   *sn, *st;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            sn = (ngx_http_osago_shm_partner_t *) node;
            st = (ngx_http_osago_shm_partner_t *) temp;

            p = (ngx_memn2cmp(sn->name, st->name, sn->name_len, st->name_len)
                 < 0) ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/*
 * A sixteenth of the zone: 4096 slots in the default 1m, 128 in the
 * smallest, 32k.  Should the slab have no room, nothing is remembered and
 * every lookup draws from the budget.
 */
static void
ngx_http_osago_zone_keys_init(ngx_http_osago_zone_t *ozone, size_t zone_size)
{
    size_t  slots, want;

    want = zone_size / 16 / (2 * sizeof(uint64_t));
    slots = NGX_HTTP_OSAGO_KEY_PROBES;

    while (slots * 2 <= want) {
        slots *= 2;
    }

    ozone->sh->known_keys = ngx_slab_calloc(ozone->shpool,
                                            slots * 2 * sizeof(uint64_t));
    ozone->sh->known_mask = slots - 1;
}


static ngx_int_t
ngx_http_osago_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_osago_zone_t  *ozone = shm_zone->data;
    ngx_http_osago_zone_t  *old = data;

    if (old) {
        /* reload: keep counters and fallback state */
        ozone->sh = old->sh;
        ozone->shpool = old->shpool;
        return NGX_OK;
    }

    ozone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ozone->sh = ozone->shpool->data;
        return NGX_OK;
    }

    ozone->sh = ngx_slab_calloc(ozone->shpool, sizeof(ngx_http_osago_shctx_t));
    if (ozone->sh == NULL) {
        return NGX_ERROR;
    }

    ozone->shpool->data = ozone->sh;

    ngx_rbtree_init(&ozone->sh->rbtree, &ozone->sh->sentinel,
                    ngx_http_osago_zone_rbtree_insert);
    ngx_queue_init(&ozone->sh->partners);

    ngx_http_osago_zone_keys_init(ozone, shm_zone->shm.size);

    ozone->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_http_osago_shctx_t *
ngx_http_osago_zone_ctx(ngx_http_osago_main_conf_t *omcf)
{
    ngx_http_osago_zone_t  *ozone = omcf->shm_zone->data;

    return ozone->sh;
}


/* Finds or creates the partner's node; NULL when the zone is full. */
ngx_http_osago_shm_partner_t *
ngx_http_osago_zone_partner(ngx_http_osago_main_conf_t *omcf, u_char *name,
    size_t len)
{
    uint32_t                       hash;
    ngx_int_t                      rc;
    ngx_rbtree_node_t             *node, *sentinel;
    ngx_http_osago_zone_t         *ozone = omcf->shm_zone->data;
    ngx_http_osago_shm_partner_t  *sp;

    hash = ngx_crc32_short(name, len);

    ngx_shmtx_lock(&ozone->shpool->mutex);

    node = ozone->sh->rbtree.root;
    sentinel = ozone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        sp = (ngx_http_osago_shm_partner_t *) node;

        rc = ngx_memn2cmp(name, sp->name, len, sp->name_len);

        if (rc == 0) {
            ngx_shmtx_unlock(&ozone->shpool->mutex);
            return sp;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    sp = ngx_slab_calloc_locked(ozone->shpool,
                                sizeof(ngx_http_osago_shm_partner_t));

    if (sp) {
        sp->node.key = hash;
        sp->name_len = len;
        ngx_memcpy(sp->name, name, len);

        ngx_rbtree_insert(&ozone->sh->rbtree, &sp->node);
        ngx_queue_insert_tail(&ozone->sh->partners, &sp->queue);
    }

    ngx_shmtx_unlock(&ozone->shpool->mutex);

    return sp;
}


static void
ngx_http_osago_zone_key_words(u_char *digest, uint64_t *w)
{
    ngx_memcpy(w, digest, 2 * sizeof(uint64_t));
}


/* Whether the key named a partner when Redis last said (any worker). */
ngx_uint_t
ngx_http_osago_zone_key_known(ngx_http_osago_main_conf_t *omcf,
    u_char *digest)
{
    uint64_t                 w[2];
    ngx_uint_t               i, slot;
    volatile uint64_t       *keys;
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(omcf);

    keys = sh->known_keys;
    ngx_http_osago_zone_key_words(digest, w);

    if (keys == NULL || (w[0] == 0 && w[1] == 0)) {
        return 0;
    }

    for (i = 0; i < NGX_HTTP_OSAGO_KEY_PROBES; i++) {
        slot = (w[0] + i) & sh->known_mask;

        if (keys[2 * slot] == w[0] && keys[2 * slot + 1] == w[1]) {
            return 1;
        }
    }

    return 0;
}


/*
 * Records what Redis said of a key: one that named a partner is kept (in
 * the first free slot of its probe range, or over the first slot when none
 * is free), one that did not is dropped.  Lookups probe the whole range, so
 * a dropped key leaves no hole to stop at.
 */
void
ngx_http_osago_zone_key_learn(ngx_http_osago_main_conf_t *omcf,
    u_char *digest, ngx_uint_t names_partner)
{
    uint64_t                 w[2];
    ngx_uint_t               i, slot, target, free_slot;
    volatile uint64_t       *keys;
    ngx_http_osago_zone_t   *ozone = omcf->shm_zone->data;
    ngx_http_osago_shctx_t  *sh = ozone->sh;

    keys = sh->known_keys;
    ngx_http_osago_zone_key_words(digest, w);

    if (keys == NULL || (w[0] == 0 && w[1] == 0)) {
        return;
    }

    target = w[0] & sh->known_mask;
    free_slot = NGX_CONF_UNSET_UINT;

    ngx_shmtx_lock(&ozone->shpool->mutex);

    for (i = 0; i < NGX_HTTP_OSAGO_KEY_PROBES; i++) {
        slot = (w[0] + i) & sh->known_mask;

        if (keys[2 * slot] == w[0] && keys[2 * slot + 1] == w[1]) {
            if (!names_partner) {
                keys[2 * slot] = 0;
                keys[2 * slot + 1] = 0;
            }

            ngx_shmtx_unlock(&ozone->shpool->mutex);
            return;
        }

        if (free_slot == NGX_CONF_UNSET_UINT
            && keys[2 * slot] == 0 && keys[2 * slot + 1] == 0)
        {
            free_slot = slot;
        }
    }

    if (names_partner) {
        if (free_slot != NGX_CONF_UNSET_UINT) {
            target = free_slot;
        }

        keys[2 * target] = w[0];
        keys[2 * target + 1] = w[1];
    }

    ngx_shmtx_unlock(&ozone->shpool->mutex);
}


static uint64_t
ngx_http_osago_zone_now_us(void)
{
    ngx_time_t  *tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000000 + (uint64_t) tp->msec * 1000;
}


/*
 * The same GCRA as the Redis script, for this instance only, used while
 * Redis is unreachable.  Returns NGX_OK when admitted, NGX_BUSY when not.
 */
ngx_int_t
ngx_http_osago_zone_local_gcra(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_shm_partner_t *sp, ngx_uint_t rate_milli, ngx_uint_t burst,
    uint64_t *remaining, uint64_t *retry_us, uint64_t *reset_us)
{
    uint64_t                now, tat, interval, tolerance, new_tat;
    ngx_int_t               rc;
    ngx_http_osago_zone_t  *ozone = omcf->shm_zone->data;

    now = ngx_http_osago_zone_now_us();
    interval = 1000000000ULL / rate_milli;
    tolerance = interval * burst;

    ngx_shmtx_lock(&ozone->shpool->mutex);

    tat = ngx_max(sp->local_tat, now);
    new_tat = tat + interval;

    if (new_tat > now + tolerance) {
        *remaining = 0;
        *retry_us = new_tat - tolerance - now;
        *reset_us = tat - now;
        rc = NGX_BUSY;

    } else {
        sp->local_tat = new_tat;
        *remaining = (now + tolerance - new_tat) / interval;
        *retry_us = 0;
        *reset_us = new_tat - now;
        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&ozone->shpool->mutex);

    return rc;
}
