/* SPDX-License-Identifier: MIT */
/*
 * support/kvm/payload-atomic.c - the 8-byte atomics the payload's compiler
 * calls, as one lock cmpxchg8b primitive, linked into the payload image
 * (there is no libatomic in the guest). Touches only the words it is
 * handed.
 *
 * Why not let gcc inline them: on i386 gcc moves 64-bit atomics through x87
 * (fildll/fistpll) or SSE (movq), and this platform's KVM emulates every
 * guest memory access with an instruction emulator that has neither
 * (KVM_EXIT_INTERNAL_ERROR, emulation failure). So kvm.mk builds the payload
 * with -mno-80387 -mno-sse, gcc emits the libatomic calls below, and all of
 * them come down to cmpxchg8b, which KVM emulates. A locked cmpxchg8b is a
 * full barrier, so every memory order is honoured.
 *
 * Names are bound with asm labels: defining __atomic_*_8 directly in C
 * would clash with gcc's built-in declarations.
 */
#include <stdint.h>

typedef volatile uint64_t *p64;

/* Returns what *p held; stores desired only if that equalled expected. */
static inline uint64_t cas8(p64 p, uint64_t expected, uint64_t desired)
{
	uint64_t prev;

	__asm__ volatile("lock cmpxchg8b %1"
			 : "=A"(prev), "+m"(*p)
			 : "0"(expected), "b"((uint32_t)desired),
			   "c"((uint32_t)(desired >> 32))
			 : "memory", "cc");
	return prev;
}

/* A first guess for the RMW loops: two plain loads, checked by the cas. */
static inline uint64_t peek(p64 p)
{
	const volatile uint32_t *w = (const volatile uint32_t *)p;

	return w[0] | (uint64_t)w[1] << 32;
}

uint64_t payload_load8(const volatile void *p, int mo) __asm__("__atomic_load_8");
void payload_store8(volatile void *p, uint64_t v, int mo) __asm__("__atomic_store_8");
uint64_t payload_exchange8(volatile void *p, uint64_t v, int mo) __asm__("__atomic_exchange_8");
_Bool payload_cmpxchg8(volatile void *p, void *expected, uint64_t desired, _Bool weak,
		       int smo, int fmo) __asm__("__atomic_compare_exchange_8");
uint64_t payload_fetch_or8(volatile void *p, uint64_t v, int mo) __asm__("__atomic_fetch_or_8");
uint64_t payload_fetch_and8(volatile void *p, uint64_t v, int mo) __asm__("__atomic_fetch_and_8");
uint64_t payload_fetch_add8(volatile void *p, uint64_t v, int mo) __asm__("__atomic_fetch_add_8");

uint64_t payload_load8(const volatile void *p, int mo)
{
	(void)mo;
	/* Compare with 0, "store" 0: the value is unchanged either way. */
	return cas8((p64)(uintptr_t)p, 0, 0);
}

uint64_t payload_exchange8(volatile void *p, uint64_t v, int mo)
{
	uint64_t old = peek(p), seen;

	(void)mo;
	while ((seen = cas8(p, old, v)) != old)
		old = seen;
	return old;
}

void payload_store8(volatile void *p, uint64_t v, int mo)
{
	payload_exchange8(p, v, mo);
}

_Bool payload_cmpxchg8(volatile void *p, void *expected, uint64_t desired, _Bool weak,
		       int smo, int fmo)
{
	uint64_t *e = expected, seen = cas8(p, *e, desired);

	(void)weak, (void)smo, (void)fmo;
	if (seen == *e)
		return 1;
	*e = seen;
	return 0;
}

#define RMW(name, op)                                                   \
	uint64_t name(volatile void *p, uint64_t v, int mo)             \
	{                                                               \
		uint64_t old = peek(p), seen;                           \
                                                                        \
		(void)mo;                                               \
		while ((seen = cas8(p, old, old op v)) != old)          \
			old = seen;                                     \
		return old;                                             \
	}

RMW(payload_fetch_or8, |)
RMW(payload_fetch_and8, &)
RMW(payload_fetch_add8, +)
