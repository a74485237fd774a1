# tests/vm/common.sh - sourced by every tests/vm/t_vm_*.sh (after its
# `set -euo pipefail`): what each test does the same way around its own
# guest program. A test boots every kernel of $VM_KERNELS at once, one QEMU
# in the background per kernel, then checks each kernel's console output.
#
#   vm_setup "$@"          --help (the script's header comment), cd to the
#                          top of the tree, the VM tier's skips (SAN, QEMU);
#                          sets vm, build, kernels
#   vm_need_bins HOW B..   fail unless each program B is built (HOW: with what)
#   vm_need_shm NAME       skip unless /dev/shm takes a file
#   vm_tmp                 $tmp, removed at exit with every QEMU still running
#                          (pids, bpids) and the files vm_cleanup_prefixes name
# Per kernel K, before the boot:
#   vm_fetch K [--headers] [--cached], vm_initramfs K ARG..
#   vm_ldtest_builds, then vm_with_ldtest PROG TIMEOUT (ldtest.ko, all
#                          kernels' modules built at once), vm_guest_script
#   vm_host_boot K HOST GUEST SHM   a host program that runs the VM
#   vm_booted K            after a boot of one's own in the background
# After it:
#   vm_results CHECK PASS [ON_FAIL]  wait for each kernel, judge, print it;
#                          vm_check_prog, vm_check_host, vm_need_parts judge
#   vm_total WHAT, vm_finish         the times, the skips, the exit status
# Exit statuses: 0 pass, 1 fail, 77 skipped (the reason is printed).

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

vm_setup() {
  if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    # The header: every comment line after the shebang.
    sed -n '2,/^[^#]/p' "$0" | sed -n '/^#/s/^# \{0,1\}//p'
    exit 0
  fi
  top=$(cd "$(dirname "$0")/../.." && pwd)
  cd "$top"
  vm=tests/vm
  build=${BUILD:-build}
  kernels=${VM_KERNELS:-6.1 6.12}
  t_start=$(now)
  if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
  command -v qemu-system-x86_64 >/dev/null ||
    { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
  skipped=() built=() ran=() pids=() bpids=()
  declare -gA args=() krel=() build_s=()
  fail=0
}

vm_need_bins() {
  local how=$1 b
  shift
  for b in "$@"; do
    [ -x "$b" ] || { echo "FAIL: $b missing: build it with $how"; exit 1; }
  done
}

# QEMU maps a region from a file the host program creates; /dev/shm is
# where a VMM would put it (tmpfs: no disk I/O behind the guest's bitmaps).
vm_need_shm() {
  local probe="/dev/shm/libdirty-vm-$1-probe-$$"
  if ! { [ -d /dev/shm ] && : 2>/dev/null >"$probe"; }; then
    echo "SKIP: /dev/shm is not writable (the region file goes there)"; exit 77
  fi
  rm -f "$probe"
}

vm_cleanup_prefixes=()
vm_cleanup() {
  local p
  # A host program (gp_host, agent_host) stops its VM and removes its file
  # on SIGTERM.
  for p in "${pids[@]}" "${bpids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for p in "${vm_cleanup_prefixes[@]}"; do rm -f "$p"*; done
  rm -rf "$tmp"
}

vm_tmp() {
  tmp=$(mktemp -d)
  trap vm_cleanup EXIT
  trap 'exit 143' INT TERM
}

vm_fetch() {
  local k=$1 headers="" rc
  shift
  [ "${1:-}" = --headers ] && headers=" --headers"
  set +e
  vm_env=$("$vm/fetch.sh" "$@" --env "$k" 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then
    skipped+=("$k: $(grep -m1 '^SKIP' <<<"$vm_env" | sed 's/^SKIP: //' || echo "fetch.sh skipped")")
    return 1
  fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh$headers --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
}

vm_initramfs() {
  local k=$1
  shift
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" "$@" 2>"$tmp/mkinit-$k.err" ||
    { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
}

# The guest's command: PROG, then a kernel log with no warning from VFIO.
vm_dmesg_cmd() {
  echo "rc=0; $1 || rc=1; if dmesg | grep -E \"WARNING:|BUG:|Oops|Call Trace\"; then echo \"$1: FAIL the kernel log has the warnings above\"; rc=1; fi; exit \$rc"
}

# vm_guest_script PROG: $tmp/PROG_run, the guest's script: PROG with the
# script's arguments, then the shell lines read from stdin, then a kernel
# log with no warning (ldtest's own faults included).
vm_guest_script() {
  local prog=$1
  {
    printf '#!/bin/sh\nrc=0\n%s "$@" || rc=1\n' "$prog"
    cat
    cat <<EOF
if dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|general protection|list_del corruption'; then
  echo "$prog: FAIL the kernel log has the warnings above"; rc=1
else
  echo "$prog: ok   no WARNING/BUG/Oops in dmesg"
fi
exit \$rc
EOF
  } >"$tmp/${prog}_run"
  chmod +x "$tmp/${prog}_run"
}

# vm_host_boot K HOST GUEST SHM [RUN-VM ARG...]: the host program HOST
# creates the region file SHM for $ram_mib MiB of guest RAM, then runs
# run-vm.sh on it with GUEST; --log keeps the console where HOST can show
# it on a failure.
vm_host_boot() {
  local k=$1 host=$2 guest=$3 shm=$4
  shift 4
  rm -f "$shm"
  "$host" --shm "$shm" --ram-mib "$ram_mib" --console "$tmp/console-$k" \
    --boot-timeout 90 --step-timeout 30 -- \
    "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --shm "$shm" "$@" \
      --mem "${ram_mib}M" --timeout 150 --quiet --log "$tmp/console-$k" \
      --cmd "$(vm_dmesg_cmd "$guest")" \
    >"$tmp/out-$k" 2>&1 &
  vm_booted "$k"
}

# Per kernel: the kernel, busybox and its headers (downloaded once), the
# guest's arguments in args[K], then ldtest.ko built in the background
# (mdev/build.sh; a few seconds each, all kernels at once).
vm_ldtest_builds() {
  local k
  for k in $kernels; do
    vm_fetch "$k" --headers || continue
    eval "$vm_env"
    krel[$k]=$VM_KREL
    # REPORT needs the VFIO core's iova_bitmap: in vfio.ko up to 6.6, from
    # then on only with CONFIG_IOMMUFD_DRIVER (off in Debian's 6.12).
    args[$k]=""
    if [ "$k" != 6.1 ] && ! grep -q '^CONFIG_IOMMUFD_DRIVER=y' "$(dirname "$VM_VMLINUZ")/config-$VM_KREL" 2>/dev/null; then
      args[$k]="--no-report"
    fi
    (
      t0=$(now)
      set +e
      BUILD="$top/$build" "$vm/mdev/build.sh" --kernel "$k" --cached >"$tmp/ko-$k" 2>"$tmp/build-$k.err"
      rc=$?
      secs "$t0" "$(now)" >"$tmp/build-s-$k"
      exit $rc
    ) &
    bpids+=($!)
    built+=("$k")
  done
}

# vm_with_ldtest PROG TIMEOUT: as each kernel's module is built, boot it
# with ldtest.ko, PROG and its script (vm_guest_script), which gets args[K].
vm_with_ldtest() {
  local prog=$1 timeout=$2 k i=0 rc ko
  for k in "${built[@]}"; do
    vm_wait "${bpids[$i]}"
    rc=$vm_rc
    i=$((i + 1))
    ko=$(tail -n1 "$tmp/ko-$k")
    if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' "$tmp/ko-$k" | sed 's/^SKIP: //' || echo "mdev/build.sh skipped")"); continue; fi
    [ $rc = 0 ] && [ -f "$ko" ] || { echo "FAIL: building ldtest.ko for $k:"; cat "$tmp/build-$k.err"; exit 1; }
    build_s[$k]=$(cat "$tmp/build-s-$k")
    vm_initramfs "$k" --ko "$ko" "$build/tests/vm/$prog" "$tmp/${prog}_run"
    "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --timeout "$timeout" \
      --cmd "${prog}_run ${args[$k]}" >"$tmp/out-$k" 2>&1 &
    vm_booted "$k"
  done
}

# vm_wait PID: the exit status of background job PID into vm_rc.
vm_wait() {
  vm_rc=0
  wait "$1" || vm_rc=$?
}

# vm_booted K: K's QEMU (the last job started) runs in the background.
vm_booted() {
  pids+=($!)
  ran+=("$1")
}

# Boot + test seconds of K, as run-vm.sh measured them.
vm_boot_secs() {
  sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$1" | tail -n1
}

# Lines of FILE that match the regular expression RE.
vm_count() {
  grep -c "$1" "$2" || true
}

# "part 1 12.3 ms, part 2 ..." from PROG's "PROG: part N took T" lines of K.
vm_parts_took() {
  sed -n "s/^$1: part \\([0-9]*\\) took \\(.*\\)/part \\1 \\2/p" "$tmp/out-$2" | paste -sd, | sed 's/,/, /g'
}

# Never pass by doing nothing: every part of PROG must have run on K.
vm_need_parts() {
  local prog=$1 k=$2 part
  shift 2
  for part in "$@"; do
    grep -q "^$prog: part $part took" "$tmp/out-$k" || problems+=("part $part did not finish")
  done
}

# vm_results CHECK PASS [ON_FAIL]: per booted kernel K, in order, wait for
# its QEMU (status RC), then CHECK K RC adds to `problems`; none: PASS K
# prints the result, else the FAIL line, K's output and ON_FAIL K.
vm_results() {
  local check=$1 pass=$2 on_fail=${3:-} k i=0 rc
  for k in "${ran[@]}"; do
    vm_wait "${pids[$i]}"
    rc=$vm_rc
    i=$((i + 1))
    problems=()
    "$check" "$k" "$rc"
    if [ ${#problems[@]} = 0 ]; then
      "$pass" "$k"
    else
      echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
      sed 's/^/     | /' "$tmp/out-$k"
      [ -z "$on_fail" ] || "$on_fail" "$k"
      fail=1
    fi
  done
}

# What every guest program PROG prints ("PROG: ok  ...", "PROG: FAIL ...",
# "PROG: RESULT ... failures=N") judged for K, whose QEMU exited RC: sets
# result, boot and nok (the checks that passed).
vm_check_prog() {
  local prog=$1 k=$2 rc=$3 nfail
  result=$(sed -n "s/^$prog: RESULT //p" "$tmp/out-$k" | head -n1)
  boot=$(vm_boot_secs "$k")
  nok=$(vm_count "^$prog: ok  " "$tmp/out-$k")
  nfail=$(vm_count "^$prog: FAIL" "$tmp/out-$k")
  [ "$rc" = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from $prog")
  case $result in *" failures=0" | "failures=0") ;; *) problems+=("$prog reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
}

# The same for a host program HOST (gp_host, agent_host) that ran the VM of
# K with the region file SHM, and the guest program GUEST's RESULT line
# (gresult) from the console, which must match the glob GOOD; at least MIN
# host checks must have passed.
vm_check_host() {
  local host=$1 guest=$2 k=$3 rc=$4 min=$5 shm=$6 good=$7 nfail
  result=$(sed -n "s/^$host: RESULT //p" "$tmp/out-$k" | head -n1)
  gresult=$(tr -d '\r' <"$tmp/console-$k" 2>/dev/null | sed -n "s/^$guest: RESULT //p" | head -n1)
  boot=$(vm_boot_secs "$k")
  nok=$(vm_count "^$host: ok " "$tmp/out-$k")
  nfail=$(vm_count "^$host: FAIL" "$tmp/out-$k")
  [ "$rc" = 0 ] || problems+=("$host exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from $host")
  case $result in *" failures=0 "*) ;; *) problems+=("$host reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
  # shellcheck disable=SC2254 # GOOD is a glob
  case $gresult in $good) ;; *) problems+=("the guest program did not finish ('${gresult:-no RESULT line}')") ;; esac
  # Never pass by doing nothing: every step's checks must have run.
  [ "$nok" -ge "$min" ] || problems+=("only $nok host checks passed (expected at least $min)")
  [ ! -e "$shm" ] || problems+=("$shm was left behind")
}

# "     total 9.1s (WHAT 3.2s)": the script's time, and the part before boot.
vm_total() {
  echo "     total $(secs "$t_start" "$(now)")s ($1 $(secs "$t_start" "$t_booted")s)"
}

# The guest console of K (run-vm.sh --log), its last N lines, for a failure
# a host program did not show itself (PROG: its name in the output).
vm_console_tail() {
  local prog=$1 n=$2 k=$3
  if ! grep -q "^$prog: | " "$tmp/out-$k" && [ -s "$tmp/console-$k" ]; then
    echo "     ---- guest console ----"
    tr -d '\r' <"$tmp/console-$k" | tail -n "$n" | sed 's/^/     | /'
  fi
}

vm_finish() {
  local s
  for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
  [ $fail = 0 ] || exit 1
  [ ${#ran[@]} -gt 0 ] || exit 77
  # A kernel the registry does not offer: the test is incomplete, say so.
  [ ${#skipped[@]} = 0 ] || exit 77
  exit 0
}
