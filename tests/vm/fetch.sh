#!/usr/bin/env bash
# fetch.sh - download and unpack what the VM test tier needs: Debian kernels
# (6.1 and 6.12, amd64), busybox-static and the 6.1 headers + kbuild for
# out-of-tree modules. Packages are fetched with `apt-get download` (never
# installed) and unpacked with `dpkg-deb -x` into a cache outside the repo:
#
#   ${LIBDIRTY_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libdirty/vm}/
#     pkg/<package>_<version>/       one unpacked tree per package version
#     pkg/linux-headers-<krel>_<version>/  the headers set (-amd64, -common
#                                    and linux-kbuild, one tree: they link
#                                    to each other with relative symlinks)
#     kernel-6.1.env, kernel-6.12.env      what the other scripts read
#
# A second run downloads nothing. Runs are serialized with flock, so several
# tests may call it at once. Exit 0 = done, 77 = cannot (prints "SKIP: why"),
# anything else = a bug or a broken cache (the message says what to delete).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tests/vm/fetch.sh [options]

Fetch and unpack the VM tier's packages into the cache (see the top of this
file). Without options: both kernels, busybox and the 6.1 headers.

  --kernel K       only kernel K (6.1 or 6.12; repeatable), plus busybox
  --headers        also the headers + kbuild of each selected kernel
                   (the default run fetches them for 6.1)
  --env K          make sure kernel K and busybox are there, then print its
                   settings as shell assignments (for eval): VM_KREL,
                   VM_KPKG, VM_KVERSION, VM_VMLINUZ (bzImage), VM_VMLINUX
                   (the ELF inside it, PVH-bootable; empty if none),
                   VM_MODDIR, VM_BUSYBOX, VM_HEADERS (empty unless fetched)
  --cached         with --env: when the cache already has settings for K
                   (from an earlier run), print them without asking apt
  --check-module   build a trivial out-of-tree module against the unpacked
                   headers of each selected kernel (proves the headers work)
  --offline        never download: use what the cache has
  -h, --help       this text

Environment:
  LIBDIRTY_VM_CACHE   cache directory (default above)
  VM_KERNEL_6_1       pin the 6.1 kernel release, e.g. 6.1.0-56-amd64
  VM_KERNEL_6_12      pin the 6.12 kernel release, e.g. 6.12.117+deb12-amd64
By default the newest release apt offers is used (the -unsigned image when
apt has one, else the signed one); with the registry unreachable, the newest
one already in the cache.
EOF
}

skip() { echo "SKIP: $*"; exit 77; }
die() { echo "fetch.sh: $*" >&2; exit 1; }
note() { echo "fetch.sh: $*" >&2; }

kernels=() headers=0 env_k="" check_module=0 offline=0 explicit=0 cached=0
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) [ $# -ge 2 ] || die "--kernel needs 6.1 or 6.12"; kernels+=("$2"); explicit=1; shift 2 ;;
    --headers) headers=1; shift ;;
    --env) [ $# -ge 2 ] || die "--env needs 6.1 or 6.12"; env_k=$2; kernels+=("$2"); explicit=1; shift 2 ;;
    --check-module) check_module=1; shift ;;
    --offline) offline=1; shift ;;
    --cached) cached=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [ $explicit = 0 ]; then
  kernels=(6.1 6.12)
  headers_for=(6.1)
elif [ $headers = 1 ]; then
  headers_for=("${kernels[@]}")
else
  headers_for=()
fi
# --check-module without --headers: the headers it needs are fetched too.
if [ $check_module = 1 ] && [ ${#headers_for[@]} = 0 ]; then headers_for=("${kernels[@]}"); fi
for k in "${kernels[@]}"; do
  case $k in 6.1|6.12) ;; *) die "unknown kernel '$k' (this tier knows 6.1 and 6.12)" ;; esac
done

cache=${LIBDIRTY_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libdirty/vm}
# The fast path: settings of an earlier run whose files are all still there.
if [ $cached = 1 ] && [ -n "$env_k" ] && [ -f "$cache/kernel-$env_k.env" ]; then
  pin=""
  case $env_k in 6.1) pin=${VM_KERNEL_6_1:-} ;; 6.12) pin=${VM_KERNEL_6_12:-} ;; esac
  # shellcheck disable=SC1090  # written by this script, below
  if (set +u; . "$cache/kernel-$env_k.env" && { [ -z "$pin" ] || [ "$pin" = "$VM_KREL" ]; } &&
      [ -f "$VM_VMLINUZ" ] && [ -d "$VM_MODDIR" ] && { [ -z "${VM_VMLINUX:-}" ] || [ -f "$VM_VMLINUX" ]; } &&
      [ -x "$VM_BUSYBOX" ] && { [ -z "$VM_HEADERS" ] || [ -d "$VM_HEADERS" ]; }); then
    cat "$cache/kernel-$env_k.env"
    exit 0
  fi
fi
mkdir -p "$cache/pkg" || die "cannot create the cache $cache (set LIBDIRTY_VM_CACHE)"
command -v flock >/dev/null || skip "flock not found (Debian package util-linux)"
exec 9>"$cache/.lock"
flock -w 1800 9 || die "waited 30 min for $cache/.lock; is another fetch.sh stuck?"

# Leftovers of a killed run (nobody else uses them while we hold the lock).
rm -rf "$cache"/.tmp.* "$cache"/pkg/*.part
work=$(mktemp -d "$cache/.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

have_apt=0
if command -v apt-get >/dev/null && command -v apt-cache >/dev/null && command -v dpkg-deb >/dev/null; then
  have_apt=1
fi

# candidate_version PKG: the version apt would download, or nothing.
candidate_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}

# pkgdir NAME VERSION: the cache folder of one unpacked package version.
pkgdir() { printf '%s/pkg/%s_%s\n' "$cache" "$1" "${2//:/%3a}"; }

# download_unpack DIR PKG=VERSION...: download the packages and unpack them
# all into DIR (created atomically: DIR exists only when complete). Returns
# 3 with the reason in dl_err when the download fails.
dl_err=""
download_unpack() {
  local dir=$1; shift
  [ -e "$dir/.complete" ] && return 0
  [ $offline = 0 ] || skip "--offline and $(basename "$dir") is not in $cache"
  [ $have_apt = 1 ] || skip "apt-get/apt-cache/dpkg-deb not found (the VM tier fetches Debian packages)"
  local dl="$work/dl" opts=() out
  rm -rf "$dl" && mkdir -p "$dl"
  # As root apt drops to _apt for downloads and warns that it cannot write
  # here; downloading as root is what it falls back to anyway.
  [ "$(id -u)" = 0 ] && opts=(-o APT::Sandbox::User=root)
  note "downloading $*"
  if ! out=$(cd "$dl" && apt-get -q "${opts[@]}" download "$@" 2>&1); then
    dl_err="apt-get download $* failed: $(grep -E '^(E|Err):' <<<"$out" | head -n2 | tr '\n' ' ')"
    return 3
  fi
  rm -rf "$dir.part" && mkdir -p "$dir.part"
  local deb
  for deb in "$dl"/*.deb; do
    [ -e "$deb" ] || die "apt-get download $* produced no .deb"
    dpkg-deb -x "$deb" "$dir.part" || die "dpkg-deb -x $deb failed"
  done
  printf '%s\n' "$@" >"$dir.part/.packages"
  touch "$dir.part/.complete"
  rm -rf "$dir" && mv "$dir.part" "$dir"
  rm -rf "$dl"
}

# newest_cached GLOB: the newest complete cache folder matching GLOB.
newest_cached() {
  local d best=""
  for d in "$cache"/pkg/$1; do
    [ -e "$d/.complete" ] && best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n1)
  done
  printf '%s' "$best"
}

kernel_pin() {
  case $1 in 6.1) printf '%s' "${VM_KERNEL_6_1:-}" ;; 6.12) printf '%s' "${VM_KERNEL_6_12:-}" ;; esac
}

# cached_kernel K: the newest complete image of series K (or of the pinned
# release) in the cache: sets img_pkg, img_ver, krel; 1 if there is none.
cached_kernel() {
  local k=$1 pin glob d
  pin=$(kernel_pin "$k")
  case $k in
    6.1)  glob='linux-image-6.1.0-*-amd64*_*' ;;
    6.12) glob='linux-image-6.12.*+deb12-amd64*_*' ;;
  esac
  [ -z "$pin" ] || glob="linux-image-$pin*_*"
  d=$(newest_cached "$glob")
  [ -n "$d" ] || return 1
  d=$(basename "$d")
  img_pkg=${d%%_*} img_ver=${d#*_} img_ver=${img_ver//%3a/:}
  krel=${img_pkg#linux-image-} krel=${krel%-unsigned}
}

# select_kernel K: the image package of series K apt offers (the newest
# release, its -unsigned image when apt has one), else the cache's newest:
# sets img_pkg, img_ver, krel.
select_kernel() {
  local k=$1 pin re names
  pin=$(kernel_pin "$k")
  case $k in
    6.1)  re='^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' ;;
    6.12) re='^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$' ;;
  esac
  img_pkg="" img_ver="" krel=""
  if [ $offline = 0 ] && [ $have_apt = 1 ]; then
    names=$(apt-cache search --names-only "$re" 2>/dev/null | awk '{print $1}') || true
    if [ -n "$pin" ]; then
      names=$(grep -xF -e "linux-image-$pin" -e "linux-image-$pin-unsigned" <<<"$names" || true)
    fi
    if [ -n "$names" ]; then
      krel=$(sed -E 's/^linux-image-//; s/-unsigned$//' <<<"$names" | sort -uV | tail -n1)
      for img_pkg in "linux-image-$krel-unsigned" "linux-image-$krel"; do
        img_ver=$(candidate_version "$img_pkg")
        [ -n "$img_ver" ] && return 0
      done
    fi
  fi
  # No registry (or apt knows no such package): the newest cached one.
  if ! cached_kernel "$k"; then
    [ $offline = 0 ] || skip "--offline and no $k kernel in $cache"
    [ $have_apt = 1 ] || skip "apt-get not found and no $k kernel in $cache (the VM tier fetches Debian kernel packages)"
    skip "apt offers no linux-image-${pin:-$k*-amd64} package (is this Debian 12 with bookworm and bookworm-security in sources.list? run apt-get update)"
  fi
  [ $offline = 1 ] || note "apt offers no $k kernel; using the cached $img_pkg $img_ver"
}

# headers_for_kernel K: unpack linux-headers-<krel>-amd64, its -common and
# the matching linux-kbuild into one tree and make it usable from there.
fetch_headers() {
  local k=$1 abi_common kbuild dir hdr common mk
  abi_common=${krel%-amd64}-common
  case $k in
    6.1)  kbuild=linux-kbuild-6.1 ;;
    6.12) kbuild=linux-kbuild-${krel%-amd64} ;;
  esac
  dir=$(pkgdir "linux-headers-$krel" "$img_ver")
  download_unpack "$dir" "linux-headers-$krel=$img_ver" "linux-headers-$abi_common=$img_ver" \
    "$kbuild=$img_ver" || skip "$dl_err"
  hdr="$dir/usr/src/linux-headers-$krel"
  common="linux-headers-$abi_common"
  [ -f "$hdr/Makefile" ] && [ -d "$dir/usr/src/$common" ] || die "$dir is not a headers tree; delete it and run again"
  # The one absolute path unpacking leaves (Debian's Makefile includes
  # /usr/src/<common>/Makefile): make it relative to this Makefile.
  mk="include \$(dir \$(lastword \$(MAKEFILE_LIST)))../$common/Makefile"
  if grep -q '^include /usr/src/' "$hdr/Makefile"; then
    printf '%s\n' "$mk" >"$hdr/Makefile.new" && mv "$hdr/Makefile.new" "$hdr/Makefile"
  fi
  # Kbuild's own helpers are linked relatively; a dangling one is a bad unpack.
  [ -e "$hdr/scripts/Makefile.build" ] || die "$hdr/scripts is dangling; delete $dir and run again"
  headers_dir=$hdr
}

# check_module K: build a hello module in a temp dir against the headers.
check_module() {
  local k=$1
  local m="$work/hello-$k" extra=() out
  command -v make >/dev/null || skip "make not found (needed to build out-of-tree modules)"
  mkdir -p "$m"
  cat >"$m/hello.c" <<'EOF'
#include <linux/init.h>
#include <linux/module.h>
static int __init hello_init(void) { pr_info("hello\n"); return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
EOF
  echo 'obj-m := hello.o' >"$m/Kbuild"
  # 6.12 generates BTF for modules with pahole (package dwarves); without
  # it, switch that step off for this build.
  if [ "$k" = 6.12 ] && ! command -v pahole >/dev/null; then extra=(CONFIG_DEBUG_INFO_BTF_MODULES=); fi
  if ! out=$(make -C "$headers_dir" M="$m" "${extra[@]}" modules 2>&1) || [ ! -f "$m/hello.ko" ]; then
    echo "$out" | tail -n 20 >&2
    die "building a hello module against $headers_dir failed (output above)"
  fi
  local vermagic
  vermagic=$(objcopy -O binary --only-section=.modinfo "$m/hello.ko" /dev/stdout 2>/dev/null | tr '\0' '\n' | sed -n 's/^vermagic=//p')
  case $vermagic in
    "$krel "*) note "hello module for $krel builds (vermagic: $vermagic)" ;;
    *) die "hello module built with vermagic '$vermagic', not for $krel" ;;
  esac
}

# extract_vmlinux DIR KREL: the ELF vmlinux inside DIR's bzImage, kept as
# DIR/boot/vmlinux-KREL when the kernel has a PVH entry (CONFIG_PVH): QEMU
# boots it directly, skipping the guest's own decompression (xz under TCG:
# ~2 s of each 6.1 boot). Marked as tried either way.
extract_vmlinux() {
  local dir=$1 krel=$2 bz="$1/boot/vmlinuz-$2" out="$1/boot/vmlinux-$2" magic off tool
  [ ! -e "$dir/.vmlinux-tried" ] || return 0
  if grep -q '^CONFIG_PVH=y' "$dir/boot/config-$krel" 2>/dev/null; then
    for magic in 'xz:\xfd\x37\x7a\x58\x5a\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
      tool=${magic%%:*}
      command -v "$tool" >/dev/null || continue
      off=$(LC_ALL=C grep -obUaP "${magic#*:}" "$bz" 2>/dev/null | head -n1 | cut -d: -f1) || true
      [ -n "$off" ] || continue
      tail -c +$((off + 1)) "$bz" | "$tool" -dc 2>/dev/null >"$out.part" || true
      # An ELF whose section headers (at its end) are all there: complete.
      local shoff shentsize shnum
      if [ "$(head -c 4 "$out.part" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
        shoff=$(od -An -tu8 -j 40 -N 8 "$out.part" | tr -d ' ')
        shentsize=$(od -An -tu2 -j 58 -N 2 "$out.part" | tr -d ' ')
        shnum=$(od -An -tu2 -j 60 -N 2 "$out.part" | tr -d ' ')
        if [ $((shoff + shentsize * shnum)) -le "$(stat -c %s "$out.part")" ]; then
          mv "$out.part" "$out"
          break
        fi
      fi
    done
    rm -f "$out.part"
  fi
  touch "$dir/.vmlinux-tried"
}

# --- busybox ---------------------------------------------------------------
bb_ver=""
if [ $offline = 0 ] && [ $have_apt = 1 ]; then bb_ver=$(candidate_version busybox-static); fi
if [ -n "$bb_ver" ]; then
  bb_dir=$(pkgdir busybox-static "$bb_ver")
  if ! download_unpack "$bb_dir" "busybox-static=$bb_ver"; then
    bb_dir=$(newest_cached 'busybox-static_*')
    [ -n "$bb_dir" ] || skip "$dl_err"
    note "$dl_err; using the cached $(basename "$bb_dir")"
  fi
else
  bb_dir=$(newest_cached 'busybox-static_*')
  [ -n "$bb_dir" ] || skip "apt offers no busybox-static and the cache has none (run apt-get update)"
fi
busybox="$bb_dir/bin/busybox"
[ -x "$busybox" ] || die "$busybox missing; delete $bb_dir and run again"

# --- kernels -----------------------------------------------------------------
for k in "${kernels[@]}"; do
  select_kernel "$k"
  dir=$(pkgdir "$img_pkg" "$img_ver")
  if ! download_unpack "$dir" "$img_pkg=$img_ver"; then
    # The registry is unreachable: an older kernel of the series will do.
    cached_kernel "$k" || skip "$dl_err"
    dir=$(pkgdir "$img_pkg" "$img_ver")
    note "$dl_err; using the cached $img_pkg $img_ver"
  fi
  vmlinuz="$dir/boot/vmlinuz-$krel" moddir="$dir/lib/modules/$krel"
  [ -f "$vmlinuz" ] && [ -d "$moddir/kernel" ] || die "$dir lacks boot/vmlinuz-$krel or its modules; delete it and run again"
  extract_vmlinux "$dir" "$krel"
  vmlinux=""
  [ ! -f "$dir/boot/vmlinux-$krel" ] || vmlinux="$dir/boot/vmlinux-$krel"
  headers_dir=""
  want_headers=0
  for h in "${headers_for[@]}"; do [ "$h" = "$k" ] && want_headers=1; done
  if [ $want_headers = 1 ]; then
    fetch_headers "$k"
    [ $check_module = 0 ] || check_module "$k"
  else
    # Headers fetched by an earlier run are still reported.
    d=$(pkgdir "linux-headers-$krel" "$img_ver")
    [ -e "$d/.complete" ] && headers_dir="$d/usr/src/linux-headers-$krel"
  fi
  {
    printf 'VM_KREL=%q\n' "$krel"
    printf 'VM_KPKG=%q\n' "$img_pkg"
    printf 'VM_KVERSION=%q\n' "$img_ver"
    printf 'VM_VMLINUZ=%q\n' "$vmlinuz"
    printf 'VM_VMLINUX=%q\n' "$vmlinux"
    printf 'VM_MODDIR=%q\n' "$moddir"
    printf 'VM_BUSYBOX=%q\n' "$busybox"
    printf 'VM_HEADERS=%q\n' "$headers_dir"
  } >"$cache/kernel-$k.env.new"
  mv "$cache/kernel-$k.env.new" "$cache/kernel-$k.env"
  [ -n "$env_k" ] || note "$k: $img_pkg $img_ver${headers_dir:+, headers in $headers_dir}"
done

if [ -n "$env_k" ]; then cat "$cache/kernel-$env_k.env"; fi
