#!/usr/bin/env bash
# t_agent_cli.sh - dirty-agent's command line and life cycle on a region
# file (--region; the file made with the host library by agent_mkregion):
#   --help/--version; usage errors exit 2 with a message; a missing or
#   foreign region file exits 1 saying why; `status` with no agent exits 1
#   and says what to check;
#   start: READY=1 (with MAINPID, STATUS) reaches $NOTIFY_SOCKET, both as a
#   path and as an @abstract name; the region's guest words (RUNNING, v1.1,
#   heartbeat moving); the socket 0660 by default, --socket-mode honoured;
#   `status` (text and JSON) answers; a second agent on the same socket
#   exits 4; SIGHUP logs the status; SIGTERM exits 0, removes the socket,
#   leaves guest state STOPPED and the pin table; a restarted agent adopts
#   the table; a SIGKILLed agent's stale socket is replaced;
#   `make install-agent` into a DESTDIR installs the daemon, the unit (its
#   ExecStart pointing at the installed daemon), the udev rule and the man
#   page, which groff renders without warnings.
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build="$top/$build" ;; esac
. "$top/tests/agent/common.sh"
agent_require "$build/tests/agent/agent_mkregion"

fails=0 n=0 apid=""
ok() { n=$((n + 1)); echo "ok   $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
trap '[ -z "$apid" ] || kill -9 "$apid" 2>/dev/null; rm -rf "$tmp"; rm -f "$region"' EXIT

region=/dev/shm/libdirty-agent-cli-$$
rm -f "$region"
"$build/tests/agent/agent_mkregion" "$region" --ram-mib 64 >/dev/null || { echo "FAIL: agent_mkregion"; exit 1; }
sock="$tmp/agent.sock"
state="$tmp/state"

# A guest word of the region: word OFFSET SIZE (bytes).
word() { od -An -t u"$2" -j "$1" -N "$2" "$region" | tr -d ' '; }
GSTATE=272 GMAJOR=276 GMINOR=278 GHEART=264

# 1. Help and usage.
out=$("$agent" --help); rc=$?
check "--help exits 0 and lists the exit codes" bash -c "[ $rc = 0 ] && grep -q 'Exit status: 0 stopped by SIGTERM' <<<\"\$1\"" _ "$out"
check "status --help exits 0" "$agent" status --help >/dev/null
out=$("$agent" --version); check "--version: $out" grep -q 'dirty-agent 0\.[0-9]*\.[0-9]* (libdirty guest protocol v1.1)' <<<"$out"
for args in "--bogus" "--heartbeat-ms 0" "--grace-timeout-ms x" "--socket-mode 999" \
            "--device 00:03.0 --region $region" "extra-arg" "--allow-uid no-such-user-here" "--json"; do
  # shellcheck disable=SC2086
  err=$("$agent" $args 2>&1); rc=$?
  check "'$args': exit 2 with a message (got $rc: $(head -n1 <<<"$err"))" bash -c "[ $rc = 2 ] && [ -n \"\$1\" ]" _ "$err"
done
err=$("$agent" --region "$tmp/nope" --socket "$sock" --state-dir "$state" 2>&1); rc=$?
check "a missing region file: exit 1, says cannot open (got $rc)" bash -c "[ $rc = 1 ] && grep -q 'cannot open' <<<\"\$1\"" _ "$err"
truncate -s 65536 "$tmp/zeros"
err=$("$agent" --region "$tmp/zeros" --socket "$sock" --state-dir "$state" 2>&1); rc=$?
check "a file without a region: exit 1, says no libdirty region (got $rc)" \
  bash -c "[ $rc = 1 ] && grep -q 'no libdirty region' <<<\"\$1\"" _ "$err"
err=$("$agent" status --socket "$sock" 2>&1); rc=$?
check "status with no agent: exit 1, asks whether it runs (got $rc)" \
  bash -c "[ $rc = 1 ] && grep -q 'is dirty-agent running' <<<\"\$1\"" _ "$err"

# start_agent LOG ARGS...: start, wait until status answers (5 s).
start_agent() {
  local log=$1; shift
  "$agent" -v --region "$region" --socket "$sock" --state-dir "$state" --heartbeat-ms 10 "$@" >"$log" 2>&1 &
  apid=$!
  for _ in $(seq 500); do
    "$agent" status --socket "$sock" >/dev/null 2>&1 && return 0
    kill -0 "$apid" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}
stop_agent() { kill -"${1:-TERM}" "$apid"; wait "$apid" 2>/dev/null; local rc=$?; apid=""; return $rc; }

# 2. READY=1 to $NOTIFY_SOCKET, a path and an abstract name.
if command -v python3 >/dev/null; then
  for kind in path abstract; do
    if [ $kind = path ]; then ns="$tmp/notify.sock"; else ns="@libdirty-agent-test-$$"; fi
    rm -f "$tmp/notify-$kind.ready"
    python3 - "$ns" "$tmp/notify-$kind.ready" >"$tmp/notify-$kind.out" 2>&1 <<'PY' &
import socket, sys
name, ready = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + name[1:] if name.startswith("@") else name)
open(ready, "w").close()
s.settimeout(10)
print(s.recv(4096).decode())
PY
    ppid=$!
    for _ in $(seq 1000); do [ -e "$tmp/notify-$kind.ready" ] && break; sleep 0.01; done
    NOTIFY_SOCKET=$ns start_agent "$tmp/notify-$kind.log"
    wait $ppid
    check "READY=1 reaches NOTIFY_SOCKET=$ns with MAINPID=$apid and a STATUS line" \
      bash -c "grep -q '^READY=1' '$tmp/notify-$kind.out' && grep -q '^MAINPID=$apid' '$tmp/notify-$kind.out' && grep -q '^STATUS=serving region file' '$tmp/notify-$kind.out'"
    stop_agent
  done
else
  echo "note: python3 not found: the NOTIFY_SOCKET part is not run"
fi

# 3. A running agent.
start_agent "$tmp/a1.log" || { bad "the agent starts"; cat "$tmp/a1.log"; exit 1; }
check "the socket is a socket, mode 0660 (default)" bash -c "[ -S '$sock' ] && [ \$(stat -c %a '$sock') = 660 ]"
check "guest words: state RUNNING (1), v1.1" bash -c "[ $(word $GSTATE 4) = 1 ] && [ $(word $GMAJOR 2) = 1 ] && [ $(word $GMINOR 2) = 1 ]"
hb=$(word $GHEART 8); sleep 0.1
check "the heartbeat moves every 10 ms ($hb -> $(word $GHEART 8))" [ "$(word $GHEART 8)" -gt $((hb + 3)) ]
out=$("$agent" status --socket "$sock")
check "status (text): region, tracking, clients, health ok" \
  bash -c "grep -q '^region:       region file $region' <<<\"\$1\" && grep -q '^clients:      0 connected' <<<\"\$1\" && grep -q '^health:       ok' <<<\"\$1\"" _ "$out"
json=$("$agent" status --json --socket "$sock")
if command -v python3 >/dev/null; then
  check "status --json is JSON with the documented fields" python3 -c '
import json, sys
j = json.loads(sys.argv[1])
assert j["region"]["kind"] == "file" and j["region"]["pages"] == 16384, j["region"]
assert j["health"] == "ok" and j["clients"] == [] and j["leaks"]["events"] == 0
for k in ("tracking", "host_generation", "acked_generation", "handshake", "heartbeat", "pin_table", "pinned_pages", "repairs", "region_counters", "connections"):
    assert k in j, k
' "$json"
fi
err=$("$agent" --region "$region" --socket "$sock" --state-dir "$tmp/state2" 2>&1); rc=$?
check "a second agent on the same socket: exit 4, says another serves it (got $rc)" \
  bash -c "[ $rc = 4 ] && grep -q 'another dirty-agent is serving' <<<\"\$1\"" _ "$err"
kill -HUP "$apid"; sleep 0.2
check "SIGHUP writes the status to the log" grep -q 'status: health:       ok' "$tmp/a1.log"
stop_agent; rc=$?
check "SIGTERM: exit 0 (got $rc)" [ $rc = 0 ]
check "the socket is gone" bash -c "[ ! -e '$sock' ]"
check "no client left: guest state STOPPED (2)" [ "$(word $GSTATE 4)" = 2 ]
check "the pin table stays for the next agent" bash -c "ls '$state'/pins-* >/dev/null"

# 4. Restart: adopted; a SIGKILLed agent's socket is replaced; --socket-mode.
start_agent "$tmp/a2.log" --socket-mode 0666 || bad "the agent starts again"
check "a restarted agent adopts the pin table" grep -q 'pin table .* (adopted from a previous agent)' "$tmp/a2.log"
check "--socket-mode 0666 is honoured" bash -c "[ \$(stat -c %a '$sock') = 666 ]"
stop_agent KILL
check "after SIGKILL the socket file stays behind" bash -c "[ -S '$sock' ]"
start_agent "$tmp/a3.log" || bad "an agent starts over a stale socket"
check "an agent starts over the stale socket (replaces it)" "$agent" status --socket "$sock" >/dev/null
stop_agent

# 5. make install-agent into a DESTDIR.
dest="$tmp/root"
if make -s -C "$top" BUILD="$build" install-agent DESTDIR="$dest" PREFIX=/usr >"$tmp/install.log" 2>&1; then
  check "installs sbin/dirty-agent, the unit, the udev rule, the man page" \
    bash -c "[ -x '$dest/usr/sbin/dirty-agent' ] && [ -f '$dest/usr/lib/systemd/system/dirty-agent.service' ] && [ -f '$dest/usr/lib/udev/rules.d/60-dirty-agent.rules' ] && [ -f '$dest/usr/share/man/man8/dirty-agent.8' ]"
  check "the unit is Type=notify and runs /usr/sbin/dirty-agent" \
    bash -c "grep -q '^Type=notify' '$dest/usr/lib/systemd/system/dirty-agent.service' && grep -q '^ExecStart=/usr/sbin/dirty-agent ' '$dest/usr/lib/systemd/system/dirty-agent.service'"
  check "the udev rule matches 1af4:1110 and wants the service" \
    bash -c "grep -q 'ATTR{vendor}==\"0x1af4\", ATTR{device}==\"0x1110\"' '$dest/usr/lib/udev/rules.d/60-dirty-agent.rules' && grep -q 'ENV{SYSTEMD_WANTS}+=\"dirty-agent.service\"' '$dest/usr/lib/udev/rules.d/60-dirty-agent.rules'"
  if command -v groff >/dev/null; then
    w=$(groff -man -Tutf8 -ww -z "$dest/usr/share/man/man8/dirty-agent.8" 2>&1)
    check "groff renders the man page without warnings${w:+: $w}" [ -z "$w" ]
  fi
  make -s -C "$top" BUILD="$build" uninstall-agent DESTDIR="$dest" PREFIX=/usr >/dev/null 2>&1
  check "uninstall-agent removes them" bash -c "[ -z \"\$(find '$dest' -type f)\" ]"
else
  bad "make install-agent: $(tail -n 3 "$tmp/install.log")"
fi

echo "RESULT cli: $n checks, $fails failed"
if [ $fails != 0 ]; then
  for f in "$tmp"/*.log; do echo "---- $f"; tail -n 10 "$f"; done
  exit 1
fi
exit 0
