#Requires -Version 5.1
<#
.SYNOPSIS
    Intune Win32 app install for the compliance-script bridge agent (docs/agents.md).

.DESCRIPTION
    Run by Intune as SYSTEM with 64-bit PowerShell:
    %SystemRoot%\Sysnative\WindowsPowerShell\v1.0\powershell.exe -NoProfile -ExecutionPolicy Bypass -File install.ps1
    Copies the agent (and config.json and Detect-Compliance.ps1 when the package has them; an
    existing config.json is kept across upgrades) to %ProgramData%\IntuneComplianceAgent,
    readable by SYSTEM and Administrators only, registers the SYSTEM scheduled task and records
    the version for the detection script.
#>
$ErrorActionPreference = 'Stop'
$source = $PSScriptRoot
$root = Join-Path $env:ProgramData 'IntuneComplianceAgent'
$agentFile = Join-Path $source 'IntuneComplianceAgent.ps1'
$version = ([regex]::Match((Get-Content -LiteralPath $agentFile -Raw), "\`$AgentVersion = '([0-9.]+)'")).Groups[1].Value
if (-not $version) {
    throw "no `$AgentVersion in $agentFile"
}

# SYSTEM and Administrators only: the configuration holds the HMAC secret.
$security = New-Object System.Security.AccessControl.DirectorySecurity
$security.SetAccessRuleProtection($true, $false)
foreach ($sid in 'S-1-5-18', 'S-1-5-32-544') {
    $identity = New-Object System.Security.Principal.SecurityIdentifier($sid)
    $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
        $identity, 'FullControl', 'ContainerInherit, ObjectInherit', 'None', 'Allow')
    $security.AddAccessRule($rule)
}
if (-not (Test-Path -LiteralPath $root)) {
    [void][System.IO.Directory]::CreateDirectory($root, $security)
}
else {
    Set-Acl -LiteralPath $root -AclObject $security
}

Copy-Item -LiteralPath $agentFile -Destination $root -Force
foreach ($optional in 'Detect-Compliance.ps1', 'config.json') {
    $packaged = Join-Path $source $optional
    $installed = Join-Path $root $optional
    if ((Test-Path -LiteralPath $packaged) -and -not ($optional -eq 'config.json' -and (Test-Path -LiteralPath $installed))) {
        Copy-Item -LiteralPath $packaged -Destination $installed -Force
    }
}

$xml = Get-Content -LiteralPath (Join-Path $source 'IntuneComplianceAgent.task.xml') -Raw
$xml = $xml.Replace('%ProgramData%', $env:ProgramData)
Register-ScheduledTask -TaskName 'IntuneComplianceAgent' -Xml $xml -Force | Out-Null

$key = 'HKLM:\SOFTWARE\IntuneComplianceAgent'
if (-not (Test-Path -LiteralPath $key)) {
    New-Item -Path $key -Force | Out-Null
}
Set-ItemProperty -LiteralPath $key -Name 'Version' -Value $version
exit 0
