/*
 * Per-worker cache of partner contracts, keyed by the SHA-256 of the API
 * key.  Bounded (least recently used entries go first), so a flood of
 * random keys costs a fixed amount of memory; and a key that names no
 * contract (unknown, or not answered yet) only ever pushes out another such
 * key while there is one, so a flood cannot evict the real partners'
 * contracts either.
 *
 * Entries outlive their TTL on purpose: an expired contract is re-read from
 * Redis, but while Redis is down it is the "last known contract" the local
 * fallback enforces.
 */

#include "ngx_http_osago_module.h"


typedef struct {
    ngx_rbtree_node_t               node;
    ngx_queue_t                     lru;
    u_char                          digest[NGX_HTTP_OSAGO_DIGEST_LEN];
    ngx_http_osago_partner_t        partner;
} ngx_http_osago_partner_node_t;


struct ngx_http_osago_partner_cache_s {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     lru;        /* contracts: known, disabled */
    ngx_queue_t                     lru_other;  /* new and unknown keys */
    ngx_uint_t                      count;
    ngx_uint_t                      max;
    ngx_log_t                      *log;
};


static void
ngx_http_osago_partner_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t              **p;
    ngx_http_osago_partner_node_t   *pn, *pt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            pn = (ngx_http_osago_partner_node_t *) node;
            pt = (ngx_http_osago_partner_node_t *) temp;

            p = (ngx_memcmp(pn->digest, pt->digest,
                            NGX_HTTP_OSAGO_DIGEST_LEN) < 0)
                ? &temp->left : &temp->right;
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


static ngx_rbtree_key_t
ngx_http_osago_partner_hash(u_char *digest)
{
    ngx_rbtree_key_t  key;

    /* the digest is uniformly distributed: its first bytes are a hash */
    ngx_memcpy(&key, digest, sizeof(ngx_rbtree_key_t));

    return key;
}


ngx_http_osago_partner_cache_t *
ngx_http_osago_partner_cache_create(ngx_uint_t size, ngx_log_t *log)
{
    ngx_http_osago_partner_cache_t  *cache;

    cache = ngx_calloc(sizeof(ngx_http_osago_partner_cache_t), log);
    if (cache == NULL) {
        return NULL;
    }

    ngx_rbtree_init(&cache->rbtree, &cache->sentinel,
                    ngx_http_osago_partner_rbtree_insert);
    ngx_queue_init(&cache->lru);
    ngx_queue_init(&cache->lru_other);

    cache->max = size;
    cache->log = log;

    return cache;
}


void
ngx_http_osago_partner_cache_destroy(ngx_http_osago_partner_cache_t *cache)
{
    ngx_uint_t                      i;
    ngx_queue_t                    *q, *lists[2];
    ngx_http_osago_partner_node_t  *pn;

    lists[0] = &cache->lru;
    lists[1] = &cache->lru_other;

    for (i = 0; i < 2; i++) {
        while (!ngx_queue_empty(lists[i])) {
            q = ngx_queue_head(lists[i]);
            ngx_queue_remove(q);
            pn = ngx_queue_data(q, ngx_http_osago_partner_node_t, lru);
            ngx_free(pn);
        }
    }

    ngx_free(cache);
}


static ngx_http_osago_partner_node_t *
ngx_http_osago_partner_find(ngx_http_osago_partner_cache_t *cache,
    u_char *digest)
{
    ngx_int_t                       rc;
    ngx_rbtree_key_t                key;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_http_osago_partner_node_t  *pn;

    key = ngx_http_osago_partner_hash(digest);

    node = cache->rbtree.root;
    sentinel = cache->rbtree.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        pn = (ngx_http_osago_partner_node_t *) node;

        rc = ngx_memcmp(digest, pn->digest, NGX_HTTP_OSAGO_DIGEST_LEN);

        if (rc == 0) {
            return pn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/* Most recently used, in the list of its kind. */
static void
ngx_http_osago_partner_touch(ngx_http_osago_partner_cache_t *cache,
    ngx_http_osago_partner_node_t *pn)
{
    ngx_uint_t  contract;

    contract = pn->partner.state == NGX_HTTP_OSAGO_PARTNER_KNOWN
               || pn->partner.state == NGX_HTTP_OSAGO_PARTNER_DISABLED;

    ngx_queue_remove(&pn->lru);
    ngx_queue_insert_head(contract ? &cache->lru : &cache->lru_other,
                          &pn->lru);
}


ngx_http_osago_partner_t *
ngx_http_osago_partner_lookup(ngx_http_osago_partner_cache_t *cache,
    u_char *digest)
{
    ngx_http_osago_partner_node_t  *pn;

    pn = ngx_http_osago_partner_find(cache, digest);
    if (pn == NULL) {
        return NULL;
    }

    ngx_http_osago_partner_touch(cache, pn);

    return &pn->partner;
}


/* After its state changed: the entry joins the list of its kind. */
void
ngx_http_osago_partner_settle(ngx_http_osago_partner_cache_t *cache,
    ngx_http_osago_partner_t *partner)
{
    ngx_http_osago_partner_touch(cache, (ngx_http_osago_partner_node_t *)
        ((u_char *) partner - offsetof(ngx_http_osago_partner_node_t,
                                       partner)));
}


/* Returns the entry for digest, created empty if there was none. */
ngx_http_osago_partner_t *
ngx_http_osago_partner_store(ngx_http_osago_partner_cache_t *cache,
    u_char *digest)
{
    ngx_queue_t                    *q;
    ngx_http_osago_partner_node_t  *pn;

    pn = ngx_http_osago_partner_find(cache, digest);

    if (pn) {
        ngx_http_osago_partner_touch(cache, pn);
        return &pn->partner;
    }

    if (cache->count >= cache->max) {
        q = ngx_queue_empty(&cache->lru_other)
            ? ngx_queue_last(&cache->lru) : ngx_queue_last(&cache->lru_other);
        ngx_queue_remove(q);
        pn = ngx_queue_data(q, ngx_http_osago_partner_node_t, lru);
        ngx_rbtree_delete(&cache->rbtree, &pn->node);
        cache->count--;

    } else {
        pn = ngx_alloc(sizeof(ngx_http_osago_partner_node_t), cache->log);
        if (pn == NULL) {
            return NULL;
        }
    }

    ngx_memzero(pn, sizeof(ngx_http_osago_partner_node_t));
    ngx_memcpy(pn->digest, digest, NGX_HTTP_OSAGO_DIGEST_LEN);
    pn->node.key = ngx_http_osago_partner_hash(digest);

    ngx_rbtree_insert(&cache->rbtree, &pn->node);
    ngx_queue_insert_head(&cache->lru_other, &pn->lru);    /* state: new */
    cache->count++;

    return &pn->partner;
}
