#!/usr/bin/env bash
# t_agent_dma.sh - dirty-agent with DMA on this host (tests/agent/agent_e2e.c):
#   two-clients            two client processes (dirty_guest_connect) map the
#                          same pages: the pin bit stays set until the LAST
#                          unmap; a device write between the first and the last
#                          unmap reaches the destination (page-by-page compare
#                          after a migration: rounds of claims, then final);
#   two-clients --no-agent the control: the same with each process opening the
#                          region alone - the first unmap clears the pin and the
#                          write is lost (the test can fail);
#   killed                 a client SIGKILLed while mapped, the device still
#                          writing: 0 pages lost, its pins stay, `dirty-agent
#                          status --json` reports its pid and leaked references;
#   restart                the agent restarted while a client holds a page: the
#                          new agent adopts the pin table and waits for the
#                          orphan; the page stays pinned until the last unmap.
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build="$top/$build" ;; esac
. "$top/tests/agent/common.sh"
agent_require "$build/tests/agent/agent_e2e"

rc=0
for scenario in "two-clients" "--no-agent two-clients" killed restart; do
  d=$(mktemp -d "$tmp/run.XXXXXX")
  echo "== agent_e2e $scenario"
  # shellcheck disable=SC2086
  "$build/tests/agent/agent_e2e" --agent "$agent" --dir "$d" $scenario || rc=1
done
exit $rc
