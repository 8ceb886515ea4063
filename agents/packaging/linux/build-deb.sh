#!/bin/sh
# Builds intune-compliance-agent_<version>_all.deb with dpkg-deb from the files beside this
# script and agents/posix/compliance-agent.sh (the version is the agent's VERSION).
# usage: build-deb.sh OUTPUT_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent="$here/../../posix/compliance-agent.sh"
out=${1:?usage: build-deb.sh OUTPUT_DIR}
version=$(sed -n 's/^VERSION=//p' "$agent")
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
install -d -m 755 "$root/DEBIAN" "$root/usr/lib/intune-compliance-agent" \
  "$root/lib/systemd/system" "$root/usr/share/doc/intune-compliance-agent"
install -d -m 700 "$root/etc/intune-compliance-agent"
install -m 755 "$agent" "$root/usr/lib/intune-compliance-agent/compliance-agent.sh"
install -m 644 "$here/intune-compliance-agent.service" "$here/intune-compliance-agent.timer" \
  "$root/lib/systemd/system/"
install -m 600 "$here/agent.conf" "$root/etc/intune-compliance-agent/agent.conf"
printf '%s\n' "Intune compliance-script bridge agent $version: see docs/agents.md in its repository." \
  >"$root/usr/share/doc/intune-compliance-agent/README"
for script in postinst prerm postrm; do
  install -m 755 "$here/$script" "$root/DEBIAN/$script"
done
printf '%s\n' /etc/intune-compliance-agent/agent.conf >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<CONTROL
Package: intune-compliance-agent
Version: $version
Architecture: all
Maintainer: Intune compliance-script bridge maintainers <root@localhost>
Depends: curl, openssl
Recommends: systemd
Section: admin
Priority: optional
Description: Intune compliance-script bridge device agent
 Runs an Intune custom compliance detection script on a schedule and delivers
 its result to the compliance-script bridge, spooling reports it cannot send.
CONTROL
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/intune-compliance-agent_${version}_all.deb" >/dev/null
printf '%s\n' "$out/intune-compliance-agent_${version}_all.deb"
