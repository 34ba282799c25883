# Shared by the bench scripts (sourced, not run).

# wait_for_address PID OUT ERR: sets URL to the http://127.0.0.1:PORT that
# a `deskpulse serve --listen 127.0.0.1:0` started as PID printed on OUT.
# Exits the script with 1, showing ERR, if the server dies or prints no
# address within 30 s.
wait_for_address() {
    local pid=$1 out=$2 err=$3
    URL=""
    for _ in $(seq 1 300); do
        URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$out" 2>/dev/null | head -1 || true)
        [ -n "$URL" ] && return 0
        kill -0 "$pid" 2>/dev/null || { echo "deskpulse exited:"; cat "$err"; exit 1; }
        sleep 0.1
    done
    echo "deskpulse did not print its address"
    cat "$err"
    exit 1
}
