<#
.SYNOPSIS
    Intune compliance-script bridge: reference device agent for Windows (Windows PowerShell 5.1).

.DESCRIPTION
    Runs a detection script (or takes the output of one that already ran), writes the report into
    a spool directory first, then sends every spooled report oldest first. The device id is the
    subject CN of the Intune MDM device certificate (LocalMachine\My, issuer exactly
    'CN=Microsoft Intune MDM Device CA'); that certificate is offered for mutual TLS, and when
    HmacSecret is configured each attempt is also signed with Standard Webhooks (HMAC-SHA256).
    Retries use exponential backoff with jitter and honour Retry-After (integer, fractional or
    HTTP-date). A report leaves the spool only after a 2xx answer, or when the bridge refuses it
    for good (a 4xx other than 408/429), which is logged with the problem's type and detail.

    Runs as SYSTEM (Intune platform scripts and Remediations do), which can use the certificate's
    private key. Deployment, configuration and logs: docs/agents.md.
    Protocol vectors: agents/test-vectors.json.

.PARAMETER ScriptPath
    The detection script to run (.ps1). Defaults to ScriptPath in the configuration file.

.PARAMETER OutputFile
    Send the result of a script that already ran: the file holding its stdout.

.PARAMETER ExitCode
    With -OutputFile: the script's exit code.

.PARAMETER ErrorFile
    With -OutputFile: the file holding the script's stderr.

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
$AgentVersion = '1.0.0'
$IngestPath = '/api/v1/compliance-script-results'
$IntuneDeviceCa = 'CN=Microsoft Intune MDM Device CA'
$ExitSent = 0
$ExitConfiguration = 2
$ExitRefused = 3
$ExitSpooled = 75
$Random = New-Object System.Random
$Utf8NoBom = New-Object System.Text.UTF8Encoding($false)

# --- logging -------------------------------------------------------------------------------------

function Write-AgentLog {
    <# One line to the log file (kept under 1 MiB plus one previous file) and the verbose stream. #>
    param([string]$Level, [string]$Message)
    $line = '{0} compliance-agent[{1}] {2}: {3}' -f [DateTime]::UtcNow.ToString(
        "yyyy-MM-dd'T'HH:mm:ss'Z'", [Globalization.CultureInfo]::InvariantCulture), $PID, $Level, $Message
    Write-Verbose $line
    if ($script:LogFile) {
        [System.IO.File]::AppendAllText($script:LogFile, $line + "`r`n", $script:Utf8NoBom)
    }
}

function Initialize-Log {
    param([string]$Path)
    New-PrivateDirectory -Path (Split-Path -Parent $Path)
    if ((Test-Path -LiteralPath $Path) -and (Get-Item -LiteralPath $Path).Length -gt 1048576) {
        Move-Item -LiteralPath $Path -Destination "$Path.1" -Force
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
    <# The JSON file's settings over the defaults; an unknown name is an error, not a silent typo. #>
    param([string]$Path)
    $root = Join-Path $env:ProgramData 'IntuneComplianceAgent'
    $config = [ordered]@{
        BridgeUrl            = $null
        ScriptId             = $null
        ScriptPath           = $null
        HmacSecret           = $null
        SpoolDirectory       = Join-Path $root 'Spool'
        SpoolMax             = 200
        ScriptTimeoutSeconds = 300
        MaxAttempts          = 5
        BackoffBaseSeconds   = 2
        BackoffMaxSeconds    = 60
        MaxRetryAfterSeconds = 300
        MaxRunSeconds        = 900
        HttpTimeoutSeconds   = 60
        MaxOutputChars       = 131072
        LogFile              = Join-Path $root 'Logs\agent.log'
    }
    if (-not (Test-Path -LiteralPath $Path)) {
        throw "the configuration file $Path does not exist"
    }
    $file = Get-Content -LiteralPath $Path -Raw -Encoding UTF8 | ConvertFrom-Json
    foreach ($property in $file.PSObject.Properties) {
        if (-not $config.Contains($property.Name)) {
            throw "unknown setting '$($property.Name)' in $Path"
        }
        $config[$property.Name] = $property.Value
    }
    [pscustomobject]$config
}

function Test-AgentConfig {
    param($Config)
    if (-not $Config.BridgeUrl -or -not ($Config.BridgeUrl -match '^https://')) {
        throw 'BridgeUrl must be the https:// address of the bridge'
    }
    $guid = [guid]::Empty
    if (-not [guid]::TryParseExact([string]$Config.ScriptId, 'D', [ref]$guid)) {
        throw 'ScriptId (-ScriptId or the configuration file) must be the script''s GUID'
    }
    if ($Config.HmacSecret) {
        if (-not ([string]$Config.HmacSecret).StartsWith('whsec_')) {
            throw 'HmacSecret must start with whsec_'
        }
        $key = [Convert]::FromBase64String(([string]$Config.HmacSecret).Substring(6))
        if ($key.Length -lt 24 -or $key.Length -gt 64) {
            throw 'HmacSecret must hold 24 to 64 bytes of base64 after whsec_'
        }
    }
    foreach ($name in 'SpoolMax', 'ScriptTimeoutSeconds', 'MaxAttempts', 'MaxOutputChars') {
        if ([int]$Config.$name -lt 1) {
            throw "$name must be at least 1"
        }
    }
}

# --- the device ----------------------------------------------------------------------------------

function Get-IntuneDeviceCertificate {
    <# The newest valid MDM device certificate with its private key, as Intune enrols it. #>
    $now = Get-Date
    $certificate = Get-ChildItem -Path 'Cert:\LocalMachine\My' |
        Where-Object {
            $_.Issuer -eq $IntuneDeviceCa -and $_.HasPrivateKey -and
            $_.NotBefore -le $now -and $_.NotAfter -gt $now
        } |
        Sort-Object -Property NotBefore -Descending |
        Select-Object -First 1
    if (-not $certificate) {
        throw "no valid certificate issued by '$IntuneDeviceCa' with a private key in LocalMachine\My: is the device enrolled, and is this running as SYSTEM?"
    }
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
    <# The text a script wrote, cut to MaxOutputChars with a log line. #>
    param([string]$Path, [System.Text.Encoding]$Encoding, [int]$MaxChars, [string]$Name)
    if (-not $Path -or -not (Test-Path -LiteralPath $Path)) {
        return ''
    }
    $text = [System.IO.File]::ReadAllText($Path, $Encoding)
    if ($text.Length -gt $MaxChars) {
        Write-AgentLog warning "$Name is $($text.Length) characters; sending the first $MaxChars"
        $text = $text.Substring(0, $MaxChars)
    }
    $text
}

function Invoke-DetectionScript {
    <# Runs the script in Windows PowerShell (64-bit where the OS is), with a timeout that stops
       the script and everything it started. #>
    param([string]$Path, $Config, [string]$WorkDirectory)
    $stdoutFile = Join-Path $WorkDirectory 'stdout.txt'
    $stderrFile = Join-Path $WorkDirectory 'stderr.txt'
    $system = 'System32'
    if ([Environment]::Is64BitOperatingSystem -and -not [Environment]::Is64BitProcess) {
        $system = 'Sysnative'
    }
    $powershell = Join-Path $env:SystemRoot "$system\WindowsPowerShell\v1.0\powershell.exe"
    $arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}"' -f $Path
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
    # A redirected Windows PowerShell writes in the console's OEM code page.
    $oem = [System.Text.Encoding]::GetEncoding([Globalization.CultureInfo]::CurrentCulture.TextInfo.OEMCodePage)
    $exit = $null
    if (-not $timedOut) {
        $exit = $process.ExitCode
    }
    [pscustomobject]@{
        ExitCode   = $exit
        Stdout     = Read-ScriptOutput $stdoutFile $oem ([int]$Config.MaxOutputChars) 'stdout'
        Stderr     = Read-ScriptOutput $stderrFile $oem ([int]$Config.MaxOutputChars) 'stderr'
        StartedAt  = $started
        FinishedAt = $finished
        TimedOut   = $timedOut
    }
}

function New-ReportBody {
    <# Compact JSON in the agent API's shape; the key order follows agents/test-vectors.json. #>
    param([string]$DeviceId, [string]$ScriptId, [string]$ReportId, $Result)
    $report = [ordered]@{
        deviceId  = $DeviceId
        scriptId  = $ScriptId
        reportId  = $ReportId
        execution = [ordered]@{
            exitCode   = $Result.ExitCode
            stdout     = [string]$Result.Stdout
            stderr     = [string]$Result.Stderr
            startedAt  = Format-Timestamp $Result.StartedAt
            finishedAt = Format-Timestamp $Result.FinishedAt
            timedOut   = [bool]$Result.TimedOut
        }
    }
    ConvertTo-Json -InputObject $report -Depth 4 -Compress
}

function New-ReportId {
    <# Unique per report; it is also the webhook-id, so a resend is recognised as a duplicate. #>
    $stamp = [DateTime]::UtcNow.ToString("yyyyMMdd'T'HHmmss'Z'", [Globalization.CultureInfo]::InvariantCulture)
    '{0}-{1}' -f $stamp, [guid]::NewGuid().ToString('N').Substring(0, 16)
}

# --- the spool -----------------------------------------------------------------------------------

function Enter-Mutex {
    <# A machine-wide lock; one abandoned by a process that died is ours to take. #>
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

function Get-SpooledReports {
    <# Oldest first: the sequence number in the name makes name order creation order. #>
    param([string]$Directory)
    Get-ChildItem -LiteralPath $Directory -Filter '*.json' -File | Sort-Object -Property Name
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
            $sequence = [long]($spooled[-1].Name.Split('-')[0])
        }
        $name = '{0:D10}-{1}.json' -f ($sequence + 1), $ReportId
        # Written then renamed in the same directory: a file with a final name is always whole.
        $incoming = Join-Path $directory '.incoming'
        [System.IO.File]::WriteAllText($incoming, $Body, $Utf8NoBom)
        Move-Item -LiteralPath $incoming -Destination (Join-Path $directory $name) -Force
        $count = $spooled.Count + 1
        Write-AgentLog info "report $ReportId spooled ($count waiting)"
        $drop = 0
        while ($count -gt [int]$Config.SpoolMax) {
            Remove-Item -LiteralPath $spooled[$drop].FullName -Force
            $dropped = $spooled[$drop].BaseName.Substring(11)
            Write-AgentLog warning "spool full (SpoolMax=$($Config.SpoolMax)): dropped the oldest report $dropped"
            $drop++
            $count--
        }
    }
    finally {
        Exit-Mutex -Mutex $lock
    }
}

# --- sending -------------------------------------------------------------------------------------

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
    $request = [System.Net.HttpWebRequest][System.Net.WebRequest]::Create($Config.BridgeUrl.TrimEnd('/') + $IngestPath)
    $request.Method = 'POST'
    $request.ContentType = 'application/json'
    $request.UserAgent = "compliance-agent/$AgentVersion (windows)"
    $request.Timeout = [int]$Config.HttpTimeoutSeconds * 1000
    $request.ReadWriteTimeout = [int]$Config.HttpTimeoutSeconds * 1000
    $request.ServicePoint.Expect100Continue = $false
    # Offered for mutual TLS; sent only when the server asks for a client certificate.
    [void]$request.ClientCertificates.Add($Certificate)
    if ($Config.HmacSecret) {
        $request.Headers.Add('webhook-id', $ReportId)
        $request.Headers.Add('webhook-timestamp', [string]$Timestamp)
        $signature = Get-WebhookSignature -Secret $Config.HmacSecret -MessageId $ReportId -Timestamp $Timestamp -Body $Body
        $request.Headers.Add('webhook-signature', $signature)
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
            return [pscustomobject]@{ Status = 0; RetryAfter = $null; Text = ''; Error = $_.Exception.Message }
        }
        $response = $webError.Response
    }
    try {
        $reader = New-Object System.IO.StreamReader($response.GetResponseStream(), [System.Text.Encoding]::UTF8)
        [pscustomobject]@{
            Status     = [int]$response.StatusCode
            RetryAfter = $response.Headers['Retry-After']
            Text       = $reader.ReadToEnd()
            Error      = $null
        }
    }
    finally {
        $response.Close()
    }
}

function Send-SpooledReport {
    <# Returns 'sent', 'refused' (dropped for good) or 'kept' (still failing: stays spooled). #>
    param([System.IO.FileInfo]$File, $Config, $Certificate, [DateTime]$Deadline)
    $reportId = $File.BaseName.Substring(11)
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
        if ($answer.Status -ge 200 -and $answer.Status -lt 300) {
            $outcome = Get-ProblemField -Text $answer.Text -Name 'status'
            $reason = Get-ProblemField -Text $answer.Text -Name 'reason'
            $line = "report ${reportId}: $($answer.Status) $outcome $reason"
            Write-AgentLog info $line.TrimEnd()
            return 'sent'
        }
        $transient = $answer.Status -eq 0 -or $answer.Status -eq 408 -or $answer.Status -eq 429 -or
            $answer.Status -lt 200 -or $answer.Status -ge 500 -or ($answer.Status -ge 300 -and $answer.Status -lt 400) -or
            ($answer.Status -eq 401 -and $type.EndsWith(':signature-replayed'))
        if (-not $transient) {
            $detail = Get-ProblemField -Text $answer.Text -Name 'detail'
            Write-AgentLog error "report $reportId refused: $($answer.Status) ${type}: $detail - dropped, a resend would be refused too"
            return 'refused'
        }
        $why = "$($answer.Status) $type"
        if ($answer.Status -eq 0) {
            $why = "no answer ($($answer.Error))"
        }
        if ($attempt -ge [int]$Config.MaxAttempts) {
            Write-AgentLog warning "report ${reportId}: attempt ${attempt}: $why; giving up for this run, kept in the spool"
            return 'kept'
        }
        $wait = Get-RetryAfterSeconds -Value $answer.RetryAfter
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
    <# Sends the spool oldest first and stops at the first report that still fails, keeping order. #>
    param($Config, $Certificate)
    $lock = Enter-Mutex -Name 'IntuneComplianceAgent.Send' -WaitMilliseconds 0
    if (-not $lock) {
        Write-AgentLog info 'another run is sending the spool'
        return $ExitSent
    }
    try {
        $deadline = [DateTime]::UtcNow.AddSeconds([int]$Config.MaxRunSeconds)
        $status = $ExitSent
        # Looked up afresh each time: a report spooled meanwhile by another run is sent too.
        while ($file = Get-SpooledReports -Directory $Config.SpoolDirectory | Select-Object -First 1) {
            $outcome = Send-SpooledReport -File $file -Config $Config -Certificate $Certificate -Deadline $deadline
            if ($outcome -eq 'kept') {
                $left = @(Get-SpooledReports -Directory $Config.SpoolDirectory).Count
                Write-AgentLog warning "$left report(s) remain in $($Config.SpoolDirectory) for the next run"
                return $ExitSpooled
            }
            if ($outcome -eq 'refused') {
                $status = $ExitRefused
            }
            Remove-Item -LiteralPath $file.FullName -Force
        }
        $status
    }
    finally {
        Exit-Mutex -Mutex $lock
    }
}

# --- main ----------------------------------------------------------------------------------------

function Invoke-Agent {
    $config = Read-AgentConfig -Path $ConfigPath
    if ($ScriptId) {
        $config.ScriptId = $ScriptId
    }
    Initialize-Log -Path $config.LogFile
    Test-AgentConfig -Config $config
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $certificate = Get-IntuneDeviceCertificate
    $deviceId = Get-IntuneDeviceId -Certificate $certificate
    New-PrivateDirectory -Path $config.SpoolDirectory
    if ($ParameterSet -ne 'Flush') {
        $work = Join-Path ([System.IO.Path]::GetTempPath()) ('compliance-agent-' + [guid]::NewGuid().ToString('N'))
        [void][System.IO.Directory]::CreateDirectory($work)
        try {
            if ($ParameterSet -eq 'Submit') {
                if (-not (Test-Path -LiteralPath $OutputFile)) {
                    throw "cannot read the script output $OutputFile"
                }
                $now = [DateTimeOffset]::UtcNow
                $result = [pscustomobject]@{
                    ExitCode   = $ExitCode
                    Stdout     = Read-ScriptOutput $OutputFile $Utf8NoBom ([int]$config.MaxOutputChars) 'stdout'
                    Stderr     = Read-ScriptOutput $ErrorFile $Utf8NoBom ([int]$config.MaxOutputChars) 'stderr'
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
    Send-Spool -Config $config -Certificate $certificate
}

try {
    # The last value is the exit status; nothing else in the agent writes to the pipeline.
    $status = Invoke-Agent | Select-Object -Last 1
}
catch {
    Write-AgentLog error $_.Exception.Message
    Write-Output "compliance-agent: $($_.Exception.Message)"
    exit $ExitConfiguration
}
$summary = @{ 0 = 'sent'; 3 = 'a report was refused and dropped (see the log)'; 75 = 'reports remain spooled for the next run' }
Write-Output "compliance-agent: $($summary[[int]$status])"
exit $status
