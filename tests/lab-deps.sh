#!/usr/bin/env bash
# Installs what the tests and the lab need, idempotently; `make lab-deps` runs it, and `make test`,
# `make demo`, `make measure` and `make bench` (with keepalived:keepalived) depend on that target.
#
#   tests/lab-deps.sh [--lab] [COMMAND:PACKAGE...]
#
# 1. Debian packages: the lab's tools (iproute2, nftables, nginx-light) and Python's venv module,
#    plus any COMMAND:PACKAGE pairs given (e.g. keepalived:keepalived for a benchmark). What is
#    missing is installed with apt-get when running as root; without root it is listed with the
#    command that installs it. The lab tests need root anyway and skip without it, so a missing
#    lab tool is only fatal with --lab (for targets that run the lab: root is required, and
#    checked before anything is installed).
# 2. The lab's Python: one virtual environment, .venv/ at the top of the checkout (ignored by git),
#    with exactly tests/requirements-lab.txt (hash-checked). Never the system's Python. A stamp
#    file holds the requirements file's hash, so a second run takes milliseconds.
#
# The tests find moto in .venv (tests/support/mod.rs, moto_python); ENIPEER_MOTO_PYTHON overrides.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv"
requirements="$repo/tests/requirements-lab.txt"
stamp="$venv/.lab-deps.stamp"
python="${PYTHON:-python3}"

lab=false
extra=()
for arg in "$@"; do
  case "$arg" in
    --lab) lab=true ;;
    *:*) extra+=("$arg") ;;
    *) echo "lab-deps: unknown argument: $arg (expected --lab or COMMAND:PACKAGE)" >&2; exit 2 ;;
  esac
done

say() { printf 'lab-deps: %s\n' "$*"; }
die() { printf 'lab-deps: %s\n' "$*" >&2; exit 1; }

root=false
[[ "$(id -u)" -eq 0 ]] && root=true
if $lab && ! $root; then
  die "this target runs the lab, which needs root (network namespaces): run it with sudo"
fi

# --- Debian packages -----------------------------------------------------------------------
# The lab's tools live in sbin, which a non-root PATH often lacks.
has() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }
# Creating a venv needs the venv module and ensurepip; Debian splits both into python3-venv.
venv_works() { "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; }

lab_missing=()
has ip || lab_missing+=(iproute2)
has nft || lab_missing+=(nftables)
# The lab serves a page from each instance with nginx.
has nginx || lab_missing+=(nginx-light)
for pair in "${extra[@]}"; do
  has "${pair%%:*}" || lab_missing+=("${pair#*:}")
done
moto_version="$(tr -d '[:space:]' < "$repo/tests/moto-version.txt")"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
up_to_date() { [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c '' 2>/dev/null; }
python_missing=()
# Python itself is needed only to (re)build .venv; checking it costs a noticeable fraction of a
# second behind pyenv's shims.
if ! up_to_date; then
  has "$python" || python_missing+=(python3)
  venv_works || python_missing+=(python3-venv)
fi
missing=("${python_missing[@]}" "${lab_missing[@]}")

if ((${#missing[@]})); then
  if $root && has apt-get; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    how="apt-get install ${missing[*]}"
    $root || how="sudo $how"
    if ((${#python_missing[@]})) || $lab || $root; then
      die "missing: ${missing[*]}; install with: $how"
    fi
    say "missing: ${missing[*]} (the lab tests need them, and root; they skip without root)"
    say "install with: $how"
  fi
fi

# --- the lab's Python ------------------------------------------------------------------------
grep -qxF "moto==$moto_version \\" "$requirements" ||
  die "tests/requirements-lab.txt does not pin moto==$moto_version (tests/moto-version.txt); regenerate it (see tests/requirements-lab.in)"

if up_to_date; then
  say ".venv is up to date (moto $moto_version)"
  exit 0
fi
venv_works || die "$python cannot create virtual environments (import venv, ensurepip failed)"

# A venv whose interpreter no longer runs (its base Python was removed or moved), or that has no
# pip (created before python3-venv was installed), is rebuilt.
if [[ -e "$venv" ]] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  # Not another user's: a .venv that root built on an interpreter under /root does not run for
  # others, and is not theirs to remove.
  [[ -O "$venv" ]] || die ".venv belongs to $(stat -c %U "$venv") and does not run for $(id -un): run as $(stat -c %U "$venv"), or remove .venv"
  say "removing a broken .venv"
  rm -rf "$venv"
fi
if [[ ! -e "$venv/bin/python" ]]; then
  say "creating .venv with $("$python" --version 2>&1) ($(command -v "$python"))"
  "$python" -m venv "$venv"
fi
rm -f "$stamp"
say "installing tests/requirements-lab.txt into .venv (a minute the first time)"
# PYTHONNOUSERSITE: never read packages from the user's site directory either.
PYTHONNOUSERSITE=1 PIP_REQUIRE_VIRTUALENV=1 "$venv/bin/python" -m pip install \
  --quiet --no-input --disable-pip-version-check --require-hashes -r "$requirements"
got="$("$venv/bin/python" -c 'import moto; print(moto.__version__)')"
[[ "$got" == "$moto_version" ]] || die ".venv has moto $got after installing; expected $moto_version"
echo "$want" > "$stamp"
say ".venv ready: moto $got, $("$venv/bin/aws" --version 2>&1)"
