/* SPDX-License-Identifier: MIT */
/*
 * notify.c - systemd's readiness protocol without libsystemd: one
 * datagram with "READY=1" (and STATUS=, MAINPID=) to the AF_UNIX socket
 * named by $NOTIFY_SOCKET, an abstract address when it starts with '@'.
 * Nothing happens without $NOTIFY_SOCKET (not started by systemd).
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"

int notify_systemd(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n;
	int fd, err = 0;

	if (!path || !*path)
		return 0;
	n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
		log_warn("NOTIFY_SOCKET=%s is not a socket path or an @abstract name; systemd is not told", path);
		return -EINVAL;
	}
	memcpy(sa.sun_path, path, n);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = 0;	/* abstract: no trailing NUL counted */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		err = -errno;
	else if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
			(socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	if (err)
		log_warn("cannot notify systemd at %s: %s", path, strerror(-err));
	else
		log_debug("told systemd: %.*s", (int)strcspn(state, "\n"), state);
	return err;
}
