#!/usr/bin/env bash
# Sourced by the quick-start commands: makes (or reuses) a virtual environment with
# xnortrain and its dev extra installed, activates it, and makes sure the real
# Fashion-MNIST is on the machine (Debian package dataset-fashion-mnist, installed with
# apt-get as root or through sudo; it says so before it runs, and what to do without root).
#
# The venv lives outside the checkout, keyed on pyproject.toml, so a second run (or CI on
# the same machine) reuses it; XNORTRAIN_VENV overrides the location.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
venv="${XNORTRAIN_VENV:-$HOME/.cache/xnortrain/venv-$key}"

if [ ! -f "$venv/.complete" ]; then
    echo "setting up $venv (first run: torch and torchvision take a few minutes)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -e "$repo[dev]"
    touch "$venv/.complete"
else
    # point the cached venv's editable install at this checkout
    "$venv/bin/pip" install -q --no-deps -e "$repo"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="$(command -v sudo || true)"
    if [ "$(id -u)" -ne 0 ] && [ -z "$sudo_cmd" ]; then
        echo "the real Fashion-MNIST is missing and installing it needs root: ask for" \
             "'apt-get install dataset-fashion-mnist', or train with --set data.download=true" \
             "(needs internet; the files go under data.root)" >&2
    else
        echo "installing the real Fashion-MNIST: ${sudo_cmd:+sudo }apt-get install dataset-fashion-mnist" \
             "(Debian's package, about 30 MB; sudo may ask for your password. Without root," \
             "interrupt and train with --set data.download=true instead)" >&2
        $sudo_cmd apt-get update -qq >/dev/null
        $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fi
fi
