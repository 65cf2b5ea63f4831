# Shared by scripts/*: create the repo's .venv and install aura-node into it when missing or
# when pyproject.toml changed since the last install. Usage: ensure_venv [dev]
ensure_venv() {
    local extras="${1:-}"
    local py="${AURA_PYTHON:-}"
    if [ -z "$py" ]; then
        for cand in python3.11 python3; do
            if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
        done
    fi
    if [ -z "$py" ]; then echo "need python3 (3.11+) on PATH" >&2; return 1; fi
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv with $py"
        "$py" -m venv .venv
    fi
    local want="pyproject=$(sha256sum pyproject.toml | cut -c1-16) extras=$extras"
    local have=""
    [ -f .venv/.aura-installed ] && have="$(cat .venv/.aura-installed)"
    # An install with the dev extras also serves a plain install of the same pyproject.
    if [ -z "$extras" ] && [ "${have%% *}" = "${want%% *}" ]; then want="$have"; fi
    if [ "$have" != "$want" ] \
        || ! .venv/bin/python -c 'import aura_node' >/dev/null 2>&1; then
        echo "== installing aura-node into .venv"
        .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
        if [ -n "$extras" ]; then
            .venv/bin/python -m pip install --quiet -e ".[$extras]"
        else
            .venv/bin/python -m pip install --quiet -e .
        fi
        echo "$want" > .venv/.aura-installed
    fi
}
