# shellcheck shell=bash
# Shared helpers for scripts/dev.sh, scripts/test.sh and .ci/run. Source it from
# the repository root; it defines functions only and changes nothing by itself.

VENV_DIR=".venv"

# Run each argument, a command line of this shell's functions and commands, in a
# subshell of its own in the background (with `set -e`: its first failing command
# ends it), wait for all of them, then print each one's output in turn with its
# time; fail, naming them, if any failed.
in_parallel() {
    local dir i failed=""
    local -a commands=("$@") pids=() started=()
    dir="$(mktemp -d)"
    for i in "${!commands[@]}"; do
        started[i]=$SECONDS
        (
            set -e
            eval "${commands[i]}"
            echo "(done in $((SECONDS - started[i])) s)"
        ) >"$dir/$i.log" 2>&1 &
        pids[i]=$!
    done
    for i in "${!commands[@]}"; do
        wait "${pids[i]}" || failed+=$'\n  '"${commands[i]}"
    done
    for i in "${!commands[@]}"; do
        printf -- '--- %s\n' "${commands[i]}"
        cat "$dir/$i.log"
    done
    rm -rf "$dir"
    [ -z "$failed" ] || die "failed:$failed"
}

# Each step says when it starts, in seconds since the script began, so that a
# CI log shows where the time went.
step() {
    printf '\n==> [%4d s] %s\n' "$SECONDS" "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# The Python versions bso supports, oldest first (pyproject.toml says >=3.11).
SUPPORTED_PYTHONS="3.11 3.12 3.13"

# True when interpreter $1 is CPython of a supported version.
is_supported_python() {
    "$1" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null
}

# Print the newest supported interpreter, or with $1 = oldest the oldest:
# $PYTHON if set, else python3.X on PATH or in pyenv's versions (a pyenv shim
# only runs the versions pyenv has activated), else python3.
find_python() {
    local candidate version order="-rV" pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    local -a candidates=()
    [ "${1:-newest}" = oldest ] && order="-V"
    if [ -n "${PYTHON:-}" ]; then
        candidates=("$PYTHON")
    else
        for version in $(printf '%s\n' $SUPPORTED_PYTHONS | sort "$order"); do
            candidates+=("python$version")
            for candidate in "$pyenv_root"/versions/"$version".*/bin/python"$version"; do
                [ -x "$candidate" ] && candidates+=("$candidate")
            done
        done
        candidates+=(python3)
    fi
    for candidate in "${candidates[@]}"; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if is_supported_python "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# Hash of what decides the install of venv $1: pyproject.toml, client/pyproject.toml
# (the bso-client distribution) and its Python version.
install_fingerprint() {
    "$1/bin/python" - <<'PY'
import hashlib, sys
digest = hashlib.sha256()
for name in ("pyproject.toml", "client/pyproject.toml"):
    with open(name, "rb") as f:
        digest.update(f.read())
digest.update(sys.version.encode())
print(digest.hexdigest())
PY
}

# The major.minor version of interpreter $1.
python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

# Make venv $1 (default .venv) on the newest supported Python (or, with $2 =
# oldest, the oldest) and install bso into it, unless it already has that Python,
# both pyproject.toml files are unchanged since its last install, and that install
# covers $3:
#   serve (default)  `pip install -e .`: what `bso serve` needs, for scripts/dev.sh
#   dev              `pip install -e '.[dev]' -e ./client`: the test and lint tools too
# A dev install covers serve, so dev.sh reuses a venv that test.sh made.
ensure_venv() {
    local dir="${1:-$VENV_DIR}" which="${2:-newest}" extras="${3:-serve}" python want stamp have
    stamp="$dir/.bso-install-stamp"
    python="$(find_python "$which")" \
        || die "No Python 3.11, 3.12 or 3.13 found. Install one, or point PYTHON at its binary."
    if [ -x "$dir/bin/python" ] \
        && [ "$(python_version "$dir/bin/python")" != "$(python_version "$python")" ]; then
        echo "$dir has Python $(python_version "$dir/bin/python"), not $(python_version "$python"); recreating it."
        rm -rf "$dir"
    fi
    if [ ! -x "$dir/bin/python" ]; then
        echo "Creating $dir with $python"
        "$python" -m venv "$dir"
    fi
    want="$(install_fingerprint "$dir")"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [ -x "$dir/bin/bso" ] && { [ "$have" = "$want dev" ] || [ "$have" = "$want $extras" ]; }; then
        echo "$dir (Python $(python_version "$dir/bin/python")) is up to date with pyproject.toml and client/pyproject.toml"
        return 0
    fi
    rm -f "$stamp"
    if [ "$extras" = dev ]; then
        echo "Installing bso, its dev dependencies and bso-client into $dir (Python $(python_version "$dir/bin/python"); the first run takes a minute)"
        # --no-compile: the tools' and test libraries' bytecode is written as they
        # are imported, not all of it up front (the suite imports a fraction).
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
            -e '.[dev]' -e ./client
    else
        echo "Installing bso into $dir (Python $(python_version "$dir/bin/python"))"
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e .
    fi
    printf '%s %s\n' "$want" "$extras" >"$stamp"
}

# The real Zeus 0.16 server of tests/zeus_import/ lives in its own venv: it needs
# pydantic v1, a FastAPI < 0.100 and numpy < 2, none of which bso can share.
ZEUS_VENV_DIR=".venv-zeus"
ZEUS_REQUIREMENTS="tests/zeus_server/requirements.txt"

# Make $ZEUS_VENV_DIR on Python 3.11 (the newest Python its pinned numpy 1.26
# and pandas have wheels for here) with $ZEUS_REQUIREMENTS, unless it already
# has them: a fingerprint of the file and the Python version, as ensure_venv.
ensure_zeus_venv() {
    local dir="$ZEUS_VENV_DIR" stamp="$ZEUS_VENV_DIR/.zeus-install-stamp" python want started
    python="$(PYTHON="${ZEUS_PYTHON:-}" SUPPORTED_PYTHONS=3.11 find_python oldest)" \
        || die "The Zeus server of the import tests needs Python 3.11: install it, or point ZEUS_PYTHON at one."
    [ "$(python_version "$python")" = 3.11 ] || die "$python is not Python 3.11"
    if [ ! -x "$dir/bin/python" ] || [ "$(python_version "$dir/bin/python")" != 3.11 ]; then
        rm -rf "$dir"
        "$python" -m venv "$dir"
    fi
    want="$("$dir/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read() + sys.version.encode()).hexdigest())' "$ZEUS_REQUIREMENTS")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "$dir (the Zeus 0.16 server) is up to date with $ZEUS_REQUIREMENTS"
        return 0
    fi
    echo "Installing the Zeus 0.16 server into $dir ($ZEUS_REQUIREMENTS)"
    rm -f "$stamp"
    started=$SECONDS
    # Every package is pinned (a whole freeze), so no resolving; bytecode as imported.
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
        -r "$ZEUS_REQUIREMENTS"
    echo "$dir installed in $((SECONDS - started)) s"
    printf '%s\n' "$want" >"$stamp"
}

# Make sure MariaDB answers at 127.0.0.1:3306 (the Zeus import tests' MySQL
# source): start the local server as this kind of machine does when it does not.
ensure_mariadb() {
    if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3306' 2>/dev/null; then
        echo "MariaDB is accepting connections at 127.0.0.1:3306"
        return 0
    fi
    [ -x /usr/sbin/mariadbd ] || die "MariaDB is not reachable at 127.0.0.1:3306 and not installed here"
    echo "MariaDB is not running at 127.0.0.1:3306; starting it"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 30); do
        if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3306' 2>/dev/null; then
            echo "MariaDB is accepting connections at 127.0.0.1:3306"
            return 0
        fi
        sleep 1
    done
    die "MariaDB did not come up at 127.0.0.1:3306 within 30 s"
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

# What examples/ trains with (tests/examples, pytest marker "examples"), installed
# into venv $1 only: torch 2.13.0, whose CPU build this machine keeps on disk for
# Python 3.11 (any other version or Python downloads gigabytes), Lightning,
# transformers with accelerate (its Trainer needs it), scikit-learn (the digits
# data) and bso-client's integrations. torch is pinned again in the second install
# so that no dependency can replace it.
TRAINING_PACKAGES="torch==2.13.0 lightning transformers accelerate scikit-learn"

ensure_training_packages() {
    local dir="$1" stamp="$1/.bso-training-stamp"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$TRAINING_PACKAGES" ]; then
        echo "$dir has the examples' training packages ($TRAINING_PACKAGES)"
        return 0
    fi
    echo "Installing the examples' training packages into $dir ($TRAINING_PACKAGES)"
    rm -f "$stamp"
    # --no-compile: bytecode as imported. Compiling all of torch, transformers and
    # Lightning up front cost 66 s of CPU against 25 s without (measured here).
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0
    # shellcheck disable=SC2086  # the list is words on purpose
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
        $TRAINING_PACKAGES -e './client[lightning,transformers]'
    printf '%s\n' "$TRAINING_PACKAGES" >"$stamp"
}

# tests/test_k8s.py renders deploy/k8s with `kubectl kustomize` and traces the
# containers' commands with strace: install strace with apt-get when missing
# (needs root, as ensure_chromium). kubectl (>= 1.27, kustomize built in) is not
# in Debian's archive at a usable version: without it those tests fail, saying so.
ensure_deploy_tools() {
    if ! command -v strace >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "strace is missing and this is not root: sudo apt-get install -y strace"
        echo "Installing strace with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
    fi
    echo "strace: $(command -v strace)"
    if command -v kubectl >/dev/null 2>&1; then
        echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"
    else
        echo "WARNING: kubectl is not installed: tests/test_k8s.py will fail (install kubectl >= 1.27)"
    fi
}
