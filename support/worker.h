/* SPDX-License-Identifier: MIT */
/*
 * support/worker.h - a thread that runs until asked to stop: start it,
 * poll worker_stopping() in its loop, stop it (which joins). Start and
 * stop come from one controlling thread. Header-only.
 */
#ifndef LIBDIRTY_SUPPORT_WORKER_H
#define LIBDIRTY_SUPPORT_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

struct worker {
	pthread_t thread;
	_Atomic bool stop;	/* relaxed: the join orders everything after it */
	bool running;		/* the controlling thread's own */
};

/* 0 (also when already running) or -errno. */
static inline int worker_start(struct worker *w, void *(*fn)(void *), void *arg)
{
	int err;

	if (w->running)
		return 0;
	atomic_store_explicit(&w->stop, false, memory_order_relaxed);
	if ((err = pthread_create(&w->thread, NULL, fn, arg)))
		return -err;
	w->running = true;
	return 0;
}

static inline bool worker_stopping(struct worker *w)
{
	return atomic_load_explicit(&w->stop, memory_order_relaxed);
}

/* Returns once the thread has left (at once if it is not running). */
static inline void worker_stop(struct worker *w)
{
	if (!w->running)
		return;
	atomic_store_explicit(&w->stop, true, memory_order_relaxed);
	pthread_join(w->thread, NULL);
	w->running = false;
}

#endif /* LIBDIRTY_SUPPORT_WORKER_H */
