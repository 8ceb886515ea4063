#Requires -Version 5.1
#Requires -PSEdition Desktop
<#
.SYNOPSIS
    Intune compliance-script bridge: reference device agent for Windows (Windows PowerShell 5.1).

.DESCRIPTION
    Runs a detection script (or takes the output of one that already ran), writes the report into
    a spool directory first, then sends every spooled report oldest first. The device id is the
    subject CN of the Intune MDM device certificate: the one the enrolment names
    (HKLM:\SOFTWARE\Microsoft\Enrollments\*\DMPCertThumbPrint), else the newest valid one issued
    by 'CN=Microsoft Intune MDM Device CA' in LocalMachine\My. That certificate is offered for
    mutual TLS, and when HmacSecret is configured each attempt is also signed with Standard
    Webhooks (HMAC-SHA256; two secrets during a rotation).

    What it does with each answer is the agent-API contract (agents/answer-vectors.json): 2xx
    and a 502 whose problem type ends in graph-* are done; 400, 413, 415 and 422 are refused and
    dropped; anything else (401, 403, 404, 407, 429, other 5xx, 3xx, no answer) keeps the report,
    in order, until it is older than MaxAgeSeconds. Redirects are never followed.

    Runs as SYSTEM (Intune platform scripts and Remediations do), which can use the certificate's
    private key. Deployment, configuration and logs: docs/agents.md.
    Protocol vectors: agents/test-vectors.json, agents/answer-vectors.json.

.PARAMETER ScriptPath
    The detection script to run (.ps1). Defaults to ScriptPath in the configuration file.

.PARAMETER OutputFile
    Send the result of a script that already ran: the file holding its stdout (UTF-8).

.PARAMETER ExitCode
    With -OutputFile: the script's exit code.

.PARAMETER ErrorFile
    With -OutputFile: the file holding the script's stderr (UTF-8).

.PARAMETER Flush
    Send the spooled reports only.

.PARAMETER ScriptId
    The deviceComplianceScript id. Defaults to ScriptId in the configuration file.

.PARAMETER ConfigPath
    The JSON configuration file.

.EXAMPLE
    powershell.exe -NoProfile -ExecutionPolicy Bypass -File IntuneComplianceAgent.ps1
#>
[CmdletBinding(DefaultParameterSetName = 'Run')]
param(
    [Parameter(ParameterSetName = 'Run')]
    [string]$ScriptPath,

    [Parameter(ParameterSetName = 'Submit', Mandatory)]
    [string]$OutputFile,

    [Parameter(ParameterSetName = 'Submit')]
    [int]$ExitCode = 0,

    [Parameter(ParameterSetName = 'Submit')]
    [string]$ErrorFile,

    [Parameter(ParameterSetName = 'Flush', Mandatory)]
    [switch]$Flush,

    [string]$ScriptId,

    [string]$ConfigPath = (Join-Path $env:ProgramData 'IntuneComplianceAgent\config.json')
)

$ErrorActionPreference = 'Stop'
$ParameterSet = $PSCmdlet.ParameterSetName
$AgentVersion = '1.1.0'
$UserAgent = "intune-compliance-agent/$AgentVersion (windows)"
$IngestPath = '/api/v1/compliance-script-results'
$IntuneDeviceCa = 'CN=Microsoft Intune MDM Device CA'
$EnrollmentsKey = 'HKLM:\SOFTWARE\Microsoft\Enrollments'
# Exit statuses: "stuck" and "sent" never share one (docs/agents.md, "Exit status").
$ExitSent = 0
$ExitConfiguration = 2
$ExitDropped = 3
$ExitBusy = 4
$ExitSpooled = 75
# The agent-API contract: the report itself is refused; any other status keeps it.
$RefusedStatuses = @(400, 413, 415, 422)
# <sequence>.<created, Unix seconds>.<reportId>.json; agent 1.0 wrote <sequence>-<reportId>.json.
$SpoolName = '^(?<seq>[0-9]{10})(\.(?<created>[0-9]{10})\.|-)(?<id>[A-Za-z0-9._-]{1,64})\.json$'
$JsonEscapes = @{ 8 = '\b'; 9 = '\t'; 10 = '\n'; 12 = '\f'; 13 = '\r' }
$Random = New-Object System.Random
$Utf8NoBom = New-Object System.Text.UTF8Encoding($false)

# --- logging -------------------------------------------------------------------------------------

function Write-AgentLog {
    <# One line to the log file (kept under 1 MiB plus one previous file) and the verbose stream.
       Two runs can write at once (a Remediation and the scheduled task): the file is opened
       shared, retried briefly, and a line that still cannot be written never fails the run. #>
    param([string]$Level, [string]$Message)
    $line = '{0} compliance-agent[{1}] {2}: {3}' -f [DateTime]::UtcNow.ToString(
        "yyyy-MM-dd'T'HH:mm:ss'Z'", [Globalization.CultureInfo]::InvariantCulture), $PID, $Level, $Message
    Write-Verbose $line
    if (-not $script:LogFile) {
        return
    }
    $bytes = $script:Utf8NoBom.GetBytes($line + "`r`n")
    for ($try = 1; $try -le 5; $try++) {
        try {
            $stream = New-Object System.IO.FileStream($script:LogFile, [System.IO.FileMode]::Append,
                [System.IO.FileAccess]::Write, [System.IO.FileShare]'ReadWrite, Delete')
            try {
                $stream.Write($bytes, 0, $bytes.Length)
            }
            finally {
                $stream.Dispose()
            }
            return
        }
        catch {
            Start-Sleep -Milliseconds (25 * $try)
        }
    }
}

function Initialize-Log {
    param([string]$Path)
    New-PrivateDirectory -Path (Split-Path -Parent $Path)
    try {
        if ((Test-Path -LiteralPath $Path) -and (Get-Item -LiteralPath $Path).Length -gt 1048576) {
            Move-Item -LiteralPath $Path -Destination "$Path.1" -Force
        }
    }
    catch {
        # Another run is rotating or writing it: the next run rotates.
        $null = $_
    }
    $script:LogFile = $Path
}

function New-PrivateDirectory {
    <# Created readable by SYSTEM and Administrators only: reports and logs are the device's. #>
    param([string]$Path)
    if (Test-Path -LiteralPath $Path) {
        return
    }
    $security = New-Object System.Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    foreach ($sid in 'S-1-5-18', 'S-1-5-32-544') {
        $identity = New-Object System.Security.Principal.SecurityIdentifier($sid)
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
            $identity, 'FullControl', 'ContainerInherit, ObjectInherit', 'None', 'Allow')
        $security.AddAccessRule($rule)
    }
    [void][System.IO.Directory]::CreateDirectory($Path, $security)
}

# --- configuration -------------------------------------------------------------------------------

function Read-AgentConfig {
    <# The JSON file's settings over the defaults. An unknown name is kept aside and logged as a
       warning (a setting from a newer agent version must not stop an older one). #>
    param([string]$Path)
    $root = Join-Path $env:ProgramData 'IntuneComplianceAgent'
    $config = [ordered]@{
        BridgeUrl                  = $null
        ScriptId                   = $null
        ScriptPath                 = $null
        HmacSecret                 = $null
        Proxy                      = $null
        ProxyUseDefaultCredentials = $false
        SpoolDirectory             = Join-Path $root 'Spool'
        StatusFile                 = Join-Path $root 'status.json'
        SpoolMax                   = 200
        MaxAgeSeconds              = 604800
        ScriptTimeoutSeconds       = 300
        MaxAttempts                = 5
        BackoffBaseSeconds         = 2
        BackoffMaxSeconds          = 60
        MaxRetryAfterSeconds       = 300
        MaxRunSeconds              = 900
        HttpTimeoutSeconds         = 60
        MaxOutputChars             = 131072
        LogFile                    = Join-Path $root 'Logs\agent.log'
    }
    if (-not (Test-Path -LiteralPath $Path)) {
        throw "the configuration file $Path does not exist"
    }
    $file = Get-Content -LiteralPath $Path -Raw -Encoding UTF8 | ConvertFrom-Json
    $unknown = @()
    foreach ($property in $file.PSObject.Properties) {
        if (-not $config.Contains($property.Name)) {
            $unknown += $property.Name
            continue
        }
        $config[$property.Name] = $property.Value
    }
    $config['UnknownSettings'] = $unknown
    [pscustomobject]$config
}

function Join-BridgeUrl {
    <# The ingest URL from BridgeUrl, as agents/answer-vectors.json says: https only (plain http
       to 127.0.0.1 or localhost), the ingest path added unless it is already there. $null when
       the address is not allowed. #>
    param([string]$BridgeUrl)
    if ($BridgeUrl -cnotmatch '^(https://.+|http://(127\.0\.0\.1|localhost)([:/].*)?)$') { return $null }
    $base = $BridgeUrl.TrimEnd('/')
    if ($base.EndsWith($IngestPath, [StringComparison]::Ordinal)) { return $base }
    $base + $IngestPath
}

function Get-HmacSecrets {
    <# One secret, or two separated by a space during a rotation (old and new). #>
    param([string]$Value)
    @($Value -split ' ' | Where-Object { $_ })
}

function Test-AgentConfig {
    param($Config)
    if (-not (Join-BridgeUrl -BridgeUrl ([string]$Config.BridgeUrl))) {
        throw 'BridgeUrl must be the https:// address of the bridge'
    }
    $guid = [guid]::Empty
    if (-not [guid]::TryParseExact([string]$Config.ScriptId, 'D', [ref]$guid)) {
        throw 'ScriptId (-ScriptId or the configuration file) must be the script''s GUID'
    }
    $secrets = Get-HmacSecrets -Value ([string]$Config.HmacSecret)
    if ($secrets.Count -gt 2) {
        throw 'HmacSecret holds at most two secrets (old and new, separated by a space)'
    }
    foreach ($secret in $secrets) {
        if (-not $secret.StartsWith('whsec_', [StringComparison]::Ordinal)) {
            throw 'HmacSecret must start with whsec_'
        }
        $key = [Convert]::FromBase64String($secret.Substring(6))
        if ($key.Length -lt 24 -or $key.Length -gt 64) {
            throw 'HmacSecret must hold 24 to 64 bytes of base64 after whsec_'
        }
    }
    foreach ($name in 'SpoolMax', 'ScriptTimeoutSeconds', 'MaxAttempts', 'MaxOutputChars', 'MaxAgeSeconds') {
        if ([long]$Config.$name -lt 1) {
            throw "$name must be at least 1"
        }
    }
}

# --- the device ----------------------------------------------------------------------------------

function Get-EnrolledThumbprints {
    <# The MDM certificate thumbprints the enrolments name (DMPCertThumbPrint), checked as SHA-1
       hex: the enrolment's own certificate, rather than any certificate with the right issuer. #>
    $found = @()
    foreach ($key in @(Get-ChildItem -LiteralPath $EnrollmentsKey -ErrorAction SilentlyContinue)) {
        $value = (Get-ItemProperty -LiteralPath $key.PSPath -Name 'DMPCertThumbPrint' -ErrorAction SilentlyContinue).DMPCertThumbPrint
        if ([string]$value -match '^[0-9A-Fa-f]{40}$') {
            $found += ([string]$value).ToUpperInvariant()
        }
    }
    $found
}

function Get-IntuneDeviceCertificate {
    <# The enrolment's MDM device certificate with its private key; without one the enrolment
       names, the newest valid one issued by the Intune MDM device CA (agent 1.0's rule). #>
    $now = Get-Date
    $usable = @(Get-ChildItem -Path 'Cert:\LocalMachine\My' |
            Where-Object { $_.HasPrivateKey -and $_.NotBefore -le $now -and $_.NotAfter -gt $now })
    $enrolled = @(Get-EnrolledThumbprints)
    $certificate = $usable | Where-Object { $enrolled -contains $_.Thumbprint } |
        Sort-Object -Property NotBefore -Descending | Select-Object -First 1
    $rule = 'the enrolment (DMPCertThumbPrint)'
    if (-not $certificate) {
        $certificate = $usable | Where-Object { $_.Issuer -eq $IntuneDeviceCa } |
            Sort-Object -Property NotBefore -Descending | Select-Object -First 1
        $rule = "the newest valid certificate issued by '$IntuneDeviceCa' (no enrolment names one)"
    }
    if (-not $certificate) {
        throw "no valid Intune MDM device certificate with a private key in LocalMachine\My: is the device enrolled, and is this running as SYSTEM?"
    }
    Write-AgentLog info ("certificate {0} from {1}, valid until {2:yyyy-MM-dd}" -f $certificate.Thumbprint, $rule, $certificate.NotAfter)
    $certificate
}

function Get-IntuneDeviceId {
    <# The subject CN of the MDM device certificate is the Intune managedDevice id. #>
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate)
    $commonName = $Certificate.GetNameInfo(
        [System.Security.Cryptography.X509Certificates.X509NameType]::SimpleName, $false)
    $guid = [guid]::Empty
    if (-not [guid]::TryParseExact($commonName, 'D', [ref]$guid)) {
        throw "the MDM device certificate's subject CN is not a device id (a GUID)"
    }
    $guid.ToString('D')
}

# --- signing (Standard Webhooks v1) --------------------------------------------------------------

function Get-WebhookSignature {
    <# v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), key = base64 after whsec_.
       Kept small and self-contained: tests/test_agent_powershell.py runs agents/test-vectors.json
       through a line-by-line transcription of these statements. #>
    param(
        [Parameter(Mandatory)][string]$Secret,
        [Parameter(Mandatory)][string]$MessageId,
        [Parameter(Mandatory)][long]$Timestamp,
        [Parameter(Mandatory)][string]$Body
    )
    $key = [Convert]::FromBase64String($Secret.Substring('whsec_'.Length))
    $toSign = '{0}.{1}.{2}' -f $MessageId, $Timestamp, $Body
    $bytes = [System.Text.Encoding]::UTF8.GetBytes($toSign)
    $hmac = [System.Security.Cryptography.HMACSHA256]::new($key)
    $hash = $hmac.ComputeHash($bytes)
    $hmac.Dispose()
    'v1,' + [Convert]::ToBase64String($hash)
}

# --- the report ----------------------------------------------------------------------------------

function Format-Timestamp {
    param([DateTimeOffset]$Moment)
    $Moment.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", [Globalization.CultureInfo]::InvariantCulture)
}

function Read-ScriptOutput {
    <# The text a script wrote (UTF-8), cut to MaxOutputChars with a log line. #>
    param([string]$Path, [int]$MaxChars, [string]$Name)
    if (-not $Path -or -not (Test-Path -LiteralPath $Path)) {
        return ''
    }
    $text = [System.IO.File]::ReadAllText($Path, $Utf8NoBom)
    if ($text.Length -gt $MaxChars) {
        Write-AgentLog warning "$Name is $($text.Length) characters; sending the first $MaxChars"
        $text = $text.Substring(0, $MaxChars)
    }
    $text
}

function Invoke-DetectionScript {
    <# Runs the script in 64-bit Windows PowerShell with UTF-8 console output (a redirected
       Windows PowerShell otherwise writes the OEM code page, which mangles non-ASCII output),
       with a timeout that stops the script and everything it started. #>
    param([string]$Path, $Config, [string]$WorkDirectory)
    $stdoutFile = Join-Path $WorkDirectory 'stdout.txt'
    $stderrFile = Join-Path $WorkDirectory 'stderr.txt'
    $system = 'System32'
    if ([Environment]::Is64BitOperatingSystem -and -not [Environment]::Is64BitProcess) {
        $system = 'Sysnative'
    }
    $powershell = Join-Path $env:SystemRoot "$system\WindowsPowerShell\v1.0\powershell.exe"
    # -EncodedCommand (UTF-16LE base64) so no quoting of the path can go wrong; a script that
    # throws exits 1, as it would under -File.
    $command = "[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding `$false; try {{ & '{0}'; exit `$LASTEXITCODE }} catch {{ [Console]::Error.WriteLine(`$_); exit 1 }}" -f $Path.Replace("'", "''")
    $encoded = [Convert]::ToBase64String([System.Text.Encoding]::Unicode.GetBytes($command))
    $arguments = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand $encoded"
    $started = [DateTimeOffset]::UtcNow
    $process = Start-Process -FilePath $powershell -ArgumentList $arguments -NoNewWindow -PassThru `
        -RedirectStandardOutput $stdoutFile -RedirectStandardError $stderrFile
    # Read once now: without it .NET Framework forgets the exit code of a process that has ended.
    $null = $process.Handle
    $timedOut = -not $process.WaitForExit([int]$Config.ScriptTimeoutSeconds * 1000)
    if ($timedOut) {
        Write-AgentLog warning "$Path did not finish within $($Config.ScriptTimeoutSeconds) s and was stopped"
        # Start-Process, not &: a native command's stderr would be an error under 'Stop'.
        Start-Process -FilePath 'taskkill.exe' -ArgumentList "/PID $($process.Id) /T /F" -NoNewWindow -Wait `
            -RedirectStandardOutput (Join-Path $WorkDirectory 'taskkill.out') `
            -RedirectStandardError (Join-Path $WorkDirectory 'taskkill.err')
        $process.WaitForExit()
    }
    $finished = [DateTimeOffset]::UtcNow
    $exit = $null
    if (-not $timedOut) {
        $exit = $process.ExitCode
    }
    [pscustomobject]@{
        ExitCode   = $exit
        Stdout     = Read-ScriptOutput $stdoutFile ([int]$Config.MaxOutputChars) 'stdout'
        Stderr     = Read-ScriptOutput $stderrFile ([int]$Config.MaxOutputChars) 'stderr'
        StartedAt  = Format-Timestamp $started
        FinishedAt = Format-Timestamp $finished
        TimedOut   = $timedOut
    }
}

function ConvertTo-JsonString {
    <# A JSON string literal as agents/test-vectors.json writes it: only " \ and U+0000-U+001F
       escaped, everything else raw. Windows PowerShell 5.1's ConvertTo-Json also escapes
       ' < > & and U+2028 as \u00xx, so it is not used for the body. #>
    param([string]$Value)
    $builder = New-Object System.Text.StringBuilder ($Value.Length + 2)
    [void]$builder.Append('"')
    foreach ($char in $Value.ToCharArray()) {
        $code = [int]$char
        if ($code -eq 0x22) { [void]$builder.Append('\"') }
        elseif ($code -eq 0x5C) { [void]$builder.Append('\\') }
        elseif ($code -ge 0x20) { [void]$builder.Append($char) }
        elseif ($JsonEscapes.ContainsKey($code)) { [void]$builder.Append($JsonEscapes[$code]) }
        else { [void]$builder.Append(('\u{0:x4}' -f $code)) }
    }
    [void]$builder.Append('"')
    $builder.ToString()
}

function New-ReportBody {
    <# Compact JSON in the agent API's shape; the key order follows agents/test-vectors.json. #>
    param([string]$DeviceId, [string]$ScriptId, [string]$ReportId, $Result)
    $exit = 'null'
    if ($null -ne $Result.ExitCode) { $exit = ([long]$Result.ExitCode).ToString([Globalization.CultureInfo]::InvariantCulture) }
    $timedOut = 'false'
    if ($Result.TimedOut) { $timedOut = 'true' }
    '{"deviceId":' + (ConvertTo-JsonString $DeviceId) + ',"scriptId":' + (ConvertTo-JsonString $ScriptId) + ',"reportId":' + (ConvertTo-JsonString $ReportId) + ',"execution":{"exitCode":' + $exit + ',"stdout":' + (ConvertTo-JsonString $Result.Stdout) + ',"stderr":' + (ConvertTo-JsonString $Result.Stderr) + ',"startedAt":' + (ConvertTo-JsonString $Result.StartedAt) + ',"finishedAt":' + (ConvertTo-JsonString $Result.FinishedAt) + ',"timedOut":' + $timedOut + '}}'
}

function New-ReportId {
    <# Unique per report; it is also the webhook-id, so a resend is recognised as a duplicate. #>
    $stamp = [DateTime]::UtcNow.ToString("yyyyMMdd'T'HHmmss'Z'", [Globalization.CultureInfo]::InvariantCulture)
    '{0}-{1}' -f $stamp, [guid]::NewGuid().ToString('N').Substring(0, 16)
}

# --- the spool -----------------------------------------------------------------------------------

function Enter-Mutex {
    <# A machine-wide lock; one abandoned by a process that died is ours to take, and the kernel
       releases it with its process, so a crashed run never stalls the spool. #>
    param([string]$Name, [int]$WaitMilliseconds)
    $mutex = New-Object System.Threading.Mutex($false, "Global\$Name")
    try {
        $owned = $mutex.WaitOne($WaitMilliseconds)
    }
    catch {
        $inner = $_.Exception
        while ($inner -and -not ($inner -is [System.Threading.AbandonedMutexException])) {
            $inner = $inner.InnerException
        }
        if (-not $inner) {
            throw
        }
        $owned = $true
    }
    if (-not $owned) {
        $mutex.Dispose()
        return $null
    }
    $mutex
}

function Exit-Mutex {
    param([System.Threading.Mutex]$Mutex)
    $Mutex.ReleaseMutex()
    $Mutex.Dispose()
}

function Get-SpoolEntry {
    <# The parts of one of the agent's report file names, or $null for any other file (a foreign
       file in the spool is ignored, never sent and never read for the sequence). #>
    param([string]$Name)
    $match = [regex]::Match($Name, $SpoolName)
    if (-not $match.Success) { return $null }
    $created = $null
    if ($match.Groups['created'].Success) { $created = [long]$match.Groups['created'].Value }
    [pscustomobject]@{ Sequence = [long]$match.Groups['seq'].Value; Created = $created; ReportId = $match.Groups['id'].Value }
}

function Get-SpooledReports {
    <# The agent's own report files, oldest first: the sequence number makes name order creation order. #>
    param([string]$Directory)
    Get-ChildItem -LiteralPath $Directory -Filter '*.json' -File |
        Where-Object { Get-SpoolEntry -Name $_.Name } |
        Sort-Object -Property Name
}

function Add-SpooledReport {
    <# Writes the body under the next sequence number, then drops the oldest past SpoolMax. #>
    param([string]$Body, [string]$ReportId, $Config)
    $directory = $Config.SpoolDirectory
    $lock = Enter-Mutex -Name 'IntuneComplianceAgent.Add' -WaitMilliseconds 30000
    if (-not $lock) {
        throw "could not lock $directory to add a report"
    }
    try {
        $spooled = @(Get-SpooledReports -Directory $directory)
        $sequence = 0
        if ($spooled.Count -gt 0) {
            $sequence = (Get-SpoolEntry -Name $spooled[-1].Name).Sequence
        }
        $created = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
        $name = '{0:D10}.{1:D10}.{2}.json' -f ($sequence + 1), $created, $ReportId
        # Written under this run's own name, then renamed: a file with a final name is whole.
        $incoming = Join-Path $directory ('.incoming.{0}.{1}' -f $PID, [guid]::NewGuid().ToString('N'))
        [System.IO.File]::WriteAllText($incoming, $Body, $Utf8NoBom)
        Move-Item -LiteralPath $incoming -Destination (Join-Path $directory $name) -Force
        $count = $spooled.Count + 1
        Write-AgentLog info "report $ReportId spooled ($count waiting)"
        $drop = 0
        while ($count -gt [int]$Config.SpoolMax) {
            Remove-Item -LiteralPath $spooled[$drop].FullName -Force
            $dropped = (Get-SpoolEntry -Name $spooled[$drop].Name).ReportId
            Write-AgentLog warning "spool full (SpoolMax=$($Config.SpoolMax)): dropped the oldest report $dropped"
            $drop++
            $count--
        }
    }
    finally {
        Exit-Mutex -Mutex $lock
    }
}

function Get-ReportCreated {
    <# Unix seconds the report was made: from its name, or the file's creation time for a 1.0 name. #>
    param([System.IO.FileInfo]$File)
    $entry = Get-SpoolEntry -Name $File.Name
    if ($null -ne $entry.Created) {
        return $entry.Created
    }
    ([DateTimeOffset]$File.CreationTimeUtc).ToUnixTimeSeconds()
}

# --- sending -------------------------------------------------------------------------------------

function Get-AnswerAction {
    <# What the agent does with an answer (agents/answer-vectors.json): done, refused or keep.
       Status 0 is no answer at all. #>
    param([int]$Status, [string]$Type)
    $slug = ([string]$Type -split '[:/]')[-1]
    if ($Status -ge 200 -and $Status -lt 300) { return 'done' }
    if ($Status -eq 502 -and $slug.StartsWith('graph-', [StringComparison]::Ordinal)) { return 'done' }
    if ($RefusedStatuses -contains $Status) { return 'refused' }
    'keep'
}

function Test-RetryNow {
    <# Whether another attempt in this run may get a different answer; 401, 403, 404, 407 and
       redirects wait for a later run. #>
    param([int]$Status, [string]$Type)
    if ($Status -eq 0 -or $Status -eq 408 -or $Status -eq 429 -or $Status -ge 500) { return $true }
    $Status -eq 401 -and $Type.EndsWith(':signature-replayed', [StringComparison]::Ordinal)
}

function Get-RetryAfterSeconds {
    <# Retry-After as integer or fractional seconds, or an HTTP-date; $null when absent or unusable. #>
    param([string]$Value)
    if ([string]::IsNullOrWhiteSpace($Value)) {
        return $null
    }
    $seconds = 0.0
    if ([double]::TryParse($Value, [Globalization.NumberStyles]::AllowDecimalPoint,
            [Globalization.CultureInfo]::InvariantCulture, [ref]$seconds)) {
        return $seconds
    }
    $date = [DateTimeOffset]::MinValue
    if ([DateTimeOffset]::TryParseExact($Value, 'r', [Globalization.CultureInfo]::InvariantCulture,
            [Globalization.DateTimeStyles]::AssumeUniversal, [ref]$date)) {
        return [Math]::Max(0.0, ($date - [DateTimeOffset]::UtcNow).TotalSeconds)
    }
    $null
}

function Get-BackoffSeconds {
    <# Exponential from BackoffBaseSeconds, capped at BackoffMaxSeconds, with equal jitter. #>
    param([int]$Attempt, $Config)
    $ceiling = [Math]::Min([double]$Config.BackoffMaxSeconds,
        [double]$Config.BackoffBaseSeconds * [Math]::Pow(2, $Attempt - 1))
    $ceiling / 2 + $Random.NextDouble() * $ceiling / 2
}

function Get-ProblemField {
    <# A field of a problem+json answer, for the log only. #>
    param([string]$Text, [string]$Name)
    try {
        $value = ($Text | ConvertFrom-Json).$Name
    }
    catch {
        return ''
    }
    [string]$value
}

function Send-ReportAttempt {
    <# One POST, signed anew with a fresh timestamp; the answer whatever its status. #>
    param([string]$Body, [string]$ReportId, [long]$Timestamp, $Config, $Certificate)
    $bytes = [System.Text.Encoding]::UTF8.GetBytes($Body)
    $request = [System.Net.HttpWebRequest][System.Net.WebRequest]::Create((Join-BridgeUrl -BridgeUrl $Config.BridgeUrl))
    $request.Method = 'POST'
    $request.ContentType = 'application/json'
    $request.UserAgent = $UserAgent
    $request.Timeout = [int]$Config.HttpTimeoutSeconds * 1000
    $request.ReadWriteTimeout = [int]$Config.HttpTimeoutSeconds * 1000
    $request.ServicePoint.Expect100Continue = $false
    # Never followed: .NET would resend a 301/302/303 as a GET, and a redirected answer is not
    # a delivery. The 3xx comes back as the answer and the report is kept.
    $request.AllowAutoRedirect = $false
    if ($Config.Proxy) {
        # SYSTEM does not read the signed-in user's proxy, and netsh winhttp does not apply to
        # .NET's WebRequest: the proxy is a setting of its own.
        $proxy = New-Object System.Net.WebProxy([string]$Config.Proxy, $true)
        $proxy.UseDefaultCredentials = [bool]$Config.ProxyUseDefaultCredentials
        $request.Proxy = $proxy
    }
    # Offered for mutual TLS; sent only when the server asks for a client certificate.
    [void]$request.ClientCertificates.Add($Certificate)
    $secrets = Get-HmacSecrets -Value ([string]$Config.HmacSecret)
    if ($secrets.Count -gt 0) {
        $request.Headers.Add('webhook-id', $ReportId)
        $request.Headers.Add('webhook-timestamp', [string]$Timestamp)
        $signatures = foreach ($secret in $secrets) { Get-WebhookSignature -Secret $secret -MessageId $ReportId -Timestamp $Timestamp -Body $Body }
        $request.Headers.Add('webhook-signature', (@($signatures) -join ' '))
    }
    $request.ContentLength = $bytes.Length
    try {
        $stream = $request.GetRequestStream()
        try {
            $stream.Write($bytes, 0, $bytes.Length)
        }
        finally {
            $stream.Dispose()
        }
        $response = $request.GetResponse()
    }
    catch {
        # PowerShell wraps the WebException; an HTTP error status still carries the response.
        $webError = $_.Exception
        while ($webError -and -not ($webError -is [System.Net.WebException])) {
            $webError = $webError.InnerException
        }
        if (-not $webError -or -not $webError.Response) {
            return [pscustomobject]@{ Status = 0; RetryAfter = $null; Location = $null; Text = ''; Error = $_.Exception.Message }
        }
        $response = $webError.Response
    }
    try {
        $reader = New-Object System.IO.StreamReader($response.GetResponseStream(), [System.Text.Encoding]::UTF8)
        [pscustomobject]@{
            Status     = [int]$response.StatusCode
            RetryAfter = $response.Headers['Retry-After']
            Location   = $response.Headers['Location']
            Text       = $reader.ReadToEnd()
            Error      = $null
        }
    }
    finally {
        $response.Close()
    }
}

function Send-SpooledReport {
    <# Returns 'done', 'dropped' (refused, or past MaxAgeSeconds) or 'kept' (stays spooled). #>
    param([System.IO.FileInfo]$File, $Config, $Certificate, [DateTime]$Deadline, $State)
    $reportId = (Get-SpoolEntry -Name $File.Name).ReportId
    $age = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds() - (Get-ReportCreated -File $File)
    if ($age -gt [long]$Config.MaxAgeSeconds) {
        Write-AgentLog error "report $reportId DROPPED UNDELIVERED: it is $age s old, past MaxAgeSeconds=$($Config.MaxAgeSeconds); the bridge never accepted it (see the earlier lines for its answers)"
        $State.LastRefusal = "{0} report {1} too old ({2} s)" -f (Format-Timestamp ([DateTimeOffset]::UtcNow)), $reportId, $age
        return 'dropped'
    }
    $body = [System.IO.File]::ReadAllText($File.FullName, $Utf8NoBom)
    $lastTimestamp = 0
    for ($attempt = 1; ; $attempt++) {
        $timestamp = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
        # Two attempts in one second would be byte-identical, which the bridge refuses as a replay.
        if ($timestamp -le $lastTimestamp) {
            $timestamp = $lastTimestamp + 1
        }
        $lastTimestamp = $timestamp
        $answer = Send-ReportAttempt -Body $body -ReportId $reportId -Timestamp $timestamp -Config $Config -Certificate $Certificate
        $type = Get-ProblemField -Text $answer.Text -Name 'type'
        $action = Get-AnswerAction -Status $answer.Status -Type $type
        if ($action -eq 'done') {
            if ($answer.Status -eq 502) {
                Write-AgentLog warning "report ${reportId}: 502 ${type}: Graph refused it for good; the bridge kept it for replay, so it leaves the spool"
            }
            else {
                $outcome = Get-ProblemField -Text $answer.Text -Name 'status'
                $reason = Get-ProblemField -Text $answer.Text -Name 'reason'
                Write-AgentLog info ("report ${reportId}: $($answer.Status) $outcome $reason").TrimEnd()
            }
            $State.LastSuccess = Format-Timestamp ([DateTimeOffset]::UtcNow)
            $State.RetryNotBefore = [long]0
            return 'done'
        }
        if ($action -eq 'refused') {
            $detail = Get-ProblemField -Text $answer.Text -Name 'detail'
            Write-AgentLog error "report $reportId refused: $($answer.Status) ${type}: $detail - dropped, a resend would be refused too"
            $State.LastRefusal = "{0} {1} {2} report {3}" -f (Format-Timestamp ([DateTimeOffset]::UtcNow)), $answer.Status, ($type -split '[:/]')[-1], $reportId
            return 'dropped'
        }
        $why = "$($answer.Status) $type"
        if ($answer.Status -eq 0) {
            $why = "no answer ($($answer.Error))"
        }
        elseif ($answer.Status -ge 300 -and $answer.Status -lt 400) {
            $why = "$($answer.Status) redirect to $($answer.Location) (not followed)"
        }
        if (-not (Test-RetryNow -Status $answer.Status -Type $type)) {
            Write-AgentLog warning "report ${reportId}: $why; kept in the spool for a later run"
            return 'kept'
        }
        $wait = Get-RetryAfterSeconds -Value $answer.RetryAfter
        if ($null -ne $wait) {
            # Later runs send nothing before it (at most an hour, as the bridge honours).
            $State.RetryNotBefore = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds() + [long][Math]::Ceiling([Math]::Min($wait, 3600.0))
        }
        if ($attempt -ge [int]$Config.MaxAttempts) {
            Write-AgentLog warning "report ${reportId}: attempt ${attempt}: $why; giving up for this run, kept in the spool"
            return 'kept'
        }
        if ($null -eq $wait) {
            $wait = Get-BackoffSeconds -Attempt $attempt -Config $Config
        }
        elseif ($wait -gt [double]$Config.MaxRetryAfterSeconds) {
            Write-AgentLog warning "report ${reportId}: $why; Retry-After $($answer.RetryAfter) is beyond MaxRetryAfterSeconds, kept in the spool"
            return 'kept'
        }
        if ([DateTime]::UtcNow.AddSeconds($wait) -gt $Deadline) {
            Write-AgentLog warning "report ${reportId}: $why; MaxRunSeconds reached, kept in the spool"
            return 'kept'
        }
        Write-AgentLog warning ("report {0}: attempt {1}: {2}; retrying in {3:N0} ms" -f $reportId, $attempt, $why, ($wait * 1000))
        Start-Sleep -Milliseconds ([int][Math]::Ceiling($wait * 1000))
    }
}

function Send-Spool {
    <# Sends the spool oldest first and stops at the first report that is kept, keeping order. #>
    param($Config, $Certificate, $State)
    $lock = Enter-Mutex -Name 'IntuneComplianceAgent.Send' -WaitMilliseconds 0
    if (-not $lock) {
        Write-AgentLog info 'another run is sending the spool'
        return $ExitBusy
    }
    try {
        if ($State.RetryNotBefore -gt [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()) {
            Write-AgentLog warning "the bridge asked to wait (Retry-After) until $($State.RetryNotBefore); nothing is sent before then"
            return $ExitSpooled
        }
        $deadline = [DateTime]::UtcNow.AddSeconds([int]$Config.MaxRunSeconds)
        $status = $ExitSent
        # Looked up afresh each time: a report spooled meanwhile by another run is sent too.
        while ($file = Get-SpooledReports -Directory $Config.SpoolDirectory | Select-Object -First 1) {
            $outcome = Send-SpooledReport -File $file -Config $Config -Certificate $Certificate -Deadline $deadline -State $State
            if ($outcome -eq 'kept') {
                $left = @(Get-SpooledReports -Directory $Config.SpoolDirectory).Count
                Write-AgentLog warning "$left report(s) remain in $($Config.SpoolDirectory) for the next run"
                return $ExitSpooled
            }
            if ($outcome -eq 'dropped') {
                $status = $ExitDropped
            }
            Remove-Item -LiteralPath $file.FullName -Force
        }
        $status
    }
    finally {
        Exit-Mutex -Mutex $lock
    }
}

# --- health --------------------------------------------------------------------------------------

function Read-AgentState {
    <# What earlier runs left in the status file: the last 2xx and the last refusal. #>
    param($Config)
    $state = [pscustomobject]@{ LastSuccess = $null; LastRefusal = $null; RetryNotBefore = [long]0 }
    try {
        $previous = Get-Content -LiteralPath $Config.StatusFile -Raw -Encoding UTF8 | ConvertFrom-Json
        $state.LastSuccess = $previous.lastSuccessAt
        $state.LastRefusal = $previous.lastRefusal
        $state.RetryNotBefore = [long]$previous.retryNotBefore
    }
    catch {
        # No status yet (first run), or one being written: start afresh.
        $null = $_
    }
    $state
}

function Format-HealthValue {
    <# A value for the summary line, or the word that says there is none. #>
    param($Value, [string]$None)
    if ($null -eq $Value) {
        return $None
    }
    [string]$Value
}

function Write-AgentHealth {
    <# One summary line (log and stdout, which Intune keeps) and status.json beside the spool. #>
    param($Config, $State, [int]$Status, [string]$DeviceId, $Certificate)
    $now = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
    $spooled = @(Get-SpooledReports -Directory $Config.SpoolDirectory)
    $oldestAge = $null
    if ($spooled.Count -gt 0) {
        $oldestAge = $now - (Get-ReportCreated -File $spooled[0])
    }
    $daysLeft = $null
    $thumbprint = $null
    if ($Certificate) {
        $thumbprint = $Certificate.Thumbprint
        $daysLeft = [int][Math]::Floor(($Certificate.NotAfter.ToUniversalTime() - [DateTime]::UtcNow).TotalDays)
    }
    $line = 'summary version={0} exit={1} device={2} spooled={3} oldest_age_s={4} last_2xx={5} last_refusal="{6}" cert_sha1={7} cert_days_left={8}' -f `
        $AgentVersion, $Status, $DeviceId, $spooled.Count, (Format-HealthValue $oldestAge 'none'),
        (Format-HealthValue $State.LastSuccess 'never'), (Format-HealthValue $State.LastRefusal 'none'),
        (Format-HealthValue $thumbprint 'none'), (Format-HealthValue $daysLeft 'none')
    Write-AgentLog info $line
    Write-Output "compliance-agent: $line"
    $retryNotBefore = [long]0
    if ($State.RetryNotBefore -gt $now) {
        $retryNotBefore = $State.RetryNotBefore
    }
    $certificateStatus = $null
    if ($Certificate) {
        $certificateStatus = [ordered]@{ sha1 = $thumbprint; daysLeft = $daysLeft }
    }
    $document = [ordered]@{
        agent                  = 'intune-compliance-agent'
        version                = $AgentVersion
        platform               = 'windows'
        updatedAt              = Format-Timestamp ([DateTimeOffset]::UtcNow)
        exitCode               = $Status
        deviceId               = $DeviceId
        spooled                = $spooled.Count
        oldestReportAgeSeconds = $oldestAge
        lastSuccessAt          = $State.LastSuccess
        lastRefusal            = $State.LastRefusal
        retryNotBefore         = $retryNotBefore
        certificate            = $certificateStatus
    }
    try {
        $temporary = '{0}.{1}.tmp' -f $Config.StatusFile, $PID
        [System.IO.File]::WriteAllText($temporary, (ConvertTo-Json -InputObject $document -Depth 3), $Utf8NoBom)
        Move-Item -LiteralPath $temporary -Destination $Config.StatusFile -Force
    }
    catch {
        Write-AgentLog warning "cannot write $($Config.StatusFile): $($_.Exception.Message)"
    }
}

# --- main ----------------------------------------------------------------------------------------

function Invoke-Agent {
    $config = Read-AgentConfig -Path $ConfigPath
    if ($ScriptId) {
        $config.ScriptId = $ScriptId
    }
    Initialize-Log -Path $config.LogFile
    foreach ($name in $config.UnknownSettings) {
        Write-AgentLog warning "ignoring the unknown setting '$name' in $ConfigPath"
    }
    Test-AgentConfig -Config $config
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $certificate = Get-IntuneDeviceCertificate
    $deviceId = Get-IntuneDeviceId -Certificate $certificate
    New-PrivateDirectory -Path $config.SpoolDirectory
    $state = Read-AgentState -Config $config
    if ($ParameterSet -ne 'Flush') {
        $work = Join-Path ([System.IO.Path]::GetTempPath()) ('compliance-agent-' + [guid]::NewGuid().ToString('N'))
        [void][System.IO.Directory]::CreateDirectory($work)
        try {
            if ($ParameterSet -eq 'Submit') {
                if (-not (Test-Path -LiteralPath $OutputFile)) {
                    throw "cannot read the script output $OutputFile"
                }
                $now = Format-Timestamp ([DateTimeOffset]::UtcNow)
                $result = [pscustomobject]@{
                    ExitCode   = $ExitCode
                    Stdout     = Read-ScriptOutput $OutputFile ([int]$config.MaxOutputChars) 'stdout'
                    Stderr     = Read-ScriptOutput $ErrorFile ([int]$config.MaxOutputChars) 'stderr'
                    StartedAt  = $now
                    FinishedAt = $now
                    TimedOut   = $false
                }
            }
            else {
                $path = $ScriptPath
                if (-not $path) {
                    $path = $config.ScriptPath
                }
                if (-not $path -or -not (Test-Path -LiteralPath $path)) {
                    throw 'name the detection script: -ScriptPath or ScriptPath in the configuration file'
                }
                $result = Invoke-DetectionScript -Path $path -Config $config -WorkDirectory $work
                Write-AgentLog info "$path exited with $($result.ExitCode)"
            }
        }
        finally {
            Remove-Item -LiteralPath $work -Recurse -Force -ErrorAction SilentlyContinue
        }
        $reportId = New-ReportId
        $body = New-ReportBody -DeviceId $deviceId -ScriptId $config.ScriptId -ReportId $reportId -Result $result
        Add-SpooledReport -Body $body -ReportId $reportId -Config $config
    }
    $status = Send-Spool -Config $config -Certificate $certificate -State $state
    Write-AgentHealth -Config $config -State $state -Status $status -DeviceId $deviceId -Certificate $certificate
    $status
}

try {
    # The last value is the exit status; the summary line before it is Intune's script output.
    $output = @(Invoke-Agent)
    $output | Select-Object -SkipLast 1 | Write-Output
    $status = [int]$output[-1]
}
catch {
    Write-AgentLog error $_.Exception.Message
    Write-Output "compliance-agent: $($_.Exception.Message)"
    exit $ExitConfiguration
}
exit $status
