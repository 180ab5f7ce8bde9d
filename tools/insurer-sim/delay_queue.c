/* A binary min-heap on the deadline, guarded by one mutex, served by one thread. */
#include "delay_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

#define DELAY_BATCH 256
/* Deadlines are served on 1 ms ticks: at thousands of answers a second, one wake-up resumes
 * every answer due in that millisecond instead of one wake-up (and one context switch of the
 * MHD thread) each. An answer is thus up to 1 ms late, never early. */
#define DELAY_TICK_NS 1000000ULL

uint64_t delay_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void delay_swap(struct delay_entry *a, struct delay_entry *b)
{
    struct delay_entry t = *a;

    *a = *b;
    *b = t;
}

static void delay_sift_up(struct delay_queue *q, size_t i)
{
    while (i > 0 && q->heap[(i - 1) / 2].due_ns > q->heap[i].due_ns) {
        delay_swap(&q->heap[(i - 1) / 2], &q->heap[i]);
        i = (i - 1) / 2;
    }
}

static void delay_sift_down(struct delay_queue *q, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;

        if (l < q->n && q->heap[l].due_ns < q->heap[m].due_ns)
            m = l;
        if (r < q->n && q->heap[r].due_ns < q->heap[m].due_ns)
            m = r;
        if (m == i)
            return;
        delay_swap(&q->heap[m], &q->heap[i]);
        i = m;
    }
}

static struct delay_entry delay_pop(struct delay_queue *q)
{
    struct delay_entry top = q->heap[0];

    q->heap[0] = q->heap[--q->n];
    delay_sift_down(q, 0);
    return top;
}

static uint64_t delay_tick(uint64_t ns)
{
    return (ns + DELAY_TICK_NS - 1) / DELAY_TICK_NS * DELAY_TICK_NS;
}

static void *delay_thread(void *arg)
{
    struct delay_queue *q = arg;
    struct MHD_Connection *batch[DELAY_BATCH];

    pthread_mutex_lock(&q->mu);
    while (!q->stopping) {
        uint64_t now = delay_now_ns();
        size_t nb = 0;

        if (q->n == 0) {
            q->wake_ns = 0;
            pthread_cond_wait(&q->cv, &q->mu);
            continue;
        }
        if (q->heap[0].due_ns > now) {
            q->wake_ns = delay_tick(q->heap[0].due_ns);
            struct timespec ts = { .tv_sec = (time_t)(q->wake_ns / 1000000000ULL),
                                   .tv_nsec = (long)(q->wake_ns % 1000000000ULL) };
            (void)pthread_cond_timedwait(&q->cv, &q->mu, &ts);
            continue;
        }
        while (q->n > 0 && q->heap[0].due_ns <= now && nb < DELAY_BATCH)
            batch[nb++] = delay_pop(q).conn;
        /* Resume outside the lock: MHD takes its own locks, and handlers push to this queue. */
        pthread_mutex_unlock(&q->mu);
        for (size_t i = 0; i < nb; i++)
            MHD_resume_connection(batch[i]);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

int delay_queue_start(struct delay_queue *q, size_t max)
{
    pthread_condattr_t ca;

    q->n = 0;
    q->max = max;
    q->cap = 1024;
    q->stopping = false;
    q->heap = malloc(q->cap * sizeof(*q->heap));
    if (q->heap == NULL)
        return -1;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->mu, NULL);
    if (pthread_create(&q->thread, NULL, delay_thread, q) != 0) {
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        free(q->heap);
        q->heap = NULL;
        return -1;
    }
    return 0;
}

bool delay_queue_push(struct delay_queue *q, uint64_t due_ns, struct MHD_Connection *conn)
{
    bool ok = false;

    pthread_mutex_lock(&q->mu);
    if (q->stopping || q->n >= q->max)
        goto out;
    if (q->n == q->cap) {
        size_t cap = q->cap * 2 > q->max ? q->max : q->cap * 2;
        struct delay_entry *h = realloc(q->heap, cap * sizeof(*h));

        if (h == NULL)
            goto out;
        q->heap = h;
        q->cap = cap;
    }
    q->heap[q->n] = (struct delay_entry){ .due_ns = due_ns, .conn = conn };
    delay_sift_up(q, q->n);
    q->n++;
    /* Only a deadline before the tick the thread sleeps until changes its sleep. */
    if (q->heap[0].conn == conn && (q->wake_ns == 0 || delay_tick(due_ns) < q->wake_ns))
        pthread_cond_signal(&q->cv);
    ok = true;
out:
    pthread_mutex_unlock(&q->mu);
    return ok;
}

void delay_queue_stop(struct delay_queue *q, void (*release)(struct MHD_Connection *, void *),
                      void *arg)
{
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL);
    /* The thread is gone and pushes are refused: the queue is ours, but the lock stays, since
     * the daemon's threads may still try to push until the daemon stops. */
    pthread_mutex_lock(&q->mu);
    for (size_t i = 0; release != NULL && i < q->n; i++)
        release(q->heap[i].conn, arg);
    q->n = 0;
    pthread_mutex_unlock(&q->mu);
}

void delay_queue_free(struct delay_queue *q)
{
    free(q->heap);
    q->heap = NULL;
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}
