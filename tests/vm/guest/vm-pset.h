/* vm-pset.h - sets of guest pages for the guest programs that play the
 * VMM with libdirty's view (vm_type1.c, vm_devlog.c): what the view hands
 * out, drained, compared page by page with what a test expects.
 */
#ifndef LIBDIRTY_TESTS_VM_PSET_H
#define LIBDIRTY_TESTS_VM_PSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libdirty.h>

/* Guest-physical page addresses (4 KiB pages); sorted once pset_sort ran. */
struct pset {
	uint64_t *p;
	size_t n, c;
};

void pset_free(struct pset *s);
/* Every page [gpa, gpa + len) touches; -ENOMEM. */
int pset_add(struct pset *s, uint64_t gpa, uint64_t len);
/* Sort; repeats are kept so a page handed out twice shows. */
void pset_sort(struct pset *s);
/* On a sorted set. */
bool pset_has(const struct pset *s, uint64_t gpa);
/* "0x40000000+64p 0x40200000+16p": runs of pages, at most max runs. */
void pset_fmt(const uint64_t *p, size_t n, char *buf, size_t len, unsigned max);

/* Claim everything the view holds into got (each page once per mark), sorted. */
int pset_drain(struct dirty_view *v, struct pset *got);

/*
 * Drain the view and compare it page by page with want (GPA ranges;
 * repeats allowed). One check line: the first `shown` runs of the pages
 * when they match, else the pages missing and those that should not be
 * there. Returns the number of pages drained; *gotp (if set) keeps them.
 */
uint64_t pset_expect(struct dirty_view *v, const char *what, const struct dirty_range *want,
		     size_t nwant, struct pset *gotp, unsigned shown);

#endif
