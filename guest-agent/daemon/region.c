/* SPDX-License-Identifier: MIT */
/*
 * region.c - the region the agent serves: a file the host library created
 * (--region, tests on the host) or an ivshmem BAR's sysfs resource file.
 * Mapped whole (a BAR is a power of two, larger than the protocol
 * region); validated exactly as the guest library validates it, from the
 * layout the agent computes itself for the header's page count: a header
 * that disagrees is refused, never followed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

static int bad(int err, char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int bad(int err, char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return err;
}

int region_validate(struct region *r, void *base, uint64_t size, char *why, size_t whylen)
{
	const struct dirty_proto_header *h = base;
	uint64_t magic, gpa, npages, end;
	uint32_t hsize, shift;
	uint16_t major, minor;

	if (size < DIRTY_PROTO_HEADER_SIZE)
		return bad(-EINVAL, why, whylen, "%llu bytes is smaller than the protocol's 4096-byte header",
			   (unsigned long long)size);
	magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
	if (magic != DIRTY_PROTO_MAGIC)
		return bad(-EPROTO, why, whylen, "no libdirty region (magic %#llx, want %#llx \"LIBDIRTY\"); "
			   "has the host attached its region (dirty_gp_create) to this device?",
			   (unsigned long long)magic, DIRTY_PROTO_MAGIC);
	major = h->major;
	minor = h->minor;
	if (major != DIRTY_PROTO_MAJOR)
		return bad(-EPROTONOSUPPORT, why, whylen, "the host speaks protocol v%u.%u, this agent v%u.%u: "
			   "install a dirty-agent of the host's release", major, minor,
			   DIRTY_PROTO_MAJOR, DIRTY_PROTO_MINOR);
	hsize = h->header_size;
	shift = h->page_shift;
	gpa = h->gpa_base;
	npages = h->npages;
	if (hsize != DIRTY_PROTO_HEADER_SIZE || shift < 12 || shift > 40)
		return bad(-EPROTO, why, whylen, "malformed region header (header_size %u, page_shift %u)",
			   hsize, shift);
	if (dirty_proto_layout(npages, &r->lay) || gpa & ((1ull << shift) - 1) ||
	    (npages << shift) >> shift != npages ||
	    __builtin_add_overflow(gpa, npages << shift, &end))
		return bad(-EPROTO, why, whylen, "the region covers an impossible range (base %#llx, %llu pages of 2^%u)",
			   (unsigned long long)gpa, (unsigned long long)npages, shift);
	if (h->dirty_off != r->lay.dirty_off || h->dirty_len != r->lay.dirty_len ||
	    h->summary_off != r->lay.summary_off || h->summary_len != r->lay.summary_len ||
	    h->pin_off != r->lay.pin_off || h->pin_len != r->lay.pin_len ||
	    h->region_size != r->lay.region_size)
		return bad(-EPROTO, why, whylen, "the region's bitmaps are not where protocol v1 puts them for %llu pages",
			   (unsigned long long)npages);
	if (r->lay.region_size > size)
		return bad(-EINVAL, why, whylen, "the region needs %llu bytes but only %llu are there",
			   (unsigned long long)r->lay.region_size, (unsigned long long)size);
	r->gpa_base = gpa;
	r->npages = npages;
	r->page_shift = shift;
	r->host_major = major;
	r->host_minor = minor;
	r->base = base;
	r->map_size = size;
	r->hdr = base;
	r->dirty = (uint64_t *)((uint8_t *)base + r->lay.dirty_off);
	r->summary = (uint64_t *)((uint8_t *)base + r->lay.summary_off);
	r->pin = (uint64_t *)((uint8_t *)base + r->lay.pin_off);
	return 0;
}

int region_open(struct region *r, const char *path, uint64_t size_hint, char *why, size_t whylen)
{
	struct stat st;
	uint64_t size;
	void *base;
	int fd, err;

	r->fd = -1;
	r->base = NULL;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return bad(-errno, why, whylen, "cannot open %s: %s%s", path, strerror(errno),
			   errno == EACCES ? " (the agent needs read-write access: run it as root)" : "");
	if (fstat(fd, &st) < 0) {
		err = -errno;
		close(fd);
		return bad(err, why, whylen, "cannot stat %s: %s", path, strerror(-err));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return bad(-EINVAL, why, whylen, "%s is not a file (a region is a /dev/shm file or a BAR's resource file)",
			   path);
	}
	/* A sysfs resource file's size is the BAR's; libpci's is the fallback. */
	size = st.st_size > 0 ? (uint64_t)st.st_size : size_hint;
	if (size < DIRTY_PROTO_HEADER_SIZE || size > (1ull << 48)) {
		close(fd);
		return bad(-EINVAL, why, whylen, "%s has %llu bytes: not a region (want at least its 4096-byte header)",
			   path, (unsigned long long)size);
	}
	base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		err = -errno;
		close(fd);
		return bad(err, why, whylen, "cannot map %llu bytes of %s: %s", (unsigned long long)size,
			   path, strerror(-err));
	}
	err = region_validate(r, base, size, why, whylen);
	if (err) {
		munmap(base, (size_t)size);
		close(fd);
		return err;
	}
	r->fd = fd;
	snprintf(r->path, sizeof(r->path), "%s", path);
	return 0;
}

void region_close(struct region *r)
{
	if (r->base)
		munmap(r->base, (size_t)r->map_size);
	if (r->fd >= 0)
		close(r->fd);
	r->base = NULL;
	r->fd = -1;
}

uint64_t region_pinned(const struct region *r)
{
	uint64_t n = 0, words = r->lay.dirty_words;

	for (uint64_t w = 0; w < words; w++)
		n += (uint64_t)__builtin_popcountll(__atomic_load_n(&r->pin[w], __ATOMIC_RELAXED));
	return n;
}
