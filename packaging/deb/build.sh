#!/usr/bin/env bash
# Build the Debian package nox_<version>_<arch>.deb from a checkout, without debhelper:
# dpkg-deb on a staged tree, with the maintainer scripts beside this file.
#
#   packaging/deb/build.sh [--no-build] [--bin-dir DIR] [--out DIR]
#
# Installs: /usr/bin/nox-frontend, /usr/libexec/nox/nox-executor, /usr/sbin/nox-doctor,
# the units in /lib/systemd/system, /usr/lib/sysusers.d/nox.conf, /etc/nox/nox.toml
# (conffile), docs and examples in /usr/share/doc/nox. postinst creates the users and a
# token and starts the two sockets; `apt purge nox` removes token, workspaces and state.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "$here/../.." && pwd)"
build=1 out="$src/target/debian"
bin_dir="${CARGO_TARGET_DIR:-$src/target}/release"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$build" -eq 1 ]; then
  (cd "$src" && cargo build --release --locked --bin nox-frontend --bin nox-executor --bin noxctl)
fi
for b in nox-frontend nox-executor noxctl; do
  [ -x "$bin_dir/$b" ] || { echo "build.sh: $bin_dir/$b not found" >&2; exit 1; }
done

version=$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["workspace"]["package"]["version"])' "$src/Cargo.toml")
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binaries use.
glibc=$( { objdump -T "$bin_dir/nox-frontend" "$bin_dir/nox-executor" 2>/dev/null || true; } \
  | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
glibc=${glibc:-2.34}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/nox"
install -D -m 0755 "$bin_dir/nox-frontend" "$pkg/usr/bin/nox-frontend"
install -D -m 0755 "$bin_dir/nox-executor" "$pkg/usr/libexec/nox/nox-executor"
install -D -m 0755 "$src/packaging/nox-doctor" "$pkg/usr/sbin/nox-doctor"
install -D -m 0755 "$bin_dir/noxctl" "$pkg/usr/bin/noxctl"
strip --strip-unneeded "$pkg/usr/bin/nox-frontend" "$pkg/usr/libexec/nox/nox-executor" "$pkg/usr/bin/noxctl" 2>/dev/null || true
# noxctl's man page and completions, generated from its CLI definition.
install -d "$pkg/usr/share/man/man1" "$pkg/usr/share/bash-completion/completions" \
  "$pkg/usr/share/zsh/vendor-completions" "$pkg/usr/share/fish/vendor_completions.d"
"$bin_dir/noxctl" man | gzip -9n > "$pkg/usr/share/man/man1/noxctl.1.gz"
"$bin_dir/noxctl" completions bash > "$pkg/usr/share/bash-completion/completions/noxctl"
"$bin_dir/noxctl" completions zsh > "$pkg/usr/share/zsh/vendor-completions/_noxctl"
"$bin_dir/noxctl" completions fish > "$pkg/usr/share/fish/vendor_completions.d/noxctl.fish"
for u in nox-views.service nox-executor.socket nox-executor.service nox-frontend.socket nox-frontend.service; do
  install -D -m 0644 "$src/systemd/$u" "$pkg/lib/systemd/system/$u"
done
install -D -m 0644 "$src/systemd/nox.sysusers" "$pkg/usr/lib/sysusers.d/nox.conf"
install -D -m 0644 "$src/packaging/nox.toml" "$pkg/etc/nox/nox.toml"
doc="$pkg/usr/share/doc/nox"
install -D -m 0644 "$src/packaging/nox.toml" "$doc/nox.toml.example"
install -m 0644 "$src/packaging/Caddyfile" "$doc/Caddyfile"
install -m 0644 "$src/packaging/nginx/nox.conf" "$doc/nginx-nox.conf"
install -m 0644 "$src/packaging/nginx/nox-scaleout.conf" "$doc/nginx-nox-scaleout.conf"
install -m 0755 "$src/packaging/ufw.sh" "$doc/ufw.sh"
[ -f "$src/packaging/DEPLOY.md" ] && install -m 0644 "$src/packaging/DEPLOY.md" "$doc/DEPLOY.md"
cat > "$doc/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nox
Source: $(sed -n 's/^repository = "\(.*\)"/\1/p' "$src/Cargo.toml")

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPY

install -d -m 0755 "$pkg/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$pkg/DEBIAN/$s"; done
echo /etc/nox/nox.toml > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: nox
Version: $version
Architecture: $arch
Maintainer: nox maintainers <nox@example.invalid>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: libc6 (>= $glibc), systemd (>= 249), init-system-helpers (>= 1.54), python3, curl
Recommends: iproute2
Suggests: caddy | nginx, ufw
Description: run untrusted Python and shell jobs for HTTP clients, sandboxed
 nox is two daemons: nox-frontend, an unprivileged HTTP API (socket-activated,
 no network of its own), and nox-executor, a root socket-activated executor
 with a bounded capability set that runs each job as the user nox-sandbox
 under seccomp, Landlock, rlimits and a timeout, with no network at all.
 nox-doctor checks an installation.
CONTROL

mkdir -p "$out"
deb="$out/nox_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  &/p'
