/* vm-time.h - the clock of the VM tier's programs, guest and host halves:
 * support/clock.h's monotonic now_ms()/now_s(), and sleep_ms, which sleeps
 * the whole time even when a signal interrupts it. Header-only: the host
 * halves are built apart from the guest programs.
 */
#ifndef LIBDIRTY_TESTS_VM_TIME_H
#define LIBDIRTY_TESTS_VM_TIME_H

#include <errno.h>
#include <time.h>

#include "clock.h"

static inline void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

#endif
