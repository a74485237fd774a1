# tests/agent/common.sh - sourced by tests/t_agent*.sh: the daemon's path,
# a temporary directory removed at exit, and the skips (exit 77, naming
# what is missing). Expects $build (absolute).
agent="$build/bin/dirty-agent"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f /dev/shm/libdirty-agent-*-$$ 2>/dev/null' EXIT

# agent_require HELPER...: the daemon and these helpers must be built; the
# machine must offer what the daemon needs.
agent_require() {
  local b
  for b in "$agent" "$@"; do
    [ -x "$b" ] || { echo "FAIL: $b missing: run make (make check builds it)"; exit 1; }
  done
  probe="/dev/shm/libdirty-agent-probe-$$"
  if ! { [ -d /dev/shm ] && : 2>/dev/null >"$probe"; }; then
    echo "SKIP: /dev/shm is not writable (the host library's region file goes there)"; exit 77
  fi
  rm -f "$probe"
  if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = 2 ]; then
    echo "SKIP: io_uring is disabled (sysctl kernel.io_uring_disabled = 2); dirty-agent runs on io_uring"; exit 77
  fi
}
