#!/usr/bin/env bash
# React to a broadcast's JSON events (docs/json-events.md): alert when a destination is retrying or failed,
# and exit with the broadcast's own exit code when it ends.
#
#   set -o pipefail
#   restream go show.mp4 --json | ./on-events.sh
#   ALERT_CMD='logger -t restream' restream go show.mp4 --json | ./on-events.sh
#
# ALERT_CMD (optional) is run with the alert text as its last argument (logger, notify-send, a webhook
# script, ...). Uses jq when it is installed, python3 otherwise.
set -u

alert() {
    printf '%s ALERT %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" >&2
    if [ -n "${ALERT_CMD:-}" ]; then
        # shellcheck disable=SC2086  # ALERT_CMD is a command line on purpose
        $ALERT_CMD "$1" || true
    fi
}

# One tab-separated record per interesting event: start/state/end and their fields.
if command -v jq >/dev/null 2>&1; then
    records() {
        jq -R -r --unbuffered 'fromjson? |
            if .event == "start" then ["start", .profile, ([.destinations[].name] | join(","))]
            elif .event == "state" then ["state", .destination, .state, (.error // "")]
            elif .event == "end" then ["end", (.exit_code // 5 | tostring), (.reason // "")]
            else empty end | @tsv'
    }
else
    records() {
        python3 -u -c '
import json, sys
def clean(v):
    return " ".join(str("" if v is None else v).split())
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    kind = e.get("event")
    if kind == "start":
        row = ["start", e.get("profile"), ",".join(d["name"] for d in e.get("destinations", []))]
    elif kind == "state":
        row = ["state", e.get("destination"), e.get("state"), e.get("error")]
    elif kind == "end":
        code = e.get("exit_code")
        row = ["end", 5 if code is None else code, e.get("reason")]
    else:
        continue
    print("\t".join(clean(v) for v in row), flush=True)
'
    }
fi

code=""
while IFS=$'\t' read -r kind a b c; do
    case "$kind" in
        start) echo "broadcast started: profile $a -> $b" ;;
        state)
            case "$b" in
                retrying | failed) alert "$a is $b${c:+: $c}" ;;
                live) echo "$a is live" ;;
                *) ;;
            esac
            ;;
        end)
            code="$a"
            echo "broadcast ended: ${b:-?} (exit $a)"
            ;;
    esac
done < <(records)

if [ -z "$code" ]; then
    alert "no end event: restream was killed or its output was cut"
    exit 5
fi
exit "$code"
