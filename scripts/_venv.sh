# Shared by scripts/*: create the repo's .venv and install aura-node into it when missing or
# when pyproject.toml changed since the last install. Usage: ensure_venv [dev]
#
# The install is editable in setuptools' "compat" mode: a plain .pth path entry instead of the
# default import-hook finder, which static checkers cannot follow. With it, `mypy --strict` on a
# plugin outside the repo finds `aura_node` (and its py.typed) like any installed package.
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
    # "editable=compat" in the stamp makes a .venv installed the old way reinstall once
    local want="pyproject=$(sha256sum pyproject.toml | cut -c1-16) editable=compat extras=$extras"
    local have=""
    [ -f .venv/.aura-installed ] && have="$(cat .venv/.aura-installed)"
    # An install with the dev extras also serves a plain install of the same pyproject.
    if [ -z "$extras" ] && [ "${have% extras=*}" = "${want% extras=*}" ]; then want="$have"; fi
    if [ "$have" != "$want" ] \
        || ! .venv/bin/python -c 'import aura_node' >/dev/null 2>&1; then
        echo "== installing aura-node into .venv"
        .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
        if [ -n "$extras" ]; then
            .venv/bin/python -m pip install --quiet --config-settings editable_mode=compat \
                -e ".[$extras]"
        else
            .venv/bin/python -m pip install --quiet --config-settings editable_mode=compat -e .
        fi
        echo "$want" > .venv/.aura-installed
    fi
}
