#!/bin/sh
# Intune compliance-script bridge: reference device agent for macOS and Linux.
#
# POSIX sh with curl and openssl only (runs under dash as well as bash). It runs a detection
# script (or takes the output of one that already ran), writes the report into a spool directory
# first, then sends every spooled report in creation order: signed with Standard Webhooks
# (HMAC-SHA256) and/or over mutual TLS with a client certificate, with backoff, jitter and
# Retry-After. A report leaves the spool only after a 2xx answer, or when the bridge refuses it
# for good (a 4xx other than 408/429), which is logged with the problem's type and detail.
#
# Deployment, configuration and logs: docs/agents.md. Protocol vectors: agents/test-vectors.json.

set -u
umask 077

PROG=compliance-agent
VERSION=1.0.0
INGEST_PATH=/api/v1/compliance-script-results
CR=$(printf '\r')
CONFIG_KEYS='AGENT_BRIDGE_URL AGENT_DEVICE_ID AGENT_SCRIPT_ID AGENT_HMAC_SECRET AGENT_CLIENT_CERT
AGENT_CLIENT_KEY AGENT_CA_FILE AGENT_SPOOL_DIR AGENT_SPOOL_MAX AGENT_SCRIPT_TIMEOUT
AGENT_MAX_ATTEMPTS AGENT_BACKOFF_BASE AGENT_BACKOFF_MAX AGENT_MAX_RETRY_AFTER
AGENT_MAX_RUN_SECONDS AGENT_HTTP_TIMEOUT AGENT_MAX_OUTPUT_BYTES AGENT_LOG_FILE'

usage() {
  cat <<'EOF'
usage: compliance-agent.sh [-c CONFIG] run [-s SCRIPT_ID] [-t SECONDS] [--] COMMAND [ARG...]
       compliance-agent.sh [-c CONFIG] submit [-s SCRIPT_ID] [-x EXIT_CODE | -T] [-e STDERR_FILE]
                           [-S STARTED_AT] [-F FINISHED_AT] [-r REPORT_ID] STDOUT_FILE|-
       compliance-agent.sh [-c CONFIG] flush
       compliance-agent.sh [-c CONFIG] sign WEBHOOK_ID TIMESTAMP BODY_FILE

run     run the detection script, then send the spooled reports and this one, oldest first
submit  the same for a script that already ran (Intune style: one JSON object on stdout)
flush   send the spooled reports only
sign    print the webhook-signature of BODY_FILE (check a secret against the test vectors)

Exit status: 0 sent (or handed to the run in progress), 2 usage or configuration error,
3 the bridge refused a report for good (logged, dropped), 75 reports remain spooled.
EOF
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
  exit 2
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
  case $1 in *Z | *[+-]??:??) return 0 ;; esac
  return 1
}

now_iso() { # UTC with milliseconds where date(1) has %N (GNU), whole seconds otherwise (BSD)
  ni_value=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
  case $ni_value in *N*) ni_value=$(date -u +%Y-%m-%dT%H:%M:%SZ) ;; esac
  printf '%s' "$ni_value"
}

random_hex() { # BYTES
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
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
  if [ "$(uname -s)" = Darwin ]; then
    : "${AGENT_SPOOL_DIR:=/Library/Application Support/IntuneComplianceAgent/spool}"
  else
    : "${AGENT_SPOOL_DIR:=/var/spool/intune-compliance-agent}"
  fi
  : "${AGENT_SPOOL_MAX:=200}" "${AGENT_SCRIPT_TIMEOUT:=300}" "${AGENT_MAX_ATTEMPTS:=5}"
  : "${AGENT_BACKOFF_BASE:=2}" "${AGENT_BACKOFF_MAX:=60}" "${AGENT_MAX_RETRY_AFTER:=300}"
  : "${AGENT_MAX_RUN_SECONDS:=900}" "${AGENT_HTTP_TIMEOUT:=60}" "${AGENT_MAX_OUTPUT_BYTES:=262144}"
  for sd_key in AGENT_SPOOL_MAX AGENT_SCRIPT_TIMEOUT AGENT_MAX_ATTEMPTS AGENT_BACKOFF_BASE \
    AGENT_BACKOFF_MAX AGENT_MAX_RETRY_AFTER AGENT_MAX_RUN_SECONDS AGENT_HTTP_TIMEOUT \
    AGENT_MAX_OUTPUT_BYTES; do
    eval "is_uint \"\$$sd_key\"" || die "$sd_key must be a whole number"
  done
  for sd_value in "$AGENT_SPOOL_MAX" "$AGENT_MAX_ATTEMPTS" "$AGENT_SCRIPT_TIMEOUT"; do
    [ "$sd_value" -ge 1 ] ||
      die "AGENT_SPOOL_MAX, AGENT_MAX_ATTEMPTS and AGENT_SCRIPT_TIMEOUT must be at least 1"
  done
  # Kept out of the environment: the detection script never inherits the secret.
  hmac_secret=${AGENT_HMAC_SECRET:-}
  unset AGENT_HMAC_SECRET
}

check_secret() { # sets key_hex from hmac_secret: whsec_ + base64 of 24-64 bytes (the bridge's rule)
  case $hmac_secret in whsec_?*) ;; *) die "AGENT_HMAC_SECRET must start with whsec_" ;; esac
  key_hex=$(printf '%s' "${hmac_secret#whsec_}" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
  cs_bytes=$((${#key_hex} / 2))
  if [ "$cs_bytes" -lt 24 ] || [ "$cs_bytes" -gt 64 ]; then
    die "AGENT_HMAC_SECRET must hold 24 to 64 bytes of base64 after whsec_"
  fi
}

check_sending_config() {
  [ -n "${AGENT_BRIDGE_URL:-}" ] || die "AGENT_BRIDGE_URL is not set"
  case $AGENT_BRIDGE_URL in
    https://* | http://127.0.0.1[:/]* | http://localhost[:/]*) ;;
    *) die "AGENT_BRIDGE_URL must be https:// (plain http only to 127.0.0.1 or localhost)" ;;
  esac
  url=${AGENT_BRIDGE_URL%/}
  case $url in *"$INGEST_PATH") ;; *) url=$url$INGEST_PATH ;; esac
  [ -n "$hmac_secret" ] || [ -n "${AGENT_CLIENT_CERT:-}" ] ||
    die "set AGENT_HMAC_SECRET, AGENT_CLIENT_CERT (and AGENT_CLIENT_KEY), or both"
  [ -z "$hmac_secret" ] || check_secret
  if [ -n "${AGENT_CLIENT_CERT:-}" ]; then
    [ -r "$AGENT_CLIENT_CERT" ] || die "cannot read AGENT_CLIENT_CERT $AGENT_CLIENT_CERT"
    [ -z "${AGENT_CLIENT_KEY:-}" ] || [ -r "$AGENT_CLIENT_KEY" ] ||
      die "cannot read AGENT_CLIENT_KEY $AGENT_CLIENT_KEY"
  fi
  [ -z "${AGENT_CA_FILE:-}" ] || [ -r "$AGENT_CA_FILE" ] || die "cannot read AGENT_CA_FILE"
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

sign() { # WEBHOOK_ID TIMESTAMP BODY_FILE: prints v1,base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))
  # HMAC (RFC 2104) from two SHA-256 passes, so the key is never an argument of a command
  # (other users can read a process's arguments); key_hex holds at most 64 bytes, one block.
  sg_block=$key_hex
  while [ "${#sg_block}" -lt 128 ]; do sg_block="${sg_block}00"; done
  sg_inner=$({
    printf '%b' "$(octal_escapes "$sg_block" 54)"
    printf '%s.%s.' "$1" "$2"
    cat "$3"
  } | openssl dgst -sha256 -binary | od -An -v -tx1 | tr -d ' \n')
  {
    printf '%b' "$(octal_escapes "$sg_block" 92)"
    printf '%b' "$(octal_escapes "$sg_inner")"
  } | openssl dgst -sha256 -binary | openssl base64 -A | sed 's/^/v1,/'
}

# --- the report ----------------------------------------------------------------------------------

json_escape() { # FILE: its text as the inside of a JSON string, as Python's json.dumps writes it
  je_size=$(wc -c <"$1" | tr -d ' ')
  if [ "$je_size" -gt "$AGENT_MAX_OUTPUT_BYTES" ]; then
    log warning "${1##*/} is $je_size bytes; sending the first $AGENT_MAX_OUTPUT_BYTES"
  fi
  # NUL cannot travel in JSON text; iconv -c drops bytes that are not UTF-8 (the bridge refuses
  # a body that is not UTF-8), including a character cut in half by the size cap.
  tr -d '\000' <"$1" | head -c "$AGENT_MAX_OUTPUT_BYTES" >"$1.capped"
  if command -v iconv >/dev/null 2>&1; then
    iconv -f UTF-8 -t UTF-8 -c <"$1.capped" >"$1.clean" 2>/dev/null
  else
    cp "$1.capped" "$1.clean"
  fi
  je_trail=0
  [ -n "$(tail -c 1 "$1.clean" | tr -d '\n')" ] || je_trail=1
  LC_ALL=C awk -v trail="$je_trail" '
    BEGIN {
      for (i = 1; i < 32; i++) esc[sprintf("%c", i)] = sprintf("\\u%04x", i)
      ctrl = "[" sprintf("%c", 1) "-" sprintf("%c", 31) "]"
    }
    {
      if (NR > 1) printf "%s", "\\n"
      gsub(/[\\"]/, "\\\\&")
      gsub(/\t/, "\\t")
      gsub(/\r/, "\\r")
      gsub(/\010/, "\\b")
      gsub(/\014/, "\\f")
      line = $0
      while (match(line, ctrl)) {
        printf "%s%s", substr(line, 1, RSTART - 1), esc[substr(line, RSTART, 1)]
        line = substr(line, RSTART + 1)
      }
      printf "%s", line
    }
    END { if (NR > 0 && trail) printf "%s", "\\n" }' "$1.clean"
}

write_report() { # OUT_FILE: compact JSON, keys in the order of agents/test-vectors.json
  {
    printf '{"deviceId":"%s","scriptId":"%s","reportId":"%s",' "$AGENT_DEVICE_ID" \
      "$AGENT_SCRIPT_ID" "$report_id"
    printf '"execution":{"exitCode":%s,"stdout":"' "$exit_json"
    json_escape "$work/stdout"
    printf '","stderr":"'
    json_escape "$work/stderr"
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

# --- the spool -----------------------------------------------------------------------------------

acquire() { # LOCK_DIR SECONDS: mkdir is atomic; a lock whose process is gone is taken over
  aq_waited=0
  until mkdir "$1" 2>/dev/null; do
    aq_pid=$(cat "$1/pid" 2>/dev/null)
    if [ -n "$aq_pid" ] && ! kill -0 "$aq_pid" 2>/dev/null; then
      log warning "taking over ${1##*/} left by process $aq_pid, which has ended"
      rm -rf "$1"
      continue
    fi
    [ "$aq_waited" -lt "$2" ] || return 1
    aq_waited=$((aq_waited + 1))
    sleep 1
  done
  printf '%s\n' "$$" >"$1/pid"
}

oldest_spooled() { # prints the first spool file in name (= creation) order, if any
  for os_file in "$AGENT_SPOOL_DIR"/*.json; do
    [ -e "$os_file" ] && printf '%s' "$os_file" && return 0
  done
  return 1
}

spool_report() { # BODY_FILE: adds it under the next sequence number, then enforces AGENT_SPOOL_MAX
  acquire "$AGENT_SPOOL_DIR/.add.lock" 30 || die "could not lock $AGENT_SPOOL_DIR to add a report"
  add_locked=1
  sr_last=''
  sr_count=0
  for sr_file in "$AGENT_SPOOL_DIR"/*.json; do
    [ -e "$sr_file" ] || continue
    sr_last=$sr_file
    sr_count=$((sr_count + 1))
  done
  sr_seq=0
  if [ -n "$sr_last" ]; then
    sr_seq=${sr_last##*/}
    sr_seq=$(decimal "${sr_seq%%-*}")
  fi
  sr_name=$(printf '%010d-%s.json' $((sr_seq + 1)) "$report_id")
  # Copied then renamed inside the spool directory: a file with a final name is always whole.
  if ! { cp "$1" "$AGENT_SPOOL_DIR/.incoming" &&
    mv -f "$AGENT_SPOOL_DIR/.incoming" "$AGENT_SPOOL_DIR/$sr_name"; }; then
    die "could not write to $AGENT_SPOOL_DIR"
  fi
  sr_count=$((sr_count + 1))
  log info "report $report_id spooled ($sr_count waiting)"
  while [ "$sr_count" -gt "$AGENT_SPOOL_MAX" ]; do
    sr_drop=$(oldest_spooled) || break
    rm -f "$sr_drop"
    sr_count=$((sr_count - 1))
    sr_drop=${sr_drop##*/}
    sr_drop=${sr_drop#*-}
    log warning "spool full (AGENT_SPOOL_MAX=$AGENT_SPOOL_MAX): dropped the oldest report ${sr_drop%.json}"
  done
  rm -rf "$AGENT_SPOOL_DIR/.add.lock"
  add_locked=''
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
      if date --version >/dev/null 2>&1; then
        ra_at=$(LC_ALL=C date -u -d "$1" +%s 2>/dev/null) || return 1
      else
        ra_at=$(LC_ALL=C date -u -j -f '%a, %d %b %Y %H:%M:%S GMT' "$1" +%s 2>/dev/null) || return 1
      fi
      ra_ms=$(((ra_at - $(date +%s)) * 1000))
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

post() { # BODY_FILE REPORT_ID: one attempt; sets http_code, signed anew with a fresh timestamp
  po_ts=$(date +%s)
  # Two attempts in one second would be byte-identical, which the bridge refuses as a replay.
  [ "$po_ts" -gt "$last_ts" ] || po_ts=$((last_ts + 1))
  last_ts=$po_ts
  po_body=$1
  po_id=$2
  set -- -sS -o "$work/answer" -D "$work/headers" -w '%{http_code}' \
    --connect-timeout 10 --max-time "$AGENT_HTTP_TIMEOUT" -A "$PROG/$VERSION (posix)" \
    -H 'Content-Type: application/json' -H 'Expect:' --data-binary "@$po_body"
  if [ -n "$hmac_secret" ]; then
    set -- "$@" -H "webhook-id: $po_id" -H "webhook-timestamp: $po_ts" \
      -H "webhook-signature: $(sign "$po_id" "$po_ts" "$po_body")"
  fi
  [ -z "${AGENT_CLIENT_CERT:-}" ] || set -- "$@" --cert "$AGENT_CLIENT_CERT"
  [ -z "${AGENT_CLIENT_KEY:-}" ] || set -- "$@" --key "$AGENT_CLIENT_KEY"
  [ -z "${AGENT_CA_FILE:-}" ] || set -- "$@" --cacert "$AGENT_CA_FILE"
  : >"$work/answer"
  : >"$work/headers"
  http_code=$(curl "$@" "$url" 2>"$work/curl-error")
  [ -n "$http_code" ] || http_code=000
}

send_report() { # SPOOL_FILE: 0 accepted, 3 refused for good, 75 still failing (kept)
  sd_id=${1##*/}
  sd_id=${sd_id#*-}
  sd_id=${sd_id%.json}
  sd_attempt=0
  last_ts=0
  while :; do
    sd_attempt=$((sd_attempt + 1))
    post "$1" "$sd_id"
    sd_type=$(json_field type "$work/answer")
    case $http_code:$sd_type in
      2??:*)
        sd_outcome=$(json_field status "$work/answer")
        sd_reason=$(json_field reason "$work/answer")
        log info "report $sd_id: $http_code ${sd_outcome:-accepted}${sd_reason:+ ($sd_reason)}"
        return 0
        ;;
      408:* | 429:* | 000:* | 1??:* | 3??:* | 5??:*) ;;
      # This id was already seen with this timestamp (an earlier run's attempt in the same
      # second): not a refusal of the report; the next attempt carries a newer timestamp.
      401:*:signature-replayed) ;;
      *)
        log error "report $sd_id refused: $http_code $sd_type:" \
          "$(json_field detail "$work/answer") - dropped, a resend would be refused too"
        return 3
        ;;
    esac
    if [ "$http_code" = 000 ]; then
      sd_why="no answer ($(head -n 1 "$work/curl-error" | cut -c 1-200))"
    else
      sd_why="$http_code $sd_type"
    fi
    sd_retry=$(sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]:[[:space:]]*//p' \
      "$work/headers" | tr -d '\r' | tail -n 1)
    if [ "$sd_attempt" -ge "$AGENT_MAX_ATTEMPTS" ]; then
      log warning "report $sd_id: attempt $sd_attempt: $sd_why; giving up for this run, kept in the spool"
      return 75
    fi
    if sd_wait=$(retry_after_ms "$sd_retry"); then
      if [ "$sd_wait" -gt "$((AGENT_MAX_RETRY_AFTER * 1000))" ]; then
        log warning "report $sd_id: $sd_why; Retry-After $sd_retry is beyond AGENT_MAX_RETRY_AFTER, kept in the spool"
        return 75
      fi
    else
      sd_wait=$(backoff_ms "$sd_attempt")
    fi
    if [ $(($(date +%s) + sd_wait / 1000)) -gt "$deadline" ]; then
      log warning "report $sd_id: $sd_why; AGENT_MAX_RUN_SECONDS reached, kept in the spool"
      return 75
    fi
    log warning "report $sd_id: attempt $sd_attempt: $sd_why; retrying in $sd_wait ms"
    sleep_ms "$sd_wait"
  done
}

flush() { # sends the spool oldest first; stops at the first report that still fails
  if ! acquire "$AGENT_SPOOL_DIR/.send.lock" 0; then
    log info "another run (process $(cat "$AGENT_SPOOL_DIR/.send.lock/pid" 2>/dev/null)) is sending the spool"
    return 0
  fi
  send_locked=1
  deadline=$(($(date +%s) + AGENT_MAX_RUN_SECONDS))
  fl_status=0
  # Looked up afresh each time: a report spooled meanwhile by another run is sent too.
  while fl_file=$(oldest_spooled); do
    send_report "$fl_file"
    case $? in
      0) ;;
      3) fl_status=3 ;;
      *)
        fl_left=0
        for fl_each in "$AGENT_SPOOL_DIR"/*.json; do
          [ -e "$fl_each" ] && fl_left=$((fl_left + 1))
        done
        log warning "$fl_left report(s) remain in $AGENT_SPOOL_DIR for the next run"
        return 75
        ;;
    esac
    rm -f "$fl_file"
    if [ -e "$fl_file" ]; then
      log error "cannot delete $fl_file; stopping so it is not sent again and again"
      return 1
    fi
  done
  return "$fl_status"
}

# --- commands ------------------------------------------------------------------------------------

cleanup() {
  if [ -n "${script_pid:-}" ]; then
    process_tree "$script_pid" >"$work/tree"
    signal_tree TERM "$work/tree"
  fi
  [ -z "${add_locked:-}" ] || rm -rf "$AGENT_SPOOL_DIR/.add.lock"
  [ -z "${send_locked:-}" ] || rm -rf "$AGENT_SPOOL_DIR/.send.lock"
  [ -z "${work:-}" ] || rm -rf "$work"
}

prepare() { # what every sending command needs: settings, spool and scratch space
  check_sending_config
  mkdir -p "$AGENT_SPOOL_DIR" || die "cannot create AGENT_SPOOL_DIR $AGENT_SPOOL_DIR"
  work=$(mktemp -d "${TMPDIR:-/tmp}/$PROG.XXXXXX") || die "cannot create a temporary directory"
}

prepare_report() { # checks the ids shared by run and submit
  is_guid "${AGENT_DEVICE_ID:-}" || die "AGENT_DEVICE_ID must be the Intune device id (a GUID)"
  is_guid "${AGENT_SCRIPT_ID:-}" || die "the script id (-s or AGENT_SCRIPT_ID) must be a GUID"
  report_id="$(date -u +%Y%m%dT%H%M%SZ)-$(random_hex 8)"
}

cmd_run() {
  OPTIND=1
  while getopts s:t: cr_opt; do
    case $cr_opt in
      s) AGENT_SCRIPT_ID=$OPTARG ;;
      t) AGENT_SCRIPT_TIMEOUT=$OPTARG ;;
      *) usage >&2 && exit 2 ;;
    esac
  done
  shift $((OPTIND - 1))
  [ "$#" -gt 0 ] || die "run: name the detection script to run"
  if ! is_uint "$AGENT_SCRIPT_TIMEOUT" || [ "$AGENT_SCRIPT_TIMEOUT" -lt 1 ]; then
    die "-t takes whole seconds, at least 1"
  fi
  command -v "$1" >/dev/null 2>&1 || die "run: cannot find or execute $1"
  prepare_report
  prepare
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
      *) usage >&2 && exit 2 ;;
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
  prepare_report
  if [ -n "$cs_id" ]; then
    is_report_id "$cs_id" || die "-r takes 1-64 characters of A-Z a-z 0-9 . _ -"
    report_id=$cs_id
  fi
  prepare
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

main() {
  add_locked='' send_locked='' work='' script_pid=''
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mn_config=${AGENT_CONFIG:-}
  OPTIND=1
  while getopts c:h mn_opt; do
    case $mn_opt in
      c) mn_config=$OPTARG ;;
      h) usage && exit 0 ;;
      *) usage >&2 && exit 2 ;;
    esac
  done
  shift $((OPTIND - 1))
  [ "$#" -gt 0 ] || { usage >&2 && exit 2; }
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
    sign) cmd_sign "$@" ;;
    help) usage ;;
    *) usage >&2 && exit 2 ;;
  esac
}

main "$@"
