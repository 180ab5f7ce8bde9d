/* One JSON object per line on stderr: {"ts","level","role","event","trace_id",...,"msg"}. */
#ifndef OSAGO_WORKER_LOG_H
#define OSAGO_WORKER_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

int  log_set_level(const char *name);     /* -1 on an unknown name */

/*
 * trace: a W3C traceparent or a bare trace id, or NULL; its trace id is logged.
 * event: a short machine-readable name ("task_retry"); fmt: the human message.
 * Thread-safe (one write(2) per line).
 */
void wlog(enum log_level level, const char *role, const char *trace, const char *event,
          const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#endif
