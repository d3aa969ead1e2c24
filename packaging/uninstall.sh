#!/usr/bin/env bash
# Remove what packaging/install.sh installed, as root.
#
#   sudo packaging/uninstall.sh           stop and remove nox; keep /etc/nox and /var/lib/nox
#   sudo packaging/uninstall.sh --purge   also remove /etc/nox (config, tokens), /var/lib/nox
#                                         (workspaces), the users nox-frontend, nox-sandbox
#                                         and the group nox
#
# Idempotent: what is already gone is reported "absent". For the Debian package use
# `apt remove nox` / `apt purge nox` instead.
set -euo pipefail

purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  "") ;;
  -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }

UNIT_DIR=/usr/local/lib/systemd/system
UNITS=(nox-frontend.socket nox-frontend.service nox-executor.socket nox-executor.service nox-views.service)
report() { printf '  %-44s %s\n' "$1" "$2"; }

echo "==> nox uninstall"
if [ -d /run/systemd/system ]; then
  active=()
  for u in nox-frontend.service nox-frontend.socket nox-executor.service nox-executor.socket; do
    if systemctl is-active --quiet "$u"; then active+=("$u"); report "stop $u" stopped
    else report "stop $u" "unchanged (inactive)"; fi
  done
  # One transaction: a service stopped alone would be restarted by its socket.
  [ ${#active[@]} -eq 0 ] || systemctl stop "${active[@]}"
  for u in nox-frontend.socket nox-executor.socket; do
    if systemctl is-enabled --quiet "$u" 2>/dev/null; then systemctl disable --quiet "$u"; report "disable $u" disabled
    else report "disable $u" "unchanged (not enabled)"; fi
  done
  systemctl reset-failed nox-frontend.service nox-executor.service 2>/dev/null || true
fi

remove() {
  if [ -e "$1" ] || [ -L "$1" ]; then rm -rf -- "$1"; report "$1" removed; else report "$1" absent; fi
}
for u in "${UNITS[@]}"; do remove "$UNIT_DIR/$u"; done
remove /usr/local/lib/sysusers.d/nox.conf
remove /usr/bin/nox-frontend
remove /usr/bin/noxctl
remove /usr/local/share/man/man1/noxctl.1
remove /usr/share/bash-completion/completions/noxctl
remove /usr/share/zsh/vendor-completions/_noxctl
remove /usr/share/fish/vendor_completions.d/noxctl.fish
remove /usr/libexec/nox
remove /usr/sbin/nox-doctor
remove /usr/share/doc/nox
[ -d /run/systemd/system ] && systemctl daemon-reload && report "systemctl daemon-reload" "done"

if [ "$purge" -eq 1 ]; then
  remove /etc/nox
  remove /var/lib/nox
  remove /var/lib/private/nox
  for u in nox-frontend nox-sandbox; do
    if getent passwd "$u" >/dev/null; then userdel "$u"; report "user $u" removed
    else report "user $u" absent; fi
  done
  if getent group nox >/dev/null; then groupdel nox; report "group nox" removed
  else report "group nox" absent; fi
  echo "==> nox removed, with its configuration, tokens and workspaces"
else
  [ -e /etc/nox ] && report /etc/nox "kept (--purge removes it)"
  [ -e /var/lib/nox ] && report /var/lib/nox "kept (--purge removes it)"
  echo "==> nox removed; configuration and workspaces kept"
fi
