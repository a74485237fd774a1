/* SPDX-License-Identifier: MIT */
/*
 * table.c - the region's shared pin table (guest-agent/pintable.h): one
 * file per region in the state directory, pins-<device or file name>.
 *
 * Created with every field but the magic, the magic last (release), under
 * a temporary name renamed into place, so no client ever maps half a
 * table. A table that is already there and names the same region is
 * ADOPTED: an agent restarted while clients held pages keeps their
 * references, so nothing is unpinned because the agent went away. One that
 * names another region (a different VM, a resized one) is replaced.
 *
 * Outside the BUSY repair the agent never writes a count word: clients
 * take and drop references themselves (guest.c's pin_get/pin_put).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

/* mkdir -p, 0755: clients must reach the socket inside. */
int agent_mkdirs(const char *dir)
{
	char p[PATH_MAX];
	size_t n = strlen(dir);

	if (n == 0 || n >= sizeof(p))
		return -ENAMETOOLONG;
	memcpy(p, dir, n + 1);
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(p, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Does the table at hdr (bytes long) belong to region r? Else say why. */
static bool matches(const struct pintable_header *h, uint64_t bytes, const struct region *r,
		    char *why, size_t whylen)
{
	uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);

	if (magic != PINTABLE_MAGIC) {
		snprintf(why, whylen, "no table magic (%#llx): a creation that did not finish",
			 (unsigned long long)magic);
		return false;
	}
	if (h->version != PINTABLE_VERSION || h->header_size != PINTABLE_HEADER_SIZE ||
	    h->nslots != PINTABLE_SLOTS) {
		snprintf(why, whylen, "version %u, %u-byte header, %u slots (this agent: %u, %u, %u)",
			 h->version, h->header_size, h->nslots, PINTABLE_VERSION,
			 PINTABLE_HEADER_SIZE, PINTABLE_SLOTS);
		return false;
	}
	if (h->npages != r->npages || h->gpa_base != r->gpa_base || h->page_shift != r->page_shift ||
	    bytes != pintable_bytes(r->npages)) {
		snprintf(why, whylen, "it is for %llu pages of 2^%u at %#llx (%llu bytes); the region has %llu of 2^%u at %#llx",
			 (unsigned long long)h->npages, h->page_shift, (unsigned long long)h->gpa_base,
			 (unsigned long long)bytes, (unsigned long long)r->npages, r->page_shift,
			 (unsigned long long)r->gpa_base);
		return false;
	}
	return true;
}

static int map_table(struct table *t, int fd, uint64_t bytes)
{
	void *p = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	if (p == MAP_FAILED)
		return -errno;
	t->fd = fd;
	t->hdr = p;
	t->count = (_Atomic uint32_t *)((uint8_t *)p + PINTABLE_HEADER_SIZE);
	t->bytes = bytes;
	return 0;
}

static int adopt(struct table *t, const struct region *r)
{
	struct stat st;
	char why[300];
	int fd, err;

	fd = open(t->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < PINTABLE_HEADER_SIZE) {
		log_warn("pin table %s is not a table file; replacing it", t->path);
		close(fd);
		return -EINVAL;
	}
	if ((err = map_table(t, fd, (uint64_t)st.st_size))) {
		log_warn("cannot map pin table %s (%s); replacing it", t->path, strerror(-err));
		close(fd);
		return err;
	}
	if (!matches(t->hdr, t->bytes, r, why, sizeof(why))) {
		log_warn("pin table %s does not belong to this region (%s); replacing it", t->path, why);
		munmap(t->hdr, (size_t)t->bytes);
		close(fd);
		t->hdr = NULL;
		return -EINVAL;
	}
	t->adopted = true;
	/*
	 * A counted page owned by the table's clients has its pin bit set,
	 * always (set before the count is published, cleared only under
	 * BUSY). One found clear (a region rewritten under us) is set again:
	 * pinning more than needed is safe, the other way round is not.
	 */
	for (uint64_t p = 0; p < r->npages; p++) {
		uint32_t v = atomic_load_explicit(&t->count[p], memory_order_acquire);

		if (!(v & PIN_BUSY) && (v & PIN_COUNT) && (v & PIN_OWNED) &&
		    !(__atomic_load_n(&r->pin[p >> 6], __ATOMIC_ACQUIRE) & (1ull << (p & 63))) &&
		    !dirty_proto_pin(r->pin, p))
			t->repinned++;
	}
	return 0;
}

static int create(struct table *t, const struct region *r)
{
	char tmp[PATH_MAX + 32];
	struct pintable_header *h;
	int fd, err;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", t->path, (int)getpid());
	unlink(tmp);
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	err = ftruncate(fd, (off_t)pintable_bytes(r->npages)) < 0 ? -errno :
	      map_table(t, fd, pintable_bytes(r->npages));
	if (err) {
		close(fd);
		unlink(tmp);
		return err;
	}
	h = t->hdr;
	h->version = PINTABLE_VERSION;
	h->header_size = PINTABLE_HEADER_SIZE;
	h->npages = r->npages;
	h->gpa_base = r->gpa_base;
	h->page_shift = r->page_shift;
	h->nslots = PINTABLE_SLOTS;
	/* Release: a client that reads the magic (acquire) reads the rest. */
	__atomic_store_n(&h->magic, PINTABLE_MAGIC, __ATOMIC_RELEASE);
	if (rename(tmp, t->path) < 0) {
		err = -errno;
		munmap(t->hdr, (size_t)t->bytes);
		t->hdr = NULL;
		close(fd);
		unlink(tmp);
		return err;
	}
	/* Pins with no count here were left by a table that is gone: they stay. */
	t->stray_pins = region_pinned(r);
	return 0;
}

int table_open(struct table *t, const struct region *r, const char *state_dir)
{
	char name[PATH_MAX];
	size_t i;
	int err;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	if ((err = agent_mkdirs(state_dir))) {
		log_err("cannot create the state directory %s: %s", state_dir, strerror(-err));
		return err;
	}
	/* pins-<device or file name>, with nothing that makes it a path. */
	snprintf(name, sizeof(name), "%s", r->name);
	for (i = 0; name[i]; i++)
		if (name[i] == '/')
			name[i] = '_';
	if ((size_t)snprintf(t->path, sizeof(t->path), "%s/pins-%s", state_dir, name) >= sizeof(t->path)) {
		log_err("the pin table's path in %s is too long", state_dir);
		return -ENAMETOOLONG;
	}
	t->npages = r->npages;
	err = adopt(t, r);
	if (err == 0)
		return 0;
	if (err != -ENOENT)
		unlink(t->path);
	t->adopted = false;
	t->repinned = 0;
	err = create(t, r);
	if (err)
		log_err("cannot create the pin table %s: %s", t->path, strerror(-err));
	return err;
}

void table_close(struct table *t)
{
	if (t->hdr)
		munmap(t->hdr, (size_t)t->bytes);
	if (t->fd >= 0)
		close(t->fd);
	t->hdr = NULL;
	t->fd = -1;
}

uint64_t table_scan_busy(const struct table *t, uint64_t *idx, uint64_t max)
{
	uint64_t n = 0, npages = t->npages;

	for (uint64_t p = 0; p < npages; p++)
		if (atomic_load_explicit(&t->count[p], memory_order_relaxed) & PIN_BUSY) {
			if (n < max)
				idx[n] = p;
			n++;
		}
	return n;
}

bool table_repair(struct table *t, const struct region *r, uint64_t p, uint32_t seen)
{
	uint32_t want = seen;

	/* The pin bit first: whoever sees count 1 | OWNED finds it set. */
	dirty_proto_pin(r->pin, p);
	return atomic_compare_exchange_strong_explicit(&t->count[p], &want, 1u | PIN_OWNED,
						       memory_order_release, memory_order_relaxed);
}
