#Requires -Version 5.1
<#
.SYNOPSIS
    Intune Win32 app detection rule (custom script) for the compliance-script bridge agent.

.DESCRIPTION
    Installed means: the scheduled task exists, the agent file is there, and the recorded
    version is this package's. Intune counts exit code 0 with output as installed.
    build-win32.sh writes the version in.
#>
$expected = '__VERSION__'
$root = Join-Path $env:ProgramData 'IntuneComplianceAgent'
$task = Get-ScheduledTask -TaskName 'IntuneComplianceAgent' -ErrorAction SilentlyContinue
$recorded = (Get-ItemProperty -LiteralPath 'HKLM:\SOFTWARE\IntuneComplianceAgent' -Name 'Version' -ErrorAction SilentlyContinue).Version
if ($task -and (Test-Path -LiteralPath (Join-Path $root 'IntuneComplianceAgent.ps1')) -and $recorded -eq $expected) {
    Write-Output "IntuneComplianceAgent $recorded installed"
    exit 0
}
exit 1
