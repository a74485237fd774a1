#!/usr/bin/env bash
# mkinitramfs.sh - build the VM tier's initramfs (a gzip'd newc cpio) for one
# kernel: busybox-static with its applet links, the given programs with every
# shared library they need (this host's, found with ldd, dynamic loader
# included: the guest runs this host's Debian 12 userspace), the kernel
# modules of the VFIO stack from the unpacked kernel (dependencies resolved
# from each module's .modinfo, loaded in that order), and an /init that runs
# the test command and hands its exit status to QEMU's isa-debug-exit port.
#
# The /init contract (run-vm.sh relies on it):
#   - the command is the base64 of `vmtest.cmd=` on the kernel command line,
#     else the baked-in --default-cmd;
#   - it runs with cwd /, PATH=/bin:/sbin:/usr/bin:/usr/sbin, in /bin/sh -c,
#     stdout and stderr on the console (ttyS0);
#   - init prints "==== vm: exit N" and writes N to port 0xf4 (QEMU exits
#     with (N<<1)|1), then powers off. N is the command's status clamped to
#     0..123, or init's own failure: 119 initramfs built for another kernel,
#     120 insmod failed, 121 bad vmtest.cmd, 122 no command.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tests/vm/mkinitramfs.sh --kernel 6.1|6.12 --out FILE [options] [PROGRAM...]

PROGRAMs (binaries or scripts) are copied to /bin in the guest, with their
shared libraries. Options:
  --kernel K         kernel series whose modules go in (6.1 or 6.12)
  --out FILE         the initramfs to write (gzip'd cpio)
  --module NAME      load this module too (repeatable; its dependencies are
                     added); the default set is irqbypass vfio_virqfd vfio
                     vfio_iommu_type1 vfio-pci-core vfio-pci mdev
  --no-modules       load none of the kernel's own modules (--ko files still
                     load, without their dependencies)
  --ko FILE          an out-of-tree .ko to copy and load last (repeatable;
                     the modules its .modinfo depends on load before it)
  --file SRC:DEST    copy a host file to DEST in the guest (repeatable)
  --default-cmd CMD  command run when the kernel command line gives none
  -h, --help         this text
Exit 77 (SKIP: why) when the kernel or busybox cannot be fetched.
EOF
}

die() { echo "mkinitramfs.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

kernel="" out="" default_cmd="" no_modules=0
modules=(irqbypass vfio_virqfd vfio vfio_iommu_type1 vfio-pci-core vfio-pci mdev)
# Modules that may be built in or absent in some version (then skipped).
optional="vfio_virqfd mdev"
kos=() files=() progs=()
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) [ $# -ge 2 ] || die "--kernel needs 6.1 or 6.12"; kernel=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a file"; out=$2; shift 2 ;;
    --module) [ $# -ge 2 ] || die "--module needs a name"; modules+=("$2"); shift 2 ;;
    --no-modules) no_modules=1; shift ;;
    --ko) [ $# -ge 2 ] || die "--ko needs a file"; kos+=("$2"); shift 2 ;;
    --file) [ $# -ge 2 ] || die "--file needs SRC:DEST"; files+=("$2"); shift 2 ;;
    --default-cmd) [ $# -ge 2 ] || die "--default-cmd needs a command"; default_cmd=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; progs+=("$@"); break ;;
    -*) usage >&2; exit 2 ;;
    *) progs+=("$1"); shift ;;
  esac
done
[ -n "$kernel" ] && [ -n "$out" ] || { usage >&2; exit 2; }
for p in "${progs[@]}" "${kos[@]}"; do
  [ -f "$p" ] || die "$p not found (build the guest programs first: make vm-guest)"
done
command -v ldd >/dev/null || die "ldd not found (Debian package libc-bin)"
command -v gzip >/dev/null || die "gzip not found"
command -v objcopy >/dev/null || die "objcopy not found (Debian package binutils)"

# VM_KREL, VM_MODDIR, VM_BUSYBOX...; 77 passes through.
env_out=$("$here/fetch.sh" --env "$kernel" --cached) || exit $?
eval "$env_out"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,lib/modules} "$stage"/usr/{bin,sbin}

# busybox and its applet links.
cp "$VM_BUSYBOX" "$stage/bin/busybox"
for applet in $("$VM_BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
done

# copy_with_libs FILE DESTDIR: FILE and the libraries ldd names for it.
copy_with_libs() {
  local f=$1 dest=$2 line lib
  install -m 0755 "$f" "$dest/"
  # Static binaries and scripts have no libraries ("not a dynamic executable").
  ldd "$f" >/dev/null 2>&1 || return 0
  while read -r line; do
    case $line in
      *"=> not found"*) die "$f needs ${line%% *}, which this host lacks" ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;            # the dynamic loader
      *) continue ;;                     # linux-vdso
    esac
    if [ ! -e "$stage$lib" ]; then
      mkdir -p "$stage$(dirname "$lib")"
      cp -L "$lib" "$stage$lib"
    fi
  done < <(ldd "$f")
}
for p in "${progs[@]}"; do copy_with_libs "$p" "$stage/bin"; done
for spec in "${files[@]}"; do
  src=${spec%%:*} dst=${spec#*:}
  [ -f "$src" ] && [ -n "$dst" ] && [ "$src" != "$spec" ] || die "--file $spec: want an existing SRC:DEST"
  mkdir -p "$stage$(dirname "$dst")" && cp -L "$src" "$stage$dst"
done

# --- kernel modules -----------------------------------------------------------
# Module names use '-' and '_' interchangeably; index files by the '_' form.
declare -A ko_path=()
while IFS=$'\t' read -r n f; do
  n=${n%%.ko*}; ko_path[${n//-/_}]=$f
done < <(find "$VM_MODDIR/kernel" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -printf '%f\t%p\n')

# decompress SRC DEST: busybox insmod hands the bytes to init_module(), so
# compressed modules are unpacked here.
decompress() {
  case $1 in
    *.ko.xz)  xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz)  gzip -dc "$1" >"$2" ;;
    *)        cp "$1" "$2" ;;
  esac
}

declare -A state=()   # name -> visiting|done
order=()
add_module() {
  local n=${1//-/_} src ko deps d
  case ${state[$n]:-} in
    done) return 0 ;;
    visiting) die "module dependency cycle at $n" ;;
  esac
  src=${ko_path[$n]:-}
  if [ -z "$src" ]; then
    if grep -qE "/${n//_/[-_]}\.ko$" "$VM_MODDIR/modules.builtin" 2>/dev/null; then
      state[$n]="done"; return 0           # built into this kernel
    fi
    case " $optional " in
      *" $1 "*) state[$n]="done"; return 0 ;;   # e.g. vfio_virqfd from 6.2 on
    esac
    die "module $1 is neither in $VM_MODDIR nor built in"
  fi
  state[$n]=visiting
  ko="$stage/lib/modules/$n.ko"
  decompress "$src" "$ko" || die "cannot decompress $src"
  deps=$(objcopy -O binary --only-section=.modinfo "$ko" /dev/stdout 2>/dev/null |
         tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
  for d in $deps; do add_module "$d"; done
  state[$n]="done"
  order+=("$n")
}
if [ $no_modules = 0 ]; then
  for m in "${modules[@]}"; do add_module "$m"; done
fi
# An out-of-tree module may depend on another given with --ko (loaded in
# the order given), never looked up among the kernel's.
for k in "${kos[@]}"; do
  n=$(basename "$k"); n=${n%%.ko*}; state[${n//-/_}]="done"
done
for k in "${kos[@]}"; do
  n=$(basename "$k"); n=${n%%.ko*}; n=${n//-/_}
  decompress "$k" "$stage/lib/modules/$n.ko"
  # Its kernel dependencies (e.g. vfio, mdev) load first, unless --no-modules.
  if [ $no_modules = 0 ]; then
    deps=$(objcopy -O binary --only-section=.modinfo "$stage/lib/modules/$n.ko" /dev/stdout 2>/dev/null |
           tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
    for d in $deps; do add_module "$d"; done
  fi
  order+=("$n")
done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/load-order"
printf '%s\n' "$VM_KREL" >"$stage/etc/vm-kernel"
[ -z "$default_cmd" ] || printf '%s\n' "$default_cmd" >"$stage/etc/vm-default-cmd"

# --- /init -------------------------------------------------------------------
cat >"$stage/init" <<'EOF'
#!/bin/busybox sh
# The VM tier's init (tests/vm/mkinitramfs.sh): mount, load modules, run the
# command, report its status on isa-debug-exit (port 0xf4), power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
report() {
  st=$1
  [ "$st" -ge 0 ] 2>/dev/null && [ "$st" -le 123 ] || { echo "vm: status $st reported as 123"; st=123; }
  echo "==== vm: exit $st"
  sync
  # QEMU exits with (st<<1)|1 on this write; poweroff is the fallback.
  printf "\\$(printf %03o "$st")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null ||
    echo "vm: cannot write /dev/port; run-vm.sh reads the status from this console"
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
exec </dev/console >/dev/console 2>&1
if [ "$(uname -r)" != "$(cat /etc/vm-kernel)" ]; then
  echo "vm: this initramfs is for $(cat /etc/vm-kernel) but $(uname -r) booted"
  report 119
fi
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || { echo "vm: insmod $m failed"; report 120; }
done
cmd=""
for arg in $(cat /proc/cmdline); do
  case $arg in vmtest.cmd=*) cmd=$(echo "${arg#vmtest.cmd=}" | base64 -d) || report 121 ;; esac
done
[ -n "$cmd" ] || [ ! -f /etc/vm-default-cmd ] || cmd=$(cat /etc/vm-default-cmd)
[ -n "$cmd" ] || { echo "vm: no command (vmtest.cmd= on the kernel command line)"; report 122; }
echo "==== vm: $(uname -r): $cmd"
cd /
/bin/sh -c "$cmd"
report $?
EOF
chmod 0755 "$stage/init"

# busybox cpio: the host may have no cpio(1).
tmp_out="$out.tmp.$$"
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$VM_BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -1 >"$tmp_out" || { rm -f "$tmp_out"; die "cannot write $out"; }
mv "$tmp_out" "$out"
echo "mkinitramfs.sh: $out for $VM_KREL: modules ${order[*]:-none}; programs ${progs[*]:-none} ($(du -k "$out" | cut -f1) KiB)" >&2
