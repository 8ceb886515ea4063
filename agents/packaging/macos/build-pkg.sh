#!/bin/sh
# Lays out the macOS package payload (the agent, its config, the LaunchDaemon) and its scripts
# in OUTPUT_DIR; on macOS, pkgbuild then makes IntuneComplianceAgent-<version>.pkg from them
# (sign it with productsign before uploading it to Intune as a macOS app, PKG).
# usage: build-pkg.sh OUTPUT_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent="$here/../../posix/compliance-agent.sh"
out=${1:?usage: build-pkg.sh OUTPUT_DIR}
version=$(sed -n 's/^VERSION=//p' "$agent")
payload="$out/payload"
app="$payload/Library/Application Support/IntuneComplianceAgent"
rm -rf "$payload" "$out/scripts"
mkdir -p "$app" "$payload/Library/LaunchDaemons" "$out/scripts"
cp "$agent" "$app/compliance-agent.sh"
cp "$here/agent.conf" "$app/agent.conf"
cp "$here/com.intunecompliancebridge.agent.plist" "$payload/Library/LaunchDaemons/"
cp "$here/scripts/postinstall" "$out/scripts/postinstall"
chmod 755 "$app/compliance-agent.sh" "$out/scripts/postinstall"
chmod 600 "$app/agent.conf"
chmod 644 "$payload/Library/LaunchDaemons/com.intunecompliancebridge.agent.plist"
if command -v pkgbuild >/dev/null 2>&1; then
  pkgbuild --root "$payload" --scripts "$out/scripts" --identifier com.intunecompliancebridge.agent \
    --version "$version" --install-location / "$out/IntuneComplianceAgent-$version.pkg"
else
  printf '%s\n' "pkgbuild not found (it runs on macOS only): payload and scripts are in $out" >&2
fi
