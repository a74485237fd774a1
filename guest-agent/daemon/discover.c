/* SPDX-License-Identifier: MIT */
/*
 * discover.c - finding the region: libpci lists the PCI functions, the
 * agent keeps the ivshmem-plain ones (vendor 0x1af4, device 0x1110) and
 * looks at BAR 2 through sysfs (<sysfs>/bus/pci/devices/<bdf>/resource2,
 * which can only be mmapped: read() gives EIO) for the protocol's magic.
 *
 * libpci runs its sysfs method on <sysfs>/bus/pci (never port I/O: a
 * machine without sysfs has no device for us), or its dump method on an
 * `lspci -x` dump (--pci-dump, for tests: the resource files then come
 * from a fake <sysfs> tree). BAR 2's size is libpci's when it knows it
 * (sysfs), else the resource file's (a dump has only config space).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pci/pci.h>

#include "agent.h"

/* libpci's error callback must not return: it jumps back here. */
static jmp_buf pci_jmp;
static char pci_msg[256];

static void __attribute__((noreturn, format(printf, 1, 2))) pci_error(char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(pci_msg, sizeof(pci_msg), fmt, ap);
	va_end(ap);
	longjmp(pci_jmp, 1);
}

static void __attribute__((format(printf, 1, 2))) pci_warning(char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_debug("libpci: %s", msg);
}

static void __attribute__((format(printf, 1, 2))) pci_debug(char *fmt, ...)
{
	(void)fmt;
}

/* Look at a candidate's BAR 2: does it hold a region, which one? */
static void inspect(struct pci_candidate *c)
{
	struct region r;
	struct stat st;
	char why[300];
	void *base;
	int fd;

	fd = open(c->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(c->note, sizeof(c->note), "cannot open %s: %s", c->path, strerror(errno));
		return;
	}
	if (fstat(fd, &st) == 0 && st.st_size > 0 && (!c->bar_size || (uint64_t)st.st_size < c->bar_size))
		c->bar_size = (uint64_t)st.st_size;
	if (c->bar_size < DIRTY_PROTO_HEADER_SIZE || c->bar_size > (1ull << 48)) {
		snprintf(c->note, sizeof(c->note), "BAR 2 of %llu bytes cannot hold a region",
			 (unsigned long long)c->bar_size);
		close(fd);
		return;
	}
	base = mmap(NULL, (size_t)c->bar_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED) {
		snprintf(c->note, sizeof(c->note), "cannot map BAR 2 (%s): %s", c->path, strerror(errno));
		return;
	}
	memset(&r, 0, sizeof(r));
	if (region_validate(&r, base, c->bar_size, why, sizeof(why)) == 0) {
		c->libdirty = true;
		snprintf(c->note, sizeof(c->note), "libdirty region v%u.%u: %llu pages of %llu bytes at %#llx",
			 r.host_major, r.host_minor, (unsigned long long)r.npages,
			 1ull << r.page_shift, (unsigned long long)r.gpa_base);
	} else if (__atomic_load_n((const uint64_t *)base, __ATOMIC_ACQUIRE) == DIRTY_PROTO_MAGIC) {
		/* The magic is there but the rest is refused: still a region. */
		c->libdirty = true;
		snprintf(c->note, sizeof(c->note), "libdirty magic, but refused: %s", why);
	} else {
		snprintf(c->note, sizeof(c->note), "no libdirty region in BAR 2");
	}
	munmap(base, (size_t)c->bar_size);
}

int discover_scan(const struct agent_opts *o, struct pci_candidate **out, char *why, size_t whylen)
{
	struct pci_candidate *volatile list = NULL;
	struct pci_access *a;
	char busdir[2048 + 16], devdir[2048 + 32];
	struct stat st;
	volatile int n = 0;

	*out = NULL;
	why[0] = 0;
	if (strlen(o->sysfs) > 2048) {
		snprintf(why, whylen, "--sysfs %.64s...: the path is too long", o->sysfs);
		return -1;
	}
	snprintf(busdir, sizeof(busdir), "%s/bus/pci", o->sysfs);
	snprintf(devdir, sizeof(devdir), "%s/devices", busdir);
	if (o->pci_dump) {
		if (access(o->pci_dump, R_OK) < 0) {
			snprintf(why, whylen, "cannot read the PCI dump %s: %s", o->pci_dump, strerror(errno));
			return -1;
		}
	} else if (stat(devdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(why, whylen, "no PCI bus under %s (%s: %s): is sysfs mounted?", o->sysfs, devdir,
			 strerror(errno ? errno : ENOTDIR));
		return 0;
	}
	a = pci_alloc();
	if (!a) {
		snprintf(why, whylen, "libpci: out of memory");
		return -1;
	}
	a->error = pci_error;
	a->warning = pci_warning;
	a->debug = pci_debug;
	if (setjmp(pci_jmp)) {
		snprintf(why, whylen, "libpci (%s method): %s", o->pci_dump ? "dump" : "sysfs", pci_msg);
		free(list);
		pci_cleanup(a);
		return -1;
	}
	if (o->pci_dump) {
		a->method = PCI_ACCESS_DUMP;
		pci_set_param(a, "dump.name", (char *)o->pci_dump);
	} else {
		/* Never PCI_ACCESS_AUTO: it falls back to port I/O without sysfs. */
		a->method = PCI_ACCESS_SYS_BUS_PCI;
		pci_set_param(a, "sysfs.path", busdir);
	}
	pci_init(a);
	pci_scan_bus(a);
	for (struct pci_dev *d = a->devices; d; d = d->next) {
		struct pci_candidate *c, *grown;

		pci_fill_info(d, PCI_FILL_IDENT | PCI_FILL_BASES | PCI_FILL_SIZES);
		if (d->vendor_id != IVSHMEM_VENDOR || d->device_id != IVSHMEM_DEVICE)
			continue;
		grown = realloc(list, (size_t)(n + 1) * sizeof(*list));
		if (!grown)
			pci_error("out of memory");
		list = grown;
		c = &list[n];
		memset(c, 0, sizeof(*c));
		snprintf(c->bdf, sizeof(c->bdf), "%04x:%02x:%02x.%x", (unsigned int)d->domain,
			 d->bus, d->dev, d->func);
		snprintf(c->path, sizeof(c->path), "%s/%s/resource%d", devdir, c->bdf, IVSHMEM_BAR);
		c->bar_addr = (uint64_t)(d->base_addr[IVSHMEM_BAR] & PCI_ADDR_MEM_MASK);
		c->bar_size = (uint64_t)d->size[IVSHMEM_BAR];
		c->decoding = pci_read_word(d, PCI_COMMAND) & PCI_COMMAND_MEMORY;
		n++;
	}
	pci_cleanup(a);
	/*
	 * Memory decoding off (no driver, firmware left it off): BAR 2 reads
	 * as all ones until the kernel enables the device, which writing 1 to
	 * its sysfs `enable` does (the agent keeps it enabled: it never
	 * writes 0). Never on a dump: there is no device behind it.
	 */
	for (int i = 0; i < n && !o->pci_dump; i++) {
		char path[2048 + 128];
		int fd;

		if (list[i].decoding)
			continue;
		snprintf(path, sizeof(path), "%s/%s/enable", devdir, list[i].bdf);
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "1", 1) != 1)
			log_warn("%s: memory decoding is off and cannot be enabled through %s: %s", list[i].bdf,
				 path, strerror(errno));
		else
			log_debug("%s: memory decoding was off: enabled through %s", list[i].bdf, path);
		if (fd >= 0)
			close(fd);
	}
	/* libpci lists in its own order; sort by address for stable output. */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && strcmp(list[j - 1].bdf, list[j].bdf) > 0; j--) {
			struct pci_candidate t = list[j];

			list[j] = list[j - 1];
			list[j - 1] = t;
		}
	for (int i = 0; i < n; i++)
		inspect(&list[i]);
	*out = list;
	return n;
}

/* "00:03.0" or "0000:00:03.0" (any case) into sysfs's "0000:00:03.0". */
static int normalize_bdf(const char *in, char *out, size_t len)
{
	unsigned int dom = 0, bus, dev, fn;
	char tail;

	if (sscanf(in, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &tail) != 4) {
		dom = 0;
		if (sscanf(in, "%x:%x.%x%c", &bus, &dev, &fn, &tail) != 3)
			return -1;
	}
	if (dom > 0xffff || bus > 0xff || dev > 0x1f || fn > 7)
		return -1;
	snprintf(out, len, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
	return 0;
}

static void print_candidates(const struct pci_candidate *c, int n)
{
	for (int i = 0; i < n; i++)
		log_info("  %s  BAR 2 at %#llx, %llu bytes: %s", c[i].bdf,
			 (unsigned long long)c[i].bar_addr, (unsigned long long)c[i].bar_size, c[i].note);
}

int discover_open(const struct agent_opts *o, struct region *r)
{
	struct pci_candidate *c;
	const struct pci_candidate *pick = NULL;
	char why[400], want[32];
	int n, nd = 0, err;

	if (o->device && normalize_bdf(o->device, want, sizeof(want))) {
		log_err("--device %s is not a PCI address (want DOMAIN:BUS:DEV.FN, e.g. 0000:00:03.0, or BUS:DEV.FN)",
			o->device);
		return AGENT_EXIT_USAGE;
	}
	n = discover_scan(o, &c, why, sizeof(why));
	if (n < 0) {
		log_err("PCI discovery failed: %s", why);
		return AGENT_EXIT_FAIL;
	}
	if (n == 0) {
		log_err("no ivshmem-plain device (PCI %04x:%04x) found%s%s; the VM needs "
			"-device ivshmem-plain,memdev=M with -object memory-backend-file,id=M,share=on,mem-path=<the host's region file>"
			" (or use --region FILE)", IVSHMEM_VENDOR, IVSHMEM_DEVICE,
			why[0] && !o->pci_dump ? ": " : "", why[0] && !o->pci_dump ? why : "");
		free(c);
		return AGENT_EXIT_NODEV;
	}
	for (int i = 0; i < n; i++) {
		log_debug("found ivshmem-plain %s: BAR 2 at %#llx, %llu bytes (%s): %s", c[i].bdf,
			  (unsigned long long)c[i].bar_addr, (unsigned long long)c[i].bar_size,
			  c[i].path, c[i].note);
		if (o->device ? !strcmp(c[i].bdf, want) : c[i].libdirty) {
			pick = &c[i];
			nd++;
		}
	}
	if (o->device && !pick) {
		log_err("--device %s: no ivshmem-plain device (PCI %04x:%04x) there; these are:", want,
			IVSHMEM_VENDOR, IVSHMEM_DEVICE);
		print_candidates(c, n);
		free(c);
		return AGENT_EXIT_NODEV;
	}
	if (!o->device && nd == 0) {
		log_err("none of the %d ivshmem-plain device(s) holds a libdirty region:", n);
		print_candidates(c, n);
		log_err("the host creates the region (dirty_gp_create) and QEMU exposes its file as the device's BAR 2");
		free(c);
		return AGENT_EXIT_NODEV;
	}
	if (nd > 1) {
		log_err("%d ivshmem-plain devices hold a libdirty region; choose one with --device BDF:", nd);
		for (int i = 0; i < n; i++)
			if (c[i].libdirty)
				print_candidates(&c[i], 1);
		free(c);
		return AGENT_EXIT_USAGE;
	}
	if (!pick->libdirty) {
		log_err("--device %s: %s", pick->bdf, pick->note);
		free(c);
		return AGENT_EXIT_NODEV;
	}
	err = region_open(r, pick->path, pick->bar_size, why, sizeof(why));
	if (err) {
		log_err("%s (PCI %s BAR 2): %s", pick->path, pick->bdf, why);
		free(c);
		return AGENT_EXIT_FAIL;
	}
	snprintf(r->bdf, sizeof(r->bdf), "%s", pick->bdf);
	snprintf(r->name, sizeof(r->name), "%s", pick->bdf);
	snprintf(r->desc, sizeof(r->desc), "PCI %s BAR 2", pick->bdf);
	r->bar_addr = pick->bar_addr;
	free(c);
	return AGENT_EXIT_OK;
}

int discover_list(const struct agent_opts *o, bool json)
{
	struct pci_candidate *c;
	char why[400];
	int n = discover_scan(o, &c, why, sizeof(why));

	if (n < 0) {
		fprintf(stderr, "dirty-agent list: PCI discovery failed: %s\n", why);
		return AGENT_EXIT_FAIL;
	}
	if (json) {
		char mem[4096];
		struct sbuf b;

		printf("{\"devices\": [");
		for (int i = 0; i < n; i++) {
			sb_init(&b, mem, sizeof(mem));
			sb_printf(&b, "%s{\"bdf\": ", i ? ", " : "");
			sb_json_str(&b, c[i].bdf);
			sb_printf(&b, ", \"resource\": ");
			sb_json_str(&b, c[i].path);
			sb_printf(&b, ", \"bar2_addr\": %llu, \"bar2_size\": %llu, \"libdirty\": %s, \"note\": ",
				  (unsigned long long)c[i].bar_addr, (unsigned long long)c[i].bar_size,
				  c[i].libdirty ? "true" : "false");
			sb_json_str(&b, c[i].note);
			sb_printf(&b, "}");
			fputs(mem, stdout);
		}
		printf("]}\n");
	} else {
		if (n == 0)
			printf("no ivshmem-plain device (PCI %04x:%04x)%s%s\n", IVSHMEM_VENDOR, IVSHMEM_DEVICE,
			       why[0] && !o->pci_dump ? ": " : "", why[0] && !o->pci_dump ? why : "");
		for (int i = 0; i < n; i++)
			printf("%s  ivshmem-plain  BAR 2 at %#llx, %llu bytes  %s  (%s)\n", c[i].bdf,
			       (unsigned long long)c[i].bar_addr, (unsigned long long)c[i].bar_size,
			       c[i].note, c[i].path);
	}
	free(c);
	return n ? AGENT_EXIT_OK : AGENT_EXIT_NODEV;
}
