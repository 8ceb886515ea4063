#Requires -Version 5.1
<#
.SYNOPSIS
    Intune Win32 app uninstall for the compliance-script bridge agent (docs/agents.md).

.DESCRIPTION
    Run by Intune as SYSTEM with 64-bit PowerShell (Sysnative, as install.ps1). Removes the
    scheduled task, the version record and %ProgramData%\IntuneComplianceAgent, including
    reports not yet sent (status.json in that folder says how many there were).
#>
$ErrorActionPreference = 'Stop'
$task = Get-ScheduledTask -TaskName 'IntuneComplianceAgent' -ErrorAction SilentlyContinue
if ($task) {
    Unregister-ScheduledTask -TaskName 'IntuneComplianceAgent' -Confirm:$false
}
Remove-Item -LiteralPath 'HKLM:\SOFTWARE\IntuneComplianceAgent' -Recurse -Force -ErrorAction SilentlyContinue
Remove-Item -LiteralPath (Join-Path $env:ProgramData 'IntuneComplianceAgent') -Recurse -Force -ErrorAction SilentlyContinue
exit 0
