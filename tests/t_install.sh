#!/usr/bin/env bash
# t_install.sh - `make install` into a temporary DESTDIR, then build and run
# a program against the installed library through pkg-config alone, and
# check `make uninstall` removes every file it installed.
set -euo pipefail
if [ -n "${SAN:-}" ]; then
  echo "SKIP: install test runs only in the plain build (SAN=$SAN)"; exit 77
fi
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=/opt/libdirty-test
dest="$tmp/root"

make -s -C "$top" install DESTDIR="$dest" PREFIX="$prefix" >/dev/null
libdir="$dest$prefix/lib"
for f in libdirty.so libdirty.so.0 libdirty.a pkgconfig/libdirty.pc \
         libdirty-guest.so libdirty-guest.so.0 libdirty-guest.a pkgconfig/libdirty-guest.pc; do
  [ -e "$libdir/$f" ] || { echo "FAIL: $libdir/$f not installed"; exit 1; }
done
for h in libdirty.h libdirty/proto.h libdirty/guest.h; do
  [ -e "$dest$prefix/include/$h" ] || { echo "FAIL: header $h not installed"; exit 1; }
done
soname=$(readelf -d "$libdir/libdirty.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libdirty.so.0 ] || { echo "FAIL: soname is '$soname', want libdirty.so.0"; exit 1; }
# Only the API is exported: no internal symbol leaks out of the .so.
leaks=$(nm -D --defined-only "$libdir/libdirty.so" | awk '$2 ~ /[TDB]/ {print $3}' | grep -v '^dirty_' | grep -v '^LIBDIRTY_' || true)
[ -z "$leaks" ] || { echo "FAIL: non-API symbols exported: $leaks"; exit 1; }
# The guest library stands alone: only dirty_guest_*, nothing of the host.
gleaks=$(nm -D --defined-only "$libdir/libdirty-guest.so" | awk '$2 ~ /[TDB]/ {print $3}' | grep -v '^dirty_guest_' | grep -v '^LIBDIRTY_' || true)
[ -z "$gleaks" ] || { echo "FAIL: libdirty-guest exports more than dirty_guest_*: $gleaks"; exit 1; }
hosted=$(nm -D --defined-only "$libdir/libdirty.so" | awk '{print $3}' | grep '^dirty_guest_' || true)
[ -z "$hosted" ] || { echo "FAIL: the host library carries guest symbols: $hosted"; exit 1; }
needed=$(readelf -d "$libdir/libdirty-guest.so" | grep NEEDED || true)
case "$needed" in *libdirty.so*) echo "FAIL: libdirty-guest needs the host library"; exit 1 ;; esac

cat > "$tmp/app.c" <<'C'
#include <libdirty.h>
#include <libdirty/proto.h>
#include <stdio.h>
int main(void)
{
	struct dirty_view *v;
	struct dirty_claim *cl;
	struct dirty_run run;
	if (dirty_view_new(&v) || dirty_view_add_region(v, 0, 1 << 20, 0, 0))
		return 1;
	dirty_view_mark(v, 8192, 4096);
	if (dirty_claim_new(v, &cl) || dirty_claim_next(cl, &run, 1) != 1)
		return 2;
	printf("claimed %#llx +%#llx\n", (unsigned long long)run.gpa, (unsigned long long)run.len);
	dirty_claim_free(cl);
	dirty_view_free(v);
	return run.gpa == 8192 && run.len == 4096 ? 0 : 3;
}
C
# The .pc names the real prefix; point pkg-config at the staged tree.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$dest"
flags=$(pkg-config --cflags --libs libdirty)
echo "pkg-config --cflags --libs libdirty: $flags"
cc -std=c11 -Wall -Werror -o "$tmp/app" "$tmp/app.c" $flags
out=$(LD_LIBRARY_PATH="$libdir" "$tmp/app")
echo "$out"
[ "$out" = "claimed 0x2000 +0x1000" ] || { echo "FAIL: unexpected output"; exit 1; }
# Not `ldd | grep -q`: grep's early exit can SIGPIPE ldd, which pipefail reports.
loaded=$(LD_LIBRARY_PATH="$libdir" ldd "$tmp/app")
case "$loaded" in
  *"$libdir/libdirty.so.0"*) ;;
  *) echo "FAIL: app did not load the installed .so"; echo "$loaded"; exit 1 ;;
esac

# A guest program builds against libdirty-guest alone.
cat > "$tmp/guest.c" <<'C'
#include <libdirty/guest.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
	static char region[8192];
	struct dirty_guest *g;
	int r = dirty_guest_open_mem(region, sizeof(region), &g);
	printf("%d %s\n", r, dirty_guest_last_error());
	return r == -EPROTO && strstr(dirty_guest_last_error(), "not a libdirty region") ? 0 : 1;
}
C
gflags=$(pkg-config --cflags --libs libdirty-guest)
echo "pkg-config --cflags --libs libdirty-guest: $gflags"
cc -std=c11 -Wall -Werror -D_GNU_SOURCE -include errno.h -o "$tmp/guest" "$tmp/guest.c" $gflags
LD_LIBRARY_PATH="$libdir" "$tmp/guest" || { echo "FAIL: the guest program did not run as expected"; exit 1; }
loaded=$(LD_LIBRARY_PATH="$libdir" ldd "$tmp/guest")
case "$loaded" in
  *"$libdir/libdirty-guest.so.0"*) ;;
  *) echo "FAIL: guest app did not load the installed libdirty-guest"; echo "$loaded"; exit 1 ;;
esac
case "$loaded" in *"libdirty.so"*) echo "FAIL: guest app loaded the host library"; exit 1 ;; esac

make -s -C "$top" uninstall DESTDIR="$dest" PREFIX="$prefix" >/dev/null
left=$(find "$dest" -type f -o -type l)
[ -z "$left" ] || { echo "FAIL: uninstall left: $left"; exit 1; }
echo "install, pkg-config build and uninstall OK"
