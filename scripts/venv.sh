# Sourced by demo.sh and test.sh: a virtual environment for the project, made with the
# distribution's own python3 (Debian 12 and Ubuntu 24.04 refuse a bare `pip install`,
# PEP 668, so everything goes into a venv; a fresh image may lack the venv module).

# ensure_venv DIR: create DIR as a venv unless a working one is there; 1 when python3 cannot.
ensure_venv() {
    local dir=$1
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "dropbox-runner: python3 is not installed; on Debian/Ubuntu: apt-get install python3 python3-venv" >&2
        return 1
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
        echo "dropbox-runner: needs Python 3.9 or newer; python3 is $(python3 -V 2>&1)" >&2
        return 1
    fi
    rm -rf "$dir"
    if ! python3 -m venv "$dir" >/dev/null 2>&1; then
        rm -rf "$dir"    # a half-made venv (no pip) would be taken for a working one next time
        local version
        version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        echo "dropbox-runner: python3 cannot create a virtual environment (no venv/ensurepip module);" \
             "on Debian/Ubuntu: apt-get install python3-venv (or python$version-venv)" >&2
        return 1
    fi
}
