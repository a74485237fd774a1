#!/usr/bin/env bash
# t_agent_badinput.sh - dirty-agent against bad clients (tests/agent/agent_bad.c):
# malformed messages, fds sent to it, a client of another uid, floods of
# messages and of connections, peers hanging up mid-exchange, a client dropped
# while alive (an orphan the handshake waits for), a client dying with a count
# word BUSY (repaired as pinned, not while another client is stopped). After
# each: the agent runs, a good client's pins stay, a new generation is
# acknowledged; at the end it exits 0 on SIGTERM.
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build="$top/$build" ;; esac
. "$top/tests/agent/common.sh"
agent_require "$build/tests/agent/agent_bad"
"$build/tests/agent/agent_bad" --agent "$agent" --dir "$tmp"
