/* SPDX-License-Identifier: MIT */
/*
 * vcpu_threads.c - the writer threads of vcpu_threads.h.
 */
#include <string.h>

#include "pacer.h"
#include "rng.h"
#include "vcpu_threads.h"

#define PAGE 4096ull

void vthreads_init(struct vthreads *s, const struct vthreads_config *cfg)
{
	memset(s, 0, sizeof(*s));
	s->cfg = *cfg;
	if (s->cfg.count > VTHREADS_MAX)
		s->cfg.count = VTHREADS_MAX;
	for (unsigned int i = 0; i < s->cfg.count; i++) {
		s->t[i].set = s;
		s->t[i].id = i;
		s->t[i].seed = cfg->seed ^ (0x5bd1e995ull * (i + 1));
	}
}

/*
 * Each write stores a fresh stamp into one random 64-byte line of a random
 * page: a page's content changes every time it is written, so a write the
 * migration missed shows in the destination's hashes. Relaxed atomics: the
 * migration copies these pages while they are written.
 */
static void *vthread_main(void *arg)
{
	struct vthread *v = arg;
	const struct vthreads_config *c = &v->set->cfg;
	struct pacer pc;

	pacer_init(&pc, c->rate);
	while (!worker_stopping(&v->w)) {
		uint64_t due = pacer_tick(&pc);

		for (uint64_t i = 0; i < due; i++) {
			uint64_t r = splitmix64(&v->seed);
			uint64_t *line = (uint64_t *)(c->ram + (c->first_page + r % c->pages) * PAGE +
						      ((r >> 40) % (PAGE / 64)) * 64);
			uint64_t stamp = (uint64_t)(v->id + 1) << 48 | ++v->stamp;

			for (unsigned int k = 0; k < 8; k++)
				__atomic_store_n(&line[k], stamp ^ k, __ATOMIC_RELAXED);
		}
		atomic_fetch_add_explicit(&v->set->writes, due, memory_order_relaxed);
	}
	return NULL;
}

int vthreads_start(struct vthreads *s)
{
	for (unsigned int i = 0; i < s->cfg.count; i++) {
		int err = worker_start(&s->t[i].w, vthread_main, &s->t[i]);

		if (err)
			return err;
	}
	return 0;
}

void vthreads_stop(struct vthreads *s)
{
	/* All asked first, so the threads wind down together. */
	for (unsigned int i = 0; i < s->cfg.count; i++)
		atomic_store_explicit(&s->t[i].w.stop, true, memory_order_relaxed);
	for (unsigned int i = 0; i < s->cfg.count; i++)
		worker_stop(&s->t[i].w);
}
