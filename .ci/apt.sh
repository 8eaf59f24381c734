# Sourced by .ci/tools-*.sh: apt_install TOOL PACKAGE... installs Debian packages as root, or says what is
# missing and returns 1 when not root (the tests that need them then skip, or fail with PULSESTACK_REQUIRE_ALL=1).
apt_install() {
    local tool="$1"
    shift
    if [ "$(id -u)" != 0 ]; then
        echo "$tool: $* missing and not root; cannot install; the tests that need them skip" >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
