#!/bin/sh
# Lays out the Intune Win32 app source folder in OUTPUT_DIR/IntuneComplianceAgent (the agent,
# install.ps1, uninstall.ps1, the scheduled task) and OUTPUT_DIR/detect.ps1 (uploaded as the
# custom detection script). On Windows, Microsoft's IntuneWinAppUtil.exe then makes the
# .intunewin: IntuneWinAppUtil.exe -c OUTPUT_DIR\IntuneComplianceAgent -s install.ps1 -o OUT.
# Add config.json (and Detect-Compliance.ps1) to the folder first, or deploy them separately.
# usage: build-win32.sh OUTPUT_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent="$here/../../windows/IntuneComplianceAgent.ps1"
out=${1:?usage: build-win32.sh OUTPUT_DIR}
version=$(sed -n "s/^\$AgentVersion = '\([0-9.]*\)'.*/\1/p" "$agent")
[ -n "$version" ] || { echo "no \$AgentVersion in $agent" >&2; exit 1; }
app="$out/IntuneComplianceAgent"
rm -rf "$app"
mkdir -p "$app"
cp "$agent" "$here/install.ps1" "$here/uninstall.ps1" "$here/IntuneComplianceAgent.task.xml" "$app/"
sed "s/'__VERSION__'/'$version'/" "$here/detect.ps1" >"$out/detect.ps1"
printf '%s\n' "$app" "$out/detect.ps1"
