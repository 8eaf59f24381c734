# Sourced by the proofs (deploy/swarm-proof.sh, deploy/cluster-proof.sh) after
# deploy/lib/engine.sh: the run of a proof as timed steps, the repository's
# venv, and one ending for success and failure alike (clean unless kept, step
# times, delivery figures). Expects REPO, PROOF_NAME, PROOF_TITLE,
# WHAT_STAYS (what PULSESTACK_PROOF_KEEP=1 leaves up) and a step_clean
# function; a proof_failed function, if defined, shows what failed.

TIMES=()
OVERALL=$SECONDS
step() {
    local name="$1"; shift
    local started=$SECONDS
    echo
    echo "=== step $name"
    "$@"
    local took=$((SECONDS - started))
    TIMES+=("$(printf '%-12s %4d s' "$name" "$took")")
    echo "=== step $name: ${took} s"
    if [ "${PULSESTACK_PROOF_UNTIL:-}" = "$name" ]; then
        echo "PULSESTACK_PROOF_UNTIL=$name: stopping here, everything stays up"
        PULSESTACK_PROOF_KEEP=1
        exit 0
    fi
}

PY="$REPO/.venv/bin/python"
ensure_venv() {
    [ -x "$PY" ] && "$PY" -c 'import simulator, pulsestack, yaml' 2>/dev/null && return 0
    log "creating the repository's venv (make)"
    make --no-print-directory .venv/bin/.installed >/dev/null
}

# The proof's command line: "clean" removes what a kept or interrupted run
# left and exits; "all" (the default) returns, and the run ends in proof_exit.
proof_start() {
    case "${1:-all}" in
        clean) CLEANED=1; step clean step_clean; exit 0 ;;
        all) ;;
        *) die "usage: $0 [all|clean]" ;;
    esac
    trap proof_exit EXIT
    echo "$PROOF_NAME $PROOF_TITLE (pulsestack $PULSESTACK_VERSION) — $(date -u +%FT%TZ)"
    rm -f "$PULSESTACK_PROOF_FIGURES"
}

# The last step of a run that got through: clean (unless kept), then say so.
proof_passed() {
    if [ "${PULSESTACK_PROOF_KEEP:-0}" != 1 ]; then
        CLEANED=1
        step clean step_clean
    fi
    echo
    echo "$PROOF_NAME: PASSED"
}

proof_exit() {
    local rc=$?
    trap - EXIT
    if [ "$rc" != 0 ]; then
        echo
        echo "$PROOF_NAME: FAILED (exit $rc)"
        if declare -F proof_failed >/dev/null; then proof_failed || true; fi
    fi
    if [ "${PULSESTACK_PROOF_KEEP:-0}" = 1 ]; then
        echo "PULSESTACK_PROOF_KEEP=1: $WHAT_STAYS stays up (clean later with: $0 clean)"
    elif [ "${CLEANED:-0}" != 1 ]; then
        step clean step_clean || true
    fi
    echo
    echo "=== step times"
    printf '  %s\n' "${TIMES[@]}"
    printf '  %-12s %4d s\n' total "$((SECONDS - OVERALL))"
    echo "=== delivery figures"
    [ -x "$PY" ] && "$PY" -m deploy.proof.swarm summary
    exit "$rc"
}
