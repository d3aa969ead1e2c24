#!/usr/bin/env bash
# Firewall for a nox host behind Caddy or nginx (ufw): allow SSH, HTTP and HTTPS in, keep
# nox-frontend's port (8080) closed from outside. The frontend socket listens on
# 127.0.0.1 only, so this is a second fence, for the day someone adds ListenStream=0.0.0.0:8080.
#
#   sudo packaging/ufw.sh [--ssh-port N] [--frontend-port N] [--dry-run]
set -euo pipefail
ssh_port=22 frontend_port=8080 run=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ssh-port) ssh_port="$2"; shift ;;
    --frontend-port) frontend_port="$2"; shift ;;
    --dry-run) run=(echo "would run:") ;;
    -h|--help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "ufw.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v ufw >/dev/null || { echo "ufw.sh: ufw is not installed (apt install ufw)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || [ ${#run[@]} -gt 0 ] || { echo "ufw.sh: run as root" >&2; exit 1; }

"${run[@]}" ufw default deny incoming
"${run[@]}" ufw default allow outgoing
# SSH first, so enabling the firewall does not cut this session.
"${run[@]}" ufw allow "$ssh_port/tcp" comment 'ssh'
"${run[@]}" ufw allow 80/tcp comment 'http (ACME, redirect to https)'
"${run[@]}" ufw allow 443/tcp comment 'https (Caddy/nginx in front of nox)'
# Loopback traffic (the proxy talking to nox-frontend) is not filtered by these rules.
"${run[@]}" ufw deny "$frontend_port/tcp" comment 'nox-frontend: only via the proxy'
"${run[@]}" ufw --force enable
"${run[@]}" ufw status verbose
