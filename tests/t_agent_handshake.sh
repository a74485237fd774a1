#!/usr/bin/env bash
# t_agent_handshake.sh - dirty-agent's tracking handshake on this host
# (tests/agent/agent_e2e.c handshake): a slow client (an RCU reader section
# held open) delays the acknowledgement - the host sees WAITING, the agent
# names the client in its status and in guest.waiting_pid, then TRUSTED; a
# silent client (SIGSTOP) makes the host's health reason name its pid and
# nothing is acknowledged early; once it is killed it is no longer waited for.
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build="$top/$build" ;; esac
. "$top/tests/agent/common.sh"
agent_require "$build/tests/agent/agent_e2e"
"$build/tests/agent/agent_e2e" --agent "$agent" --dir "$tmp" handshake
