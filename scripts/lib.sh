# shellcheck shell=bash
# Shared helpers for scripts/dev.sh, scripts/test.sh and .ci/run. Source it from
# the repository root; it defines functions only and changes nothing by itself.

VENV_DIR=".venv"
VENV_STAMP="$VENV_DIR/.bso-install-stamp"

step() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Print the first interpreter that is CPython 3.11: $PYTHON, python3.11, python3.
find_python311() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# Hash of what decides the install: pyproject.toml plus the venv's Python version.
install_fingerprint() {
    "$VENV_DIR/bin/python" - <<'PY'
import hashlib, sys
with open("pyproject.toml", "rb") as f:
    digest = hashlib.sha256(f.read())
digest.update(sys.version.encode())
print(digest.hexdigest())
PY
}

# Create .venv (Python 3.11) if needed and `pip install -e '.[dev]'` into it,
# unless pyproject.toml is unchanged since the last successful install.
ensure_venv() {
    local python want
    if [ -x "$VENV_DIR/bin/python" ] \
        && ! "$VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        echo "$VENV_DIR is not a Python 3.11 environment; recreating it."
        rm -rf "$VENV_DIR"
    fi
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        python="$(find_python311)" \
            || die "Python 3.11 not found. Install it, or point PYTHON at a python3.11 binary."
        echo "Creating $VENV_DIR with $python"
        "$python" -m venv "$VENV_DIR"
    fi
    want="$(install_fingerprint)"
    if [ -f "$VENV_STAMP" ] && [ "$(cat "$VENV_STAMP")" = "$want" ] && [ -x "$VENV_DIR/bin/bso" ]; then
        echo "$VENV_DIR is up to date with pyproject.toml"
        return 0
    fi
    echo "Installing bso and its dev dependencies into $VENV_DIR (the first run takes a minute)"
    rm -f "$VENV_STAMP"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    printf '%s\n' "$want" >"$VENV_STAMP"
}

# True when a PostgreSQL server accepts connections at host $1, port $2.
postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 3
    else
        # No client tools: a TCP connect is the best we can do.
        timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
    fi
}

# Make sure PostgreSQL answers at host $1 (default 127.0.0.1), port $2 (5432):
# start the local Debian cluster(s) with pg_ctlcluster when it does not.
ensure_postgres() {
    local host="${1:-127.0.0.1}" port="${2:-5432}" conf version _
    if postgres_ready "$host" "$port"; then
        echo "PostgreSQL is accepting connections at $host:$port"
        return 0
    fi
    case "$host" in
        127.0.0.1 | localhost | ::1) ;;
        *) die "PostgreSQL at $host:$port is not reachable (and is not local, so not started here)" ;;
    esac
    command -v pg_ctlcluster >/dev/null 2>&1 \
        || die "PostgreSQL is not reachable at $host:$port and pg_ctlcluster is not available to start it.
Start a server there, or set BSO_TEST_POSTGRES_URL to an admin URL of a running one."
    echo "PostgreSQL is not running at $host:$port; starting it with pg_ctlcluster"
    for conf in /etc/postgresql/*/main; do
        [ -d "$conf" ] || continue
        version="$(basename "$(dirname "$conf")")"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do
        if postgres_ready "$host" "$port"; then
            echo "PostgreSQL is accepting connections at $host:$port"
            return 0
        fi
        sleep 1
    done
    die "PostgreSQL did not come up at $host:$port within 30 s"
}

# Make sure Debian's chromium and chromium-driver are installed (the browser tests
# drive them): install them with apt-get when missing. Idempotent; needs root
# (CI runs as root) and the Debian package mirror.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        echo "chromium and chromedriver are installed"
        return 0
    fi
    [ "$(id -u)" = 0 ] \
        || die "chromium or chromedriver is missing and this is not root: run
  sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
    echo "Installing chromium and chromium-driver with apt-get"
    apt-get update -qq
    # With its recommended fonts (fonts-liberation), so that pages render text.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
        || die "chromium and chromedriver are still missing after apt-get install"
}
