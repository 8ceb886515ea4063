#!/bin/sh
# Intune compliance-script bridge: reference device agent for macOS and Linux.
#
# POSIX sh with curl and openssl only (runs under dash, bash and BusyBox ash). It runs a detection
# script (or takes the output of one that already ran), writes the report into a spool directory
# first, then sends every spooled report in creation order: signed with Standard Webhooks
# (HMAC-SHA256) and/or over mutual TLS with a client certificate, with backoff, jitter and
# Retry-After. What it does with each answer is the agent-API contract (docs/agents.md): 2xx and
# a 502 graph-* are done; 400, 413, 415 and 422 are refused and dropped; anything else keeps the
# report, in order, until it is older than AGENT_MAX_AGE.
#
# Deployment, configuration and logs: docs/agents.md. Protocol vectors: agents/test-vectors.json
# and agents/answer-vectors.json.

set -u
umask 077

PROG=compliance-agent
VERSION=1.1.0
INGEST_PATH=/api/v1/compliance-script-results
# The bridge's body limit (BRIDGE_MAX_BODY_BYTES, 2 MiB) less room for the envelope: both
# escaped streams together must stay under it.
MAX_STREAM_BYTES=1046528
CR=$(printf '\r')
CONFIG_KEYS='AGENT_BRIDGE_URL AGENT_DEVICE_ID AGENT_SCRIPT_ID AGENT_HMAC_SECRET AGENT_CLIENT_CERT
AGENT_CLIENT_KEY AGENT_CA_FILE AGENT_PROXY AGENT_PROXY_CA_FILE AGENT_SPOOL_DIR AGENT_LOCK_DIR
AGENT_STATUS_FILE AGENT_SPOOL_MAX AGENT_MAX_AGE AGENT_SCRIPT_TIMEOUT AGENT_MAX_ATTEMPTS
AGENT_BACKOFF_BASE AGENT_BACKOFF_MAX AGENT_MAX_RETRY_AFTER AGENT_MAX_RUN_SECONDS AGENT_HTTP_TIMEOUT
AGENT_MAX_OUTPUT_BYTES AGENT_LOG_FILE AGENT_REGISTRATION_FILES'
# Exit statuses: "stuck" and "sent" never share one (docs/agents.md, "Exit status").
EXIT_SENT=0 EXIT_USAGE=2 EXIT_DROPPED=3 EXIT_BUSY=4 EXIT_SPOOLED=75

usage() {
  cat <<'EOF2'
usage: compliance-agent.sh [-c CONFIG] run [-s SCRIPT_ID] [-t SECONDS] [--] COMMAND [ARG...]
       compliance-agent.sh [-c CONFIG] submit [-s SCRIPT_ID] [-x EXIT_CODE | -T] [-e STDERR_FILE]
                           [-S STARTED_AT] [-F FINISHED_AT] [-r REPORT_ID] STDOUT_FILE|-
       compliance-agent.sh [-c CONFIG] flush
       compliance-agent.sh [-c CONFIG] sign WEBHOOK_ID TIMESTAMP BODY_FILE
       compliance-agent.sh [-c CONFIG] device-id

run        run the detection script, then send the spooled reports and this one, oldest first
submit     the same for a script that already ran (Intune style: one JSON object on stdout)
flush      send the spooled reports only
sign       print the webhook-signature of BODY_FILE (check a secret against the test vectors)
device-id  print the device id the agent would report (AGENT_DEVICE_ID=auto: found on the device)

Exit status: 0 every spooled report was sent, 2 usage or configuration error, 3 a report was
dropped (refused by the bridge, or older than AGENT_MAX_AGE; logged), 4 another run is sending
(this run's report is spooled for it), 75 reports remain spooled for a later run.
EOF2
}

# --- logging -------------------------------------------------------------------------------------

log() { # LEVEL MESSAGE...: one line to stderr, and appended to AGENT_LOG_FILE when set
  log_line="$(date -u +%Y-%m-%dT%H:%M:%SZ) ${PROG}[$$] $1:"
  shift
  log_line="$log_line $*"
  printf '%s\n' "$log_line" >&2
  if [ -n "${AGENT_LOG_FILE:-}" ]; then
    printf '%s\n' "$log_line" >>"$AGENT_LOG_FILE" 2>/dev/null || :
  fi
}

die() { # MESSAGE: a usage or configuration error
  log error "$*"
  exit "$EXIT_USAGE"
}

rotate_log() { # keeps AGENT_LOG_FILE under 1 MiB plus one previous file
  [ -n "${AGENT_LOG_FILE:-}" ] && [ -f "$AGENT_LOG_FILE" ] || return 0
  rl_size=$(wc -c <"$AGENT_LOG_FILE" | tr -d ' ')
  if [ "$rl_size" -gt 1048576 ]; then
    mv -f "$AGENT_LOG_FILE" "$AGENT_LOG_FILE.1"
  fi
}

# --- values --------------------------------------------------------------------------------------

is_uint() { # VALUE: digits only
  case $1 in '' | *[!0123456789]*) return 1 ;; esac
}

decimal() { # DIGITS: without leading zeros, so shell arithmetic never reads them as octal
  dc_value=$1
  while :; do
    case $dc_value in 0?*) dc_value=${dc_value#0} ;; *) break ;; esac
  done
  printf '%s' "$dc_value"
}

is_guid() { # VALUE: the 8-4-4-4-12 hex form the bridge requires
  case $1 in *[!0123456789abcdefABCDEF-]*) return 1 ;; esac
  case $1 in ????????-????-????-????-????????????) return 0 ;; esac
  return 1
}

is_report_id() { # VALUE: 1-64 characters of A-Z a-z 0-9 . _ - (the bridge's reportId rule)
  case $1 in '' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-]*)
    return 1 ;;
  esac
  [ "${#1}" -le 64 ]
}

is_timestamp() { # VALUE: RFC 3339 characters only, with a zone (the bridge refuses naive times)
  case $1 in '' | *[!0123456789TZ:.+-]*) return 1 ;; esac
  case $1 in ????-??-??T??:??:??*Z | ????-??-??T??:??:??*[+-]??:??) ;; *) return 1 ;; esac
  case $1 in *.Z | *.[+-]*) return 1 ;; esac
  return 0
}

now_iso() { # UTC with milliseconds where date(1) has %3N (GNU), whole seconds otherwise
  ni_value=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ 2>/dev/null)
  # BSD date prints "%3N" as "3N", BusyBox keeps "%3N", musl's strftime ends at "SS.": only the
  # exact shape counts, anything else falls back to whole seconds.
  case $ni_value in
    [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z) ;;
    *) ni_value=$(date -u +%Y-%m-%dT%H:%M:%SZ) ;;
  esac
  printf '%s' "$ni_value"
}

epoch_now() {
  date +%s
}

random_hex() { # BYTES
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

date_epoch() { # TEXT: Unix seconds of an HTTP-date ("Tue, 01 Dec 2026 21:40:45 GMT") or an
  # openssl date ("Dec  1 21:40:45 2027 GMT"), UTC; computed here because BusyBox, BSD and GNU
  # date(1) each parse dates differently.
  printf '%s\n' "$1" | LC_ALL=C awk '
    BEGIN { split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec", names, " ")
            for (i = 1; i <= 12; i++) month[names[i]] = i }
    {
      gsub(/,/, " ")
      for (i = 1; i <= NF; i++) {
        if ($i in month) m = month[$i]
        else if ($i ~ /^[0-9][0-9]?:[0-9][0-9]:[0-9][0-9]$/) { split($i, t, ":"); hh = t[1]; mi = t[2]; ss = t[3] }
        else if ($i ~ /^[0-9][0-9][0-9][0-9]$/) y = $i + 0
        else if ($i ~ /^[0-9][0-9]?$/) d = $i + 0
        else if ($i != "GMT" && $i != "UTC" && $i !~ /^[A-Z][a-z][a-z]$/) bad = 1
      }
      if (bad || !m || !y || !d || hh == "") exit 1
      # Days from 1970-01-01 to the civil date (H. Hinnant), in whole numbers only.
      yy = y - (m <= 2); era = int(yy / 400); yoe = yy - era * 400
      doy = int((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
      doe = yoe * 365 + int(yoe / 4) - int(yoe / 100) + doy
      printf "%d\n", ((era * 146097 + doe - 719468) * 86400) + hh * 3600 + mi * 60 + ss
    }'
}

# --- configuration -------------------------------------------------------------------------------

load_config() { # FILE: AGENT_NAME=value lines; a variable already in the environment wins
  [ -r "$1" ] || die "cannot read the configuration file $1"
  if [ -n "$(find "$1" -prune -perm -004 2>/dev/null)" ]; then
    log warning "$1 is readable by every user and may hold a secret; chmod 600 it"
  fi
  while IFS= read -r lc_line || [ -n "$lc_line" ]; do
    case $lc_line in '' | '#'*) continue ;; esac
    lc_line=${lc_line%"$CR"}
    lc_key=${lc_line%%=*}
    lc_value=${lc_line#*=}
    case $lc_line in *=*) ;; *) lc_key=invalid ;; esac
    case $lc_key in '' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZ_]*) lc_key=invalid ;; esac
    case " $(printf '%s' "$CONFIG_KEYS" | tr '\n' ' ') " in
      *" $lc_key "*) ;;
      *)
        log warning "$1: ignoring a line that is not KEY=value with a known AGENT_ key"
        continue
        ;;
    esac
    case $lc_value in
      \"*\" | \'*\')
        lc_value=${lc_value#?}
        lc_value=${lc_value%?}
        ;;
    esac
    # lc_key is one of CONFIG_KEYS (letters and _ only), so this eval runs no data as code.
    eval "[ -n \"\${$lc_key+set}\" ] || $lc_key=\$lc_value"
  done <"$1"
}

set_defaults() {
  platform=$(uname -s)
  if [ "$platform" = Darwin ]; then
    : "${AGENT_SPOOL_DIR:=/Library/Application Support/IntuneComplianceAgent/spool}"
    sd_run=/var/run/intune-compliance-agent
  else
    : "${AGENT_SPOOL_DIR:=/var/spool/intune-compliance-agent}"
    sd_run=/run/intune-compliance-agent
  fi
  # Locks live where a reboot clears them: systemd's RuntimeDirectory= when set, else /run.
  [ -z "${RUNTIME_DIRECTORY:-}" ] || sd_run=${RUNTIME_DIRECTORY%%:*}
  : "${AGENT_LOCK_DIR:=$sd_run}" "${AGENT_STATUS_FILE:=$AGENT_SPOOL_DIR/status.json}"
  : "${AGENT_DEVICE_ID:=auto}" "${AGENT_MAX_AGE:=604800}"
  : "${AGENT_SPOOL_MAX:=200}" "${AGENT_SCRIPT_TIMEOUT:=300}" "${AGENT_MAX_ATTEMPTS:=5}"
  : "${AGENT_BACKOFF_BASE:=2}" "${AGENT_BACKOFF_MAX:=60}" "${AGENT_MAX_RETRY_AFTER:=300}"
  : "${AGENT_MAX_RUN_SECONDS:=900}" "${AGENT_HTTP_TIMEOUT:=60}" "${AGENT_MAX_OUTPUT_BYTES:=262144}"
  for sd_key in AGENT_SPOOL_MAX AGENT_SCRIPT_TIMEOUT AGENT_MAX_ATTEMPTS AGENT_BACKOFF_BASE \
    AGENT_BACKOFF_MAX AGENT_MAX_RETRY_AFTER AGENT_MAX_RUN_SECONDS AGENT_HTTP_TIMEOUT \
    AGENT_MAX_OUTPUT_BYTES AGENT_MAX_AGE; do
    eval "is_uint \"\$$sd_key\"" || die "$sd_key must be a whole number"
  done
  for sd_value in "$AGENT_SPOOL_MAX" "$AGENT_MAX_ATTEMPTS" "$AGENT_SCRIPT_TIMEOUT" \
    "$AGENT_MAX_AGE"; do
    [ "$sd_value" -ge 1 ] || die "AGENT_SPOOL_MAX, AGENT_MAX_ATTEMPTS, AGENT_SCRIPT_TIMEOUT" \
      "and AGENT_MAX_AGE must be at least 1"
  done
  [ "$AGENT_MAX_OUTPUT_BYTES" -le "$MAX_STREAM_BYTES" ] ||
    die "AGENT_MAX_OUTPUT_BYTES must be at most $MAX_STREAM_BYTES (both streams fit in 2 MiB)"
  # Kept out of the environment: the detection script never inherits the secret.
  hmac_secret=${AGENT_HMAC_SECRET:-}
  unset AGENT_HMAC_SECRET
}

check_secret() { # sets key_hexes from hmac_secret: one or two (rotation) whsec_ secrets of
  # base64 holding 24-64 bytes each (the bridge's rule), separated by spaces
  key_hexes=''
  cs_count=0
  cs_rest=$hmac_secret
  while :; do
    cs_rest=${cs_rest#"${cs_rest%%[! ]*}"}
    [ -n "$cs_rest" ] || break
    cs_secret=${cs_rest%% *}
    cs_rest=${cs_rest#"$cs_secret"}
    case $cs_secret in whsec_?*) ;; *) die "AGENT_HMAC_SECRET must start with whsec_" ;; esac
    cs_hex=$(printf '%s' "${cs_secret#whsec_}" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
    cs_bytes=$((${#cs_hex} / 2))
    if [ "$cs_bytes" -lt 24 ] || [ "$cs_bytes" -gt 64 ]; then
      die "AGENT_HMAC_SECRET must hold 24 to 64 bytes of base64 after whsec_"
    fi
    key_hexes="$key_hexes $cs_hex"
    cs_count=$((cs_count + 1))
  done
  [ "$cs_count" -le 2 ] || die "AGENT_HMAC_SECRET holds at most two secrets (old and new)"
}

ingest_url() { # BRIDGE_URL: sets url, the ingest address; 1 when the address is not allowed
  case $1 in
    https://?* | http://127.0.0.1 | http://127.0.0.1[:/]* | http://localhost | http://localhost[:/]*) ;;
    *) return 1 ;;
  esac
  url=$1
  while :; do case $url in */) url=${url%/} ;; *) break ;; esac; done
  case $url in *"$INGEST_PATH") ;; *) url=$url$INGEST_PATH ;; esac
}

check_sending_config() {
  [ -n "${AGENT_BRIDGE_URL:-}" ] || die "AGENT_BRIDGE_URL is not set"
  ingest_url "$AGENT_BRIDGE_URL" ||
    die "AGENT_BRIDGE_URL must be https:// (plain http only to 127.0.0.1 or localhost)"
  [ -n "$hmac_secret" ] || [ -n "${AGENT_CLIENT_CERT:-}" ] ||
    die "set AGENT_HMAC_SECRET, AGENT_CLIENT_CERT (and AGENT_CLIENT_KEY), or both"
  [ -z "$hmac_secret" ] || check_secret
  if [ -n "${AGENT_CLIENT_CERT:-}" ]; then
    [ -r "$AGENT_CLIENT_CERT" ] || die "cannot read AGENT_CLIENT_CERT $AGENT_CLIENT_CERT"
    [ -z "${AGENT_CLIENT_KEY:-}" ] || [ -r "$AGENT_CLIENT_KEY" ] ||
      die "cannot read AGENT_CLIENT_KEY $AGENT_CLIENT_KEY"
  fi
  [ -z "${AGENT_CA_FILE:-}" ] || [ -r "$AGENT_CA_FILE" ] || die "cannot read AGENT_CA_FILE"
  [ -z "${AGENT_PROXY_CA_FILE:-}" ] || [ -r "$AGENT_PROXY_CA_FILE" ] ||
    die "cannot read AGENT_PROXY_CA_FILE"
}

# --- the device ----------------------------------------------------------------------------------

registration_files() { # the Intune app's registration of each local user, one path a line
  if [ -n "${AGENT_REGISTRATION_FILES:-}" ]; then
    printf '%s\n' "$AGENT_REGISTRATION_FILES" | tr ' ' '\n'
    return 0
  fi
  # Current builds of the Intune app keep it in ~/.local/state/intune, older ones in
  # ~/.config/intune (docs/agents.md cites where this is documented).
  cut -d: -f6 /etc/passwd 2>/dev/null | while IFS= read -r rf_home; do
    case $rf_home in '' | /) continue ;; esac
    printf '%s\n' "$rf_home/.local/state/intune/registration.toml" \
      "$rf_home/.config/intune/registration.toml"
  done
}

linux_device_id() { # sets rd_id: the device_hint (Intune device id) of the newest registration
  ld_newest=''
  registration_files >"$work/registrations"
  while IFS= read -r ld_file; do
    if [ -z "$ld_file" ] || [ ! -f "$ld_file" ] || [ ! -r "$ld_file" ]; then continue; fi
    if [ -z "$ld_newest" ] || [ -n "$(find "$ld_file" -prune -newer "$ld_newest")" ]; then
      ld_newest=$ld_file
    fi
  done <"$work/registrations"
  [ -n "$ld_newest" ] || return 1
  device_source=$ld_newest
  rd_id=$(sed -n 's/^[[:space:]]*device_hint[[:space:]]*=[[:space:]]*"\([^"]*\)"[[:space:]]*$/\1/p' \
    "$ld_newest" | head -n 1)
}

cert_facts() { # PEM_FILE: sets cf_start, cf_end (epochs), cf_sha1, cf_cn and cf_issuer (RFC 2253)
  cf_text=$(openssl x509 -in "$1" -noout -nameopt RFC2253 -subject -issuer -startdate -enddate \
    -fingerprint -sha1 2>/dev/null) || return 1
  cf_issuer=$(printf '%s\n' "$cf_text" | sed -n 's/^issuer= *//p')
  cf_cn=$(printf '%s\n' "$cf_text" | sed -n 's/^subject= *//p' | tr ',' '\n' | sed -n 's/^CN=//p' |
    head -n 1)
  cf_start=$(date_epoch "$(printf '%s\n' "$cf_text" | sed -n 's/^notBefore=//p')") || return 1
  cf_end=$(date_epoch "$(printf '%s\n' "$cf_text" | sed -n 's/^notAfter=//p')") || return 1
  cf_sha1=$(printf '%s\n' "$cf_text" | sed -n 's/^[Ss][Hh][Aa]1 [Ff]ingerprint=//p' | tr -d ':')
}

macos_device_id() { # sets rd_id: the CN of the newest valid Intune MDM identity certificate
  security find-certificate -a -Z -p /Library/Keychains/System.keychain >"$work/keychain" \
    2>/dev/null || return 1
  # Each PEM block to its own file; the hash and attribute lines around them are ignored.
  awk -v dir="$work" '
    /-----BEGIN CERTIFICATE-----/ { n++; file = dir "/keychain." n ".pem"; inside = 1 }
    inside { print > file }
    /-----END CERTIFICATE-----/ { inside = 0; close(file) }' "$work/keychain"
  md_best='' md_best_start=0
  md_now=$(epoch_now)
  for md_pem in "$work"/keychain.*.pem; do
    if [ ! -e "$md_pem" ] || ! cert_facts "$md_pem"; then continue; fi
    case ",$cf_issuer," in *",CN=Microsoft Intune MDM Device CA,"*) ;; *) continue ;; esac
    if [ "$cf_start" -gt "$md_now" ] || [ "$cf_end" -le "$md_now" ]; then continue; fi
    if [ -z "$md_best" ] || [ "$cf_start" -gt "$md_best_start" ]; then
      md_best=$md_pem md_best_start=$cf_start rd_id=$cf_cn
    fi
  done
  [ -n "$md_best" ] || return 1
  health_cert=$md_best
  device_source="the System keychain's Intune MDM certificate"
}

resolve_device_id() { # sets AGENT_DEVICE_ID; auto: found on the device, checked as a GUID
  [ "$AGENT_DEVICE_ID" = auto ] || return 0
  rd_id='' device_source=''
  if [ "$platform" = Darwin ]; then
    macos_device_id || rd_id=''
  else
    linux_device_id || rd_id=''
  fi
  is_guid "$rd_id" || die "AGENT_DEVICE_ID=auto found no Intune device id on this device" \
    "(${rd_id:+not a GUID: $rd_id; }set AGENT_DEVICE_ID to the Intune device id)"
  AGENT_DEVICE_ID=$rd_id
  log info "device id $AGENT_DEVICE_ID from $device_source"
}

# --- signing (Standard Webhooks v1) --------------------------------------------------------------

octal_escapes() { # HEX [XOR]: the bytes as printf %b escapes, each XORed with XOR (default 0)
  oe_hex=$1
  oe_out=''
  while [ -n "$oe_hex" ]; do
    oe_byte=$((0x${oe_hex%"${oe_hex#??}"} ^ ${2:-0}))
    oe_hex=${oe_hex#??}
    oe_out="$oe_out\\0$((oe_byte / 64))$((oe_byte / 8 % 8))$((oe_byte % 8))"
  done
  printf '%s' "$oe_out"
}

sign_with() { # KEY_HEX WEBHOOK_ID TIMESTAMP BODY_FILE: v1,base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))
  # HMAC (RFC 2104) from two SHA-256 passes, so the key is never an argument of a command
  # (other users can read a process's arguments); a key holds at most 64 bytes, one block.
  sg_block=$1
  while [ "${#sg_block}" -lt 128 ]; do sg_block="${sg_block}00"; done
  sg_inner=$({
    printf '%b' "$(octal_escapes "$sg_block" 54)"
    printf '%s.%s.' "$2" "$3"
    cat "$4"
  } | openssl dgst -sha256 -binary | od -An -v -tx1 | tr -d ' \n')
  {
    printf '%b' "$(octal_escapes "$sg_block" 92)"
    printf '%b' "$(octal_escapes "$sg_inner")"
  } | openssl dgst -sha256 -binary | openssl base64 -A | sed 's/^/v1,/'
}

sign() { # WEBHOOK_ID TIMESTAMP BODY_FILE: one v1 signature per secret, space-separated (a
  # rotation signs with the old and the new secret; the bridge accepts either)
  sg_all=''
  for sg_key in $key_hexes; do
    sg_all="$sg_all${sg_all:+ }$(sign_with "$sg_key" "$1" "$2" "$3")"
  done
  printf '%s' "$sg_all"
}

# --- the report ----------------------------------------------------------------------------------

json_escape() { # FILE NAME: its text as the inside of a JSON string, as Python's json.dumps
  # writes it, cut to AGENT_MAX_OUTPUT_BYTES *after* escaping (a control character grows to six
  # bytes, so a cap on the raw text could not bound the body), never inside an escape.
  # NUL cannot travel in JSON text; iconv -c drops bytes that are not UTF-8 (the bridge refuses
  # a body that is not UTF-8).
  tr -d '\000' <"$1" >"$1.nonul"
  if command -v iconv >/dev/null 2>&1; then
    iconv -f UTF-8 -t UTF-8 -c <"$1.nonul" >"$1.clean" 2>/dev/null
  else
    cp "$1.nonul" "$1.clean"
  fi
  je_trail=0
  [ -n "$(tail -c 1 "$1.clean" | tr -d '\n')" ] || je_trail=1
  rm -f "$1.cut"
  LC_ALL=C awk -v trail="$je_trail" -v cap="$AGENT_MAX_OUTPUT_BYTES" -v flag="$1.cut" '
    BEGIN {
      for (i = 1; i < 32; i++) esc[sprintf("%c", i)] = sprintf("\\u%04x", i)
      ctrl = "[" sprintf("%c", 1) "-" sprintf("%c", 31) "]"
      total = 0
    }
    function emit(piece,   room, i, n, width) {
      total += length(piece)
      if (cut) return
      if (written + length(piece) <= cap) {
        printf "%s", piece
        written += length(piece)
        return
      }
      # Cut at the last whole escape or byte that fits; a UTF-8 character cut in half is
      # dropped by the iconv pass after this.
      room = cap - written
      i = 1
      n = length(piece)
      while (i <= n) {
        width = 1
        if (substr(piece, i, 1) == "\\") width = (substr(piece, i + 1, 1) == "u") ? 6 : 2
        if (i + width - 1 > room) break
        i += width
      }
      printf "%s", substr(piece, 1, i - 1)
      cut = 1
    }
    {
      line = $0
      gsub(/[\\"]/, "\\\\&", line)
      gsub(/\t/, "\\t", line)
      gsub(/\r/, "\\r", line)
      gsub(/\010/, "\\b", line)
      gsub(/\014/, "\\f", line)
      out = (NR > 1) ? "\\n" : ""
      while (match(line, ctrl)) {
        out = out substr(line, 1, RSTART - 1) esc[substr(line, RSTART, 1)]
        line = substr(line, RSTART + 1)
      }
      emit(out line)
    }
    END {
      if (NR > 0 && trail) emit("\\n")
      if (cut) print total > flag
    }' "$1.clean" >"$1.escaped"
  if [ -e "$1.cut" ] && command -v iconv >/dev/null 2>&1; then
    iconv -f UTF-8 -t UTF-8 -c <"$1.escaped" 2>/dev/null
  else
    cat "$1.escaped"
  fi
  if [ -e "$1.cut" ]; then
    log warning "$2 is $(cat "$1.cut") bytes as JSON; sending the first $AGENT_MAX_OUTPUT_BYTES"
  fi
}

write_report() { # OUT_FILE: compact JSON, keys in the order of agents/test-vectors.json
  {
    printf '{"deviceId":"%s","scriptId":"%s","reportId":"%s",' "$AGENT_DEVICE_ID" \
      "$AGENT_SCRIPT_ID" "$report_id"
    printf '"execution":{"exitCode":%s,"stdout":"' "$exit_json"
    json_escape "$work/stdout" stdout
    printf '","stderr":"'
    json_escape "$work/stderr" stderr
    printf '","startedAt":"%s","finishedAt":"%s","timedOut":%s}}' "$started_at" "$finished_at" \
      "$timed_out"
  } >"$1"
}

process_tree() { # PID: it and every process below it, one per line (ps -A: Linux and macOS)
  if ! command -v ps >/dev/null 2>&1; then
    printf '%s\n' "$1"
    return 0
  fi
  ps -A -o pid= -o ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      found[root] = 1
      print root
      do {
        added = 0
        for (p in parent) if (!(p in found) && (parent[p] in found)) {
          found[p] = 1
          print p
          added = 1
        }
      } while (added)
    }'
}

signal_tree() { # SIGNAL FILE: signals every process listed in FILE
  while read -r st_pid; do kill "-$1" "$st_pid" 2>/dev/null; done <"$2"
}

run_script() { # COMMAND [ARG...]: runs it with a timeout; fills $work/stdout, $work/stderr
  started_at=$(now_iso)
  : >"$work/running"
  "$@" </dev/null >"$work/stdout" 2>"$work/stderr" &
  script_pid=$!
  # The watchdog polls rather than being signalled (a signal could land before it records its
  # sleep's pid, leaving that sleep behind). Until we reap the script its pid cannot be reused.
  # It stops the script and everything it started, listed before the first signal (orphans move
  # to init). Its output goes nowhere, so it never keeps a caller that reads ours waiting.
  (
    wd_left=$AGENT_SCRIPT_TIMEOUT
    while [ -e "$work/running" ]; do
      if [ "$wd_left" -le 0 ]; then
        process_tree "$script_pid" >"$work/tree"
        : >"$work/timed-out"
        signal_tree TERM "$work/tree"
        wd_grace=5
        while [ "$wd_grace" -gt 0 ] && [ -e "$work/running" ]; do
          sleep 1
          wd_grace=$((wd_grace - 1))
        done
        signal_tree KILL "$work/tree"
        exit 0
      fi
      sleep 1
      wd_left=$((wd_left - 1))
    done
  ) </dev/null >/dev/null 2>&1 &
  wait "$script_pid"
  rs_status=$?
  script_pid=''
  rm -f "$work/running"
  finished_at=$(now_iso)
  if [ -e "$work/timed-out" ]; then
    log warning "$1 did not finish within $AGENT_SCRIPT_TIMEOUT s and was stopped"
    exit_json=null timed_out=true
  else
    exit_json=$rs_status timed_out=false
  fi
}

# --- locks ---------------------------------------------------------------------------------------

boot_id() { # one word that changes at every boot, so a lock from before a reboot is known stale
  if [ -r /proc/sys/kernel/random/boot_id ]; then
    tr -d ' \n' </proc/sys/kernel/random/boot_id
  elif bi_value=$(sysctl -n kern.bootsessionuuid 2>/dev/null) && [ -n "$bi_value" ]; then
    printf '%s' "$bi_value" | tr -d ' \n'
  else
    printf unknown
  fi
}

process_alive() { # PID: kill -0 fails for another user's process, which /proc still shows
  kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]
}

lock_stale() { # LOCK_FILE CONTENT: 0 when the run that holds it cannot still be running; sets why
  ls_pid=${2%% *}
  ls_rest=${2#* }
  ls_boot=${ls_rest%% *}
  ls_rest=${ls_rest#* }
  ls_started=${ls_rest%% *}
  ls_hold=$((AGENT_MAX_RUN_SECONDS + AGENT_HTTP_TIMEOUT + 30))
  if ! is_uint "$ls_pid" || ! is_uint "$ls_started"; then
    # No pid (a crash between creating and writing it, or a foreign file): stale once it is
    # older than any run could be.
    [ -n "$(find "$1" -prune -mmin +$(((ls_hold + 59) / 60)) 2>/dev/null)" ] || return 1
    why="it names no process and is older than the maximum run time"
  elif [ "$ls_boot" != "$boot" ]; then
    why="process $ls_pid held it before a reboot"
  elif ! process_alive "$ls_pid"; then
    why="process $ls_pid has ended"
  elif [ $(($(epoch_now) - ls_started)) -gt "$ls_hold" ]; then
    why="process $ls_pid has held it past the maximum run time (${ls_hold} s)"
  else
    return 1
  fi
}

acquire() { # NAME SECONDS: takes AGENT_LOCK_DIR/NAME.lock, waiting up to SECONDS; sets lock_token
  aq_lock="$AGENT_LOCK_DIR/$1.lock"
  aq_tmp="$AGENT_LOCK_DIR/.$1.$$.$(random_hex 4)"
  lock_token="$$ $boot $(epoch_now) $(random_hex 8)"
  printf '%s\n' "$lock_token" >"$aq_tmp" || return 1
  aq_waited=0 aq_spins=0 lock_holder=''
  while :; do
    # A hard link appears whole and fails if the name exists: the lock never lacks its owner.
    if ln "$aq_tmp" "$aq_lock" 2>/dev/null; then
      rm -f "$aq_tmp"
      # Takeover marks older than any run are no longer anyone's (see below).
      find "$AGENT_LOCK_DIR" -name "$1.lock.takeover.*" -mmin +$(((AGENT_MAX_RUN_SECONDS + 119) / 60)) \
        -exec rm -f {} + 2>/dev/null
      return 0
    fi
    if aq_seen=$(cat "$aq_lock" 2>/dev/null); then
      if lock_stale "$aq_lock" "$aq_seen"; then
        # Of several runs that judged this lock stale, only the one that creates its takeover
        # mark (named by the lock's inode and nonce, never removed while a run could still
        # hold that judgement) removes it; the others wait, or leave the spool to that run.
        aq_inode=$(ls -i "$aq_lock" 2>/dev/null)
        aq_inode=${aq_inode#"${aq_inode%%[! ]*}"}
        aq_inode=${aq_inode%% *}
        if [ -n "$aq_inode" ] &&
          ln "$aq_tmp" "$aq_lock.takeover.$aq_inode-${aq_seen##* }" 2>/dev/null; then
          if [ "$(cat "$aq_lock" 2>/dev/null)" = "$aq_seen" ]; then
            rm -f "$aq_lock"
            log warning "took over ${aq_lock##*/}: $why"
          fi
          continue
        fi
        lock_holder="${aq_seen%% *} (being taken over)"
      else
        lock_holder=${aq_seen%% *}
      fi
    elif [ "$aq_spins" -lt 5 ]; then
      # Released between the link and the read: try again at once.
      aq_spins=$((aq_spins + 1))
      continue
    fi
    if [ "$aq_waited" -ge "$2" ]; then
      rm -f "$aq_tmp"
      return 1
    fi
    aq_waited=$((aq_waited + 1))
    sleep 1
  done
}

holding() { # NAME TOKEN: the lock is still this run's
  [ "$(cat "$AGENT_LOCK_DIR/$1.lock" 2>/dev/null)" = "$2" ]
}

release() { # NAME TOKEN: removes the lock only while it is this run's
  ! holding "$1" "$2" || rm -f "$AGENT_LOCK_DIR/$1.lock"
}

# --- the spool -----------------------------------------------------------------------------------

spool_entry() { # NAME: 0 when NAME is one of the agent's report files; sets se_seq, se_created
  # (Unix seconds, empty for a 1.0 name) and se_id. Any other file is not the agent's: ignored.
  case $1 in
    [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9].?*.json)
      se_seq=${1%%.*}
      se_id=${1#*.}
      se_created=${se_id%%.*}
      se_id=${se_id#*.}
      ;;
    [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-?*.json)
      se_seq=${1%%-*}
      se_created=''
      se_id=${1#*-}
      ;;
    *) return 1 ;;
  esac
  se_id=${se_id%.json}
  is_report_id "$se_id"
}

oldest_spooled() { # sets os_file to the first report in name (= creation) order, if any
  for os_file in "$AGENT_SPOOL_DIR"/*.json; do
    [ -f "$os_file" ] && spool_entry "${os_file##*/}" && return 0
  done
  return 1
}

spool_depth() { # sets sp_count and sp_oldest (creation time of the oldest report, or empty)
  sp_count=0 sp_oldest=''
  for sp_file in "$AGENT_SPOOL_DIR"/*.json; do
    if [ ! -f "$sp_file" ] || ! spool_entry "${sp_file##*/}"; then continue; fi
    sp_count=$((sp_count + 1))
    [ -n "$sp_oldest" ] || sp_oldest=$se_created
  done
}

adopt_legacy() { # gives 1.0 spool names (no creation time) one, from now, keeping their order
  for al_file in "$AGENT_SPOOL_DIR"/*.json; do
    if [ ! -f "$al_file" ] || ! spool_entry "${al_file##*/}" || [ -n "$se_created" ]; then
      continue
    fi
    mv -f "$al_file" "$AGENT_SPOOL_DIR/$se_seq.$(printf '%010d' "$(epoch_now)").$se_id.json" &&
      log info "report $se_id from an older agent: its age is counted from now"
  done
}

spool_report() { # BODY_FILE: adds it under the next sequence number, then enforces AGENT_SPOOL_MAX
  acquire add 30 || die "could not lock $AGENT_SPOOL_DIR to add a report (held by process ${lock_holder:-?})"
  add_token=$lock_token
  sr_seq=0
  sr_count=0
  for sr_file in "$AGENT_SPOOL_DIR"/*.json; do
    if [ ! -f "$sr_file" ] || ! spool_entry "${sr_file##*/}"; then continue; fi
    sr_seq=$se_seq
    sr_count=$((sr_count + 1))
  done
  sr_seq=$(decimal "$sr_seq")
  sr_name=$(printf '%010d.%010d.%s.json' $((sr_seq + 1)) "$(epoch_now)" "$report_id")
  # Written under a name of this run's own, then renamed: a file with a final name is whole.
  sr_tmp="$AGENT_SPOOL_DIR/.incoming.$$.$(random_hex 4)"
  if ! { cp "$1" "$sr_tmp" && mv -f "$sr_tmp" "$AGENT_SPOOL_DIR/$sr_name"; }; then
    rm -f "$sr_tmp"
    die "could not write to $AGENT_SPOOL_DIR"
  fi
  sr_count=$((sr_count + 1))
  log info "report $report_id spooled ($sr_count waiting)"
  while [ "$sr_count" -gt "$AGENT_SPOOL_MAX" ] && oldest_spooled; do
    rm -f "$os_file"
    sr_count=$((sr_count - 1))
    log warning "spool full (AGENT_SPOOL_MAX=$AGENT_SPOOL_MAX): dropped the oldest report $se_id"
  done
  release add "$add_token"
  add_token=''
}

# --- sending -------------------------------------------------------------------------------------

sleep_ms() { # MILLISECONDS
  [ "$1" -gt 0 ] || return 0
  sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"
}

retry_after_ms() { # HEADER_VALUE: prints the wait in ms; integer, fractional or HTTP-date
  case $1 in
    '' | .* | *. | *.*.*) return 1 ;;
    *[!0123456789.]*)
      ra_at=$(date_epoch "$1") || return 1
      [ -n "$ra_at" ] || return 1
      ra_ms=$(((ra_at - $(epoch_now)) * 1000))
      ;;
    *.*)
      ra_frac=${1#*.}000
      ra_frac=${ra_frac%"${ra_frac#???}"}
      ra_ms=$(($(decimal "${1%%.*}") * 1000 + $(decimal "$ra_frac")))
      # Rounded up to the next millisecond: never earlier than asked.
      case ${1#*.} in ???*[123456789]*) ra_ms=$((ra_ms + 1)) ;; esac
      ;;
    *) ra_ms=$(($(decimal "$1") * 1000)) ;;
  esac
  [ "$ra_ms" -gt 0 ] || ra_ms=0
  printf '%s' "$ra_ms"
}

backoff_ms() { # ATTEMPT: exponential from AGENT_BACKOFF_BASE, capped, with equal jitter
  bo_ms=$((AGENT_BACKOFF_BASE * 1000))
  bo_n=1
  while [ "$bo_n" -lt "$1" ] && [ "$bo_ms" -lt "$((AGENT_BACKOFF_MAX * 1000))" ]; do
    bo_ms=$((bo_ms * 2))
    bo_n=$((bo_n + 1))
  done
  [ "$bo_ms" -le "$((AGENT_BACKOFF_MAX * 1000))" ] || bo_ms=$((AGENT_BACKOFF_MAX * 1000))
  bo_rand=$(decimal "$(od -An -N2 -tu2 /dev/urandom | tr -d ' \n')")
  printf '%s' $((bo_ms / 2 + (bo_ms - bo_ms / 2) * bo_rand / 65536))
}

json_field() { # NAME FILE: a top-level string field of a JSON answer, for the log only
  sed -n -E "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"(([^\"\\\\]|\\\\.)*)\".*/\\1/p" "$2" |
    head -n 1 | cut -c 1-300
}

json_number() { # NAME FILE: a top-level whole-number field
  sed -n -E "s/.*\"$1\"[[:space:]]*:[[:space:]]*([0-9]+).*/\\1/p" "$2" | head -n 1
}

answer_action() { # STATUS TYPE: sets action to done, refused or keep (the agent-API contract)
  case $1 in
    2??) action='done' ;;
    400 | 413 | 415 | 422) action=refused ;;
    # Graph refused it for good and the bridge dead-lettered it: resending cannot help.
    502) case ${2##*[:/]} in graph-*) action='done' ;; *) action=keep ;; esac ;;
    *) action=keep ;;
  esac
}

retry_now() { # STATUS TYPE: 0 when another attempt in this run may get a different answer
  case $1 in
    000 | 408 | 429 | 5??) return 0 ;;
    # This id was already seen with this timestamp (an earlier run's attempt in the same
    # second): the next attempt carries a newer timestamp.
    401) case $2 in *:signature-replayed) return 0 ;; esac ;;
  esac
  return 1
}

post() { # BODY_FILE REPORT_ID: one attempt; sets http_code, signed anew with a fresh timestamp
  po_ts=$(epoch_now)
  # Two attempts in one second would be byte-identical, which the bridge refuses as a replay.
  [ "$po_ts" -gt "$last_ts" ] || po_ts=$((last_ts + 1))
  last_ts=$po_ts
  po_body=$1
  po_id=$2
  # No -L: a redirect is never followed (curl would turn the POST into a GET on 301-303).
  set -- -sS -o "$work/answer" -D "$work/headers" -w '%{http_code}' \
    --connect-timeout 10 --max-time "$AGENT_HTTP_TIMEOUT" -A "$user_agent" \
    -H 'Content-Type: application/json' -H 'Expect:' --data-binary "@$po_body"
  if [ -n "$hmac_secret" ]; then
    set -- "$@" -H "webhook-id: $po_id" -H "webhook-timestamp: $po_ts" \
      -H "webhook-signature: $(sign "$po_id" "$po_ts" "$po_body")"
  fi
  [ -z "${AGENT_CLIENT_CERT:-}" ] || set -- "$@" --cert "$AGENT_CLIENT_CERT"
  [ -z "${AGENT_CLIENT_KEY:-}" ] || set -- "$@" --key "$AGENT_CLIENT_KEY"
  [ -z "${AGENT_CA_FILE:-}" ] || set -- "$@" --cacert "$AGENT_CA_FILE"
  [ -z "${AGENT_PROXY:-}" ] || set -- "$@" --proxy "$AGENT_PROXY"
  [ -z "${AGENT_PROXY_CA_FILE:-}" ] || set -- "$@" --proxy-cacert "$AGENT_PROXY_CA_FILE"
  : >"$work/answer"
  : >"$work/headers"
  http_code=$(curl "$@" "$url" 2>"$work/curl-error")
  [ -n "$http_code" ] || http_code=000
}

header() { # NAME: the last value of a response header, its name matched in any case
  LC_ALL=C awk -v name="$1" '
    BEGIN { name = tolower(name) }
    {
      sub(/\r$/, "")
      i = index($0, ":")
      if (i && tolower(substr($0, 1, i - 1)) == name) {
        value = substr($0, i + 1)
        sub(/^[ \t]+/, "", value)
        last = value
      }
    }
    END { if (last != "") print last }' "$work/headers"
}

send_report() { # SPOOL_FILE: 0 done, 3 dropped (refused, or past AGENT_MAX_AGE), 75 kept
  spool_entry "${1##*/}"
  sd_id=$se_id
  sd_age=$(($(epoch_now) - $(decimal "$se_created")))
  if [ "$sd_age" -gt "$AGENT_MAX_AGE" ]; then
    log error "report $sd_id DROPPED UNDELIVERED: it is $sd_age s old, past AGENT_MAX_AGE=$AGENT_MAX_AGE;" \
      "the bridge never accepted it (see the earlier lines for its answers)"
    last_refusal="$(now_iso) report $sd_id too old ($sd_age s)"
    return 3
  fi
  sd_attempt=0
  last_ts=0
  while :; do
    sd_attempt=$((sd_attempt + 1))
    if ! holding send "$send_token"; then
      log warning "another run took over the send lock; stopping, the spool is kept"
      return 75
    fi
    post "$1" "$sd_id"
    sd_type=$(json_field type "$work/answer")
    answer_action "$http_code" "$sd_type"
    case $action in
      done)
        sd_outcome=$(json_field status "$work/answer")
        sd_reason=$(json_field reason "$work/answer")
        if [ "$http_code" = 502 ]; then
          log warning "report $sd_id: 502 $sd_type: Graph refused it for good; the bridge kept" \
            "it for replay, so it leaves the spool"
        else
          log info "report $sd_id: $http_code ${sd_outcome:-accepted}${sd_reason:+ ($sd_reason)}"
        fi
        last_success=$(now_iso)
        return 0
        ;;
      refused)
        log error "report $sd_id refused: $http_code $sd_type:" \
          "$(json_field detail "$work/answer") - dropped, a resend would be refused too"
        last_refusal="$(now_iso) $http_code ${sd_type##*[:/]} report $sd_id"
        return 3
        ;;
    esac
    case $http_code in
      000) sd_why="no answer ($(head -n 1 "$work/curl-error" | cut -c 1-200))" ;;
      3??) sd_why="$http_code redirect to $(header Location | cut -c 1-200) (not followed)" ;;
      *) sd_why="$http_code $sd_type" ;;
    esac
    if ! retry_now "$http_code" "$sd_type"; then
      log warning "report $sd_id: $sd_why; kept in the spool for a later run"
      return 75
    fi
    sd_retry=$(header Retry-After)
    if [ "$sd_attempt" -ge "$AGENT_MAX_ATTEMPTS" ]; then
      log warning "report $sd_id: attempt $sd_attempt: $sd_why; giving up for this run, kept in the spool"
      wait_next_run "$sd_retry"
      return 75
    fi
    if sd_wait=$(retry_after_ms "$sd_retry"); then
      if [ "$sd_wait" -gt "$((AGENT_MAX_RETRY_AFTER * 1000))" ]; then
        log warning "report $sd_id: $sd_why; Retry-After $sd_retry is beyond AGENT_MAX_RETRY_AFTER, kept in the spool"
        wait_next_run "$sd_retry"
        return 75
      fi
    else
      sd_wait=$(backoff_ms "$sd_attempt")
    fi
    if [ $(($(epoch_now) + sd_wait / 1000)) -gt "$deadline" ]; then
      log warning "report $sd_id: $sd_why; AGENT_MAX_RUN_SECONDS reached, kept in the spool"
      wait_next_run "$sd_retry"
      return 75
    fi
    log warning "report $sd_id: attempt $sd_attempt: $sd_why; retrying in $sd_wait ms"
    sleep_ms "$sd_wait"
  done
}

wait_next_run() { # RETRY_AFTER: later runs send nothing before it (at most an hour, as the bridge)
  wn_ms=$(retry_after_ms "$1") || return 0
  [ "$wn_ms" -le 3600000 ] || wn_ms=3600000
  not_before=$(($(epoch_now) + (wn_ms + 999) / 1000))
}

flush() { # sends the spool oldest first; stops at the first report that is kept
  fl_status=$EXIT_SENT
  while :; do
    if ! acquire send 0; then
      log info "another run (process ${lock_holder:-?}) is sending the spool"
      [ "$fl_status" -ne "$EXIT_SENT" ] || fl_status=$EXIT_BUSY
      return "$fl_status"
    fi
    send_token=$lock_token
    flush_locked
    fl_result=$?
    release send "$send_token"
    send_token=''
    case $fl_result in
      0) ;;
      3) fl_status=$EXIT_DROPPED ;;
      *) return "$fl_result" ;;
    esac
    # A report spooled by a run that found this one sending, after its last look: sent now.
    oldest_spooled || return "$fl_status"
  done
}

flush_locked() { # the body of flush, under the send lock
  fk_status=0
  adopt_legacy
  fk_now=$(epoch_now)
  if [ "${not_before:-0}" -gt "$fk_now" ]; then
    log warning "the bridge asked to wait (Retry-After) until $not_before; nothing is sent before then"
    return "$EXIT_SPOOLED"
  fi
  deadline=$((fk_now + AGENT_MAX_RUN_SECONDS))
  # Looked up afresh each time: a report spooled meanwhile by another run is sent too.
  while oldest_spooled; do
    fk_file=$os_file
    send_report "$fk_file"
    case $? in
      0) ;;
      3) fk_status=3 ;;
      *)
        spool_depth
        log warning "$sp_count report(s) remain in $AGENT_SPOOL_DIR for the next run"
        return "$EXIT_SPOOLED"
        ;;
    esac
    rm -f "$fk_file"
    if [ -e "$fk_file" ]; then
      log error "cannot delete $fk_file; stopping so it is not sent again and again"
      return "$EXIT_SPOOLED"
    fi
  done
  return "$fk_status"
}

# --- health --------------------------------------------------------------------------------------

load_state() { # what the previous runs left in the status file
  last_success='' last_refusal='' not_before=0
  [ -r "$AGENT_STATUS_FILE" ] || return 0
  last_success=$(json_field lastSuccessAt "$AGENT_STATUS_FILE")
  last_refusal=$(json_field lastRefusal "$AGENT_STATUS_FILE")
  not_before=$(json_number retryNotBefore "$AGENT_STATUS_FILE")
  : "${not_before:=0}"
}

json_string_or_null() { # VALUE: a JSON string of log-safe characters, or null when empty
  if [ -n "$1" ]; then
    printf '"%s"' "$(printf '%s' "$1" | tr -cd 'A-Za-z0-9 ._:/+()-')"
  else
    printf null
  fi
}

report_health() { # STATUS: one summary line, and status.json beside the spool
  spool_depth
  rh_now=$(epoch_now)
  rh_age=''
  [ -z "$sp_oldest" ] || rh_age=$((rh_now - $(decimal "$sp_oldest")))
  [ -n "${health_cert:-}" ] || health_cert=${AGENT_CLIENT_CERT:-}
  rh_thumb='' rh_days=''
  if [ -n "$health_cert" ] && cert_facts "$health_cert"; then
    rh_thumb=$cf_sha1
    rh_days=$(((cf_end - rh_now) / 86400))
  fi
  [ "${not_before:-0}" -gt "$rh_now" ] || not_before=0
  log info "summary version=$VERSION exit=$1 device=${AGENT_DEVICE_ID:-?} spooled=$sp_count" \
    "oldest_age_s=${rh_age:-none} last_2xx=${last_success:-never}" \
    "last_refusal=\"${last_refusal:-none}\" cert_sha1=${rh_thumb:-none} cert_days_left=${rh_days:-none}"
  rh_tmp="$AGENT_STATUS_FILE.$$.tmp"
  {
    printf '{"agent":"intune-compliance-agent","version":"%s","platform":"%s",' "$VERSION" "$platform"
    printf '"updatedAt":"%s","exitCode":%s,"deviceId":%s,"spooled":%s,' "$(now_iso)" "$1" \
      "$(json_string_or_null "${AGENT_DEVICE_ID:-}")" "$sp_count"
    printf '"oldestReportAgeSeconds":%s,"lastSuccessAt":%s,"lastRefusal":%s,' "${rh_age:-null}" \
      "$(json_string_or_null "$last_success")" "$(json_string_or_null "$last_refusal")"
    printf '"retryNotBefore":%s,"certificate":' "$not_before"
    if [ -n "$rh_thumb" ]; then
      printf '{"sha1":"%s","daysLeft":%s}}\n' "$rh_thumb" "$rh_days"
    else
      printf 'null}\n'
    fi
  } >"$rh_tmp"
  if ! mv -f "$rh_tmp" "$AGENT_STATUS_FILE"; then
    log warning "cannot write $AGENT_STATUS_FILE"
  fi
}

# --- commands ------------------------------------------------------------------------------------

cleanup() {
  if [ -n "${script_pid:-}" ]; then
    process_tree "$script_pid" >"$work/tree"
    signal_tree TERM "$work/tree"
  fi
  [ -z "${add_token:-}" ] || release add "$add_token"
  [ -z "${send_token:-}" ] || release send "$send_token"
  [ -z "${work:-}" ] || rm -rf "$work"
}

scratch() { # a private temporary directory for this run
  [ -n "$work" ] && return 0
  work=$(mktemp -d "${TMPDIR:-/tmp}/$PROG.XXXXXX") || die "cannot create a temporary directory"
}

prepare() { # what every sending command needs: settings, spool, locks and scratch space
  check_sending_config
  case $platform in
    Darwin) user_agent_os=macos ;;
    *) user_agent_os=$(printf '%s' "$platform" | tr '[:upper:]' '[:lower:]') ;;
  esac
  user_agent="intune-compliance-agent/$VERSION ($user_agent_os)"
  mkdir -p "$AGENT_SPOOL_DIR" || die "cannot create AGENT_SPOOL_DIR $AGENT_SPOOL_DIR"
  if ! mkdir -p "$AGENT_LOCK_DIR" 2>/dev/null || [ ! -w "$AGENT_LOCK_DIR" ]; then
    log info "cannot use AGENT_LOCK_DIR $AGENT_LOCK_DIR; locking in the spool directory instead"
    AGENT_LOCK_DIR=$AGENT_SPOOL_DIR
  fi
  boot=$(boot_id)
  scratch
  load_state
}

prepare_report() { # checks the ids shared by run and submit
  resolve_device_id
  is_guid "${AGENT_DEVICE_ID:-}" || die "AGENT_DEVICE_ID must be the Intune device id (a GUID) or auto"
  is_guid "${AGENT_SCRIPT_ID:-}" || die "the script id (-s or AGENT_SCRIPT_ID) must be a GUID"
  report_id="$(date -u +%Y%m%dT%H%M%SZ)-$(random_hex 8)"
}

cmd_run() {
  OPTIND=1
  while getopts s:t: cr_opt; do
    case $cr_opt in
      s) AGENT_SCRIPT_ID=$OPTARG ;;
      t) AGENT_SCRIPT_TIMEOUT=$OPTARG ;;
      *) usage >&2 && exit "$EXIT_USAGE" ;;
    esac
  done
  shift $((OPTIND - 1))
  [ "$#" -gt 0 ] || die "run: name the detection script to run"
  if ! is_uint "$AGENT_SCRIPT_TIMEOUT" || [ "$AGENT_SCRIPT_TIMEOUT" -lt 1 ]; then
    die "-t takes whole seconds, at least 1"
  fi
  command -v "$1" >/dev/null 2>&1 || die "run: cannot find or execute $1"
  prepare
  prepare_report
  run_script "$@"
  log info "$1 exited with ${exit_json}; report $report_id"
  write_report "$work/report.json"
  spool_report "$work/report.json"
  flush
}

cmd_submit() {
  OPTIND=1
  exit_json=0 timed_out=false started_at='' finished_at='' cs_stderr='' cs_id=''
  while getopts s:x:Te:S:F:r: cs_opt; do
    case $cs_opt in
      s) AGENT_SCRIPT_ID=$OPTARG ;;
      x) exit_json=$OPTARG ;;
      T) exit_json=null timed_out=true ;;
      e) cs_stderr=$OPTARG ;;
      S) started_at=$OPTARG ;;
      F) finished_at=$OPTARG ;;
      r) cs_id=$OPTARG ;;
      *) usage >&2 && exit "$EXIT_USAGE" ;;
    esac
  done
  shift $((OPTIND - 1))
  [ "$#" -eq 1 ] || die "submit: give the script's stdout as one file, or - for standard input"
  case $exit_json in
    null) ;;
    -*)
      is_uint "${exit_json#-}" || die "-x takes an integer exit code"
      exit_json=-$(decimal "${exit_json#-}")
      ;;
    *)
      is_uint "$exit_json" || die "-x takes an integer exit code"
      exit_json=$(decimal "$exit_json")
      ;;
  esac
  [ -n "$finished_at" ] || finished_at=$(now_iso)
  [ -n "$started_at" ] || started_at=$finished_at
  if ! is_timestamp "$started_at" || ! is_timestamp "$finished_at"; then
    die "-S and -F take RFC 3339 timestamps with a zone, such as 2026-11-28T10:00:02Z"
  fi
  prepare
  prepare_report
  if [ -n "$cs_id" ]; then
    is_report_id "$cs_id" || die "-r takes 1-64 characters of A-Z a-z 0-9 . _ -"
    report_id=$cs_id
  fi
  if [ "$1" = - ]; then cat >"$work/stdout"; else cat -- "$1" >"$work/stdout"; fi ||
    die "submit: cannot read $1"
  if [ -n "$cs_stderr" ]; then cat -- "$cs_stderr" >"$work/stderr"; else : >"$work/stderr"; fi ||
    die "submit: cannot read $cs_stderr"
  write_report "$work/report.json"
  spool_report "$work/report.json"
  flush
}

cmd_sign() {
  [ "$#" -eq 3 ] || die "sign: give WEBHOOK_ID TIMESTAMP BODY_FILE"
  [ -n "$hmac_secret" ] || die "sign: AGENT_HMAC_SECRET is not set"
  [ -r "$3" ] || die "sign: cannot read $3"
  check_secret
  sign "$@"
  printf '\n'
}

cmd_device_id() {
  scratch
  resolve_device_id
  is_guid "$AGENT_DEVICE_ID" || die "AGENT_DEVICE_ID is not a GUID: $AGENT_DEVICE_ID"
  printf '%s\n' "$AGENT_DEVICE_ID"
}

main() {
  add_token='' send_token='' work='' script_pid='' health_cert=''
  trap 'cleanup' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mn_config=${AGENT_CONFIG:-}
  OPTIND=1
  while getopts c:h mn_opt; do
    case $mn_opt in
      c) mn_config=$OPTARG ;;
      h) usage && exit 0 ;;
      *) usage >&2 && exit "$EXIT_USAGE" ;;
    esac
  done
  shift $((OPTIND - 1))
  [ "$#" -gt 0 ] || { usage >&2 && exit "$EXIT_USAGE"; }
  if [ -n "$mn_config" ]; then
    load_config "$mn_config"
  elif [ -r /etc/intune-compliance-agent.conf ]; then
    load_config /etc/intune-compliance-agent.conf
  fi
  set_defaults
  rotate_log
  mn_command=$1
  shift
  case $mn_command in
    run) cmd_run "$@" ;;
    submit) cmd_submit "$@" ;;
    flush) prepare && flush ;;
    sign) cmd_sign "$@" && exit 0 ;;
    device-id) cmd_device_id && exit 0 ;;
    help) usage && exit 0 ;;
    *) usage >&2 && exit "$EXIT_USAGE" ;;
  esac
  mn_status=$?
  report_health "$mn_status"
  return "$mn_status"
}

main "$@"
