#!/usr/bin/env bash
# Package test (`make package-test`, run by .ci/run): builds the .deb and the .rpm, compares their
# contents with packaging/expected-{deb,rpm}.txt, checks their metadata, then installs the .deb
# on this machine and exercises it: the binary, the man pages, the conffile, `enipeer check` on
# the shipped example, the systemd unit, reinstall, remove and purge. The install part needs
# root and is skipped without it. Ends with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# Stable sort order for the file lists compared below.
export LC_ALL=C

passed=0
failed=0
summarized=0
work=$(mktemp -d)
# Present while this script has the package installed, so a run that was killed before its
# cleanup can be told apart from an enipeer the admin installed.
marker=/var/lib/enipeer-package-test.installed

pass() {
  passed=$((passed + 1))
  printf 'ok    %s\n' "$1"
}
fail() {
  failed=$((failed + 1))
  printf 'FAIL  %s\n' "$1"
  if [[ -n "${2:-}" ]]; then
    printf '%s\n' "$2" | sed 's/^/      /'
  fi
}
skip() { printf 'skip  %s\n' "$1"; }
# check NAME COMMAND...: passes when COMMAND succeeds; shows its output when it does not.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
# same NAME EXPECTED ACTUAL
same() {
  if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1" "expected: $2"$'\n'"got:      $3"; fi
}
contains() {
  if grep -qF -- "$2" <<<"$3"; then pass "$1"; else fail "$1" "no \"$2\" in:"$'\n'"$3"; fi
}

installed() { dpkg-query -W -f='${Status}\n' enipeer 2>/dev/null | grep -q ' installed$'; }

cleanup() {
  local rc=$?
  if ((!summarized)); then
    # Stopped by `set -e` or a signal: still end with the summary line the CI reads.
    fail "the test script ran to the end" "stopped early with exit status $rc"
    finish || true
    ((rc != 0)) || rc=1
  fi
  if [[ -e "$marker" ]]; then
    dpkg -P enipeer >/dev/null 2>&1 || true
    rm -f "$marker"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

finish() {
  summarized=1
  printf '\n%d passed, %d failed\n' "$passed" "$failed"
  ((failed == 0))
}

version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)

# --- build -------------------------------------------------------------------------------------
for tool in dpkg-deb rpm; do
  if ! command -v "$tool" >/dev/null; then
    fail "tool $tool is installed" "install it (.ci/run does)"
    finish
    exit 1
  fi
done
if ! make --no-print-directory packages >"$work/build.log" 2>&1; then
  fail "make packages" "$(tail -n 30 "$work/build.log")"
  finish
  exit 1
fi
pass "make packages"

shopt -s nullglob
debs=(target/packages/enipeer_*.deb)
rpms=(target/packages/enipeer-*.rpm)
shopt -u nullglob
if ((${#debs[@]} != 1 || ${#rpms[@]} != 1)); then
  fail "exactly one .deb and one .rpm in target/packages" "$(ls -l target/packages)"
  finish
  exit 1
fi
deb=${debs[0]}
rpm_file=${rpms[0]}
same "deb file name carries the version" "target/packages/enipeer_${version}-1_amd64.deb" "$deb"
same "rpm file name carries the version" "target/packages/enipeer-${version}-1.x86_64.rpm" "$rpm_file"

# --- contents: every file, its mode and owner, nothing missing and nothing extra ---------------
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' | sort -k3 >"$work/deb.txt" || true
if diff -u packaging/expected-deb.txt "$work/deb.txt" >"$work/deb.diff"; then
  pass "deb contents match packaging/expected-deb.txt"
else
  fail "deb contents match packaging/expected-deb.txt" "$(cat "$work/deb.diff")"
fi

# fflags: c = config, n = noreplace, d = doc; "-" for none.
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' \
  "$rpm_file" 2>/dev/null | awk 'NF == 3 { $4 = $3; $3 = "-" } { print }' | sort -k4 >"$work/rpm.txt" || true
if diff -u packaging/expected-rpm.txt "$work/rpm.txt" >"$work/rpm.diff"; then
  pass "rpm contents match packaging/expected-rpm.txt"
else
  fail "rpm contents match packaging/expected-rpm.txt" "$(cat "$work/rpm.diff")"
fi

# --- metadata ----------------------------------------------------------------------------------
info=$(rpm -qip "$rpm_file" 2>/dev/null || true)
field() { awk -F': ' -v k="$1" '$1 ~ "^"k" *$" { print $2; exit }' <<<"$info"; }
same "rpm Name" "enipeer" "$(field Name)"
same "rpm Version" "$version" "$(field Version)"
same "rpm License" "Apache-2.0" "$(field License)"
same "rpm Architecture" "x86_64" "$(field Architecture)"
requires=$(rpm -qpR "$rpm_file" 2>/dev/null || true)
contains "rpm requires /bin/sh (scriptlets)" "/bin/sh" "$requires"
contains "rpm requires glibc" "libc.so.6(GLIBC_" "$requires"
scripts=$(rpm -qp --scripts "$rpm_file" 2>/dev/null || true)
for s in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet"; do
  contains "rpm has a $s" "$s" "$scripts"
done
contains "rpm post-install message names keygen" "enipeer keygen /etc/enipeer/peer.key" "$scripts"

same "deb Package" "enipeer" "$(dpkg-deb -f "$deb" Package)"
same "deb Version" "${version}-1" "$(dpkg-deb -f "$deb" Version)"
contains "deb depends on libc6" "libc6" "$(dpkg-deb -f "$deb" Depends)"
same "deb conffiles" "/etc/enipeer/enipeer.toml" "$(dpkg-deb -I "$deb" conffiles)"
for s in postinst prerm postrm; do
  check "deb has a $s" dpkg-deb -I "$deb" "$s"
done

# --- install and use the .deb --------------------------------------------------------------------
if [[ $(id -u) != 0 ]]; then
  skip "install tests (need root)"
  finish
  exit
fi

if installed; then
  if [[ -e "$marker" ]]; then
    # Left over by a run that was killed before its cleanup.
    dpkg -P enipeer >/dev/null
    rm -f "$marker"
  else
    fail "enipeer is not installed before the test" \
      "this test installs and purges its own build; remove the installed one first (dpkg -P enipeer)"
    finish
    exit 1
  fi
fi
if [[ -e /etc/enipeer ]]; then
  fail "/etc/enipeer does not exist before the test" "$(ls -la /etc/enipeer)"
  finish
  exit 1
fi

touch "$marker"
# Slim images tell dpkg to skip man pages and docs; include ours so the checks see a normal host.
dpkg_i=(dpkg --path-include='/usr/share/man/man[58]/enipeer*' --path-include='/usr/share/doc/enipeer/*' -i)
if ! "${dpkg_i[@]}" "$deb" >"$work/install.log" 2>&1; then
  fail "dpkg -i" "$(cat "$work/install.log")"
  finish
  exit 1
fi
pass "dpkg -i"
contains "first install says the service is not started" "enabled, but not started" "$(cat "$work/install.log")"
contains "first install mentions enipeer keygen" "enipeer keygen /etc/enipeer/peer.key" "$(cat "$work/install.log")"
check "first install enables the unit" test -L /etc/systemd/system/multi-user.target.wants/enipeer.service

same "enipeer --version" "enipeer $version" "$(enipeer --version 2>&1)"
# The daemon and its admin commands are in section 8, the config file in 5 (man-pages(7)).
same "man -w enipeer" "/usr/share/man/man8/enipeer.8.gz" "$(man -w enipeer 2>&1)"
same "man -w 8 enipeer" "/usr/share/man/man8/enipeer.8.gz" "$(man -w 8 enipeer 2>&1)"
for sub in check keygen maintenance role run yield; do
  same "man -w enipeer-$sub" "/usr/share/man/man8/enipeer-$sub.8.gz" "$(man -w "enipeer-$sub" 2>&1)"
done
same "man -w 5 enipeer.toml" "/usr/share/man/man5/enipeer.toml.5.gz" "$(man -w 5 enipeer.toml 2>&1)"
check "enipeer(8) renders with its operator sections" sh -c \
  'out=$(man -P cat 8 enipeer 2>&1) && for s in SIGNALS "EXIT STATUS" ENVIRONMENT FILES; do
     printf "%s\n" "$out" | grep -qx "$s" || { echo "no $s in:"; echo "$out"; exit 1; }; done'
check "enipeer.toml(5) renders with a section per table" sh -c \
  'out=$(man -P cat 5 enipeer.toml 2>&1) && for s in "[node]" "[[peer]]" "[heartbeat]" "[[check]]"; do
     printf "%s\n" "$out" | grep -qxF "$s" || { echo "no $s in:"; echo "$out"; exit 1; }; done'
# groff's own warnings (a bad escape, an unknown macro) are a broken page.
for page in /usr/share/man/man8/enipeer*.8.gz /usr/share/man/man5/enipeer.toml.5.gz; do
  if out=$(man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null) && [[ -z "$out" ]]; then
    pass "$(basename "$page") renders without a groff warning"
  else
    fail "$(basename "$page") renders without a groff warning" "$out"
  fi
done
check "troubleshooting guide is installed" test -s /usr/share/doc/enipeer/troubleshooting.md
same "conffile mode and owner" "640 root:root" "$(stat -c '%a %U:%G' /etc/enipeer/enipeer.toml)"
check "bash completion loads" bash -c \
  'source /usr/share/bash-completion/completions/enipeer && complete -p enipeer'

# The shipped example is complete except for the key, which the operator creates.
set +e
out=$(enipeer check -c /etc/enipeer/enipeer.toml 2>&1)
rc=$?
set -e
same "check of the shipped example exits 78 (EX_CONFIG)" "78" "$rc"
contains "check of the shipped example names auth.key-file" "auth.key-file" "$out"
check "enipeer keygen /etc/enipeer/peer.key" enipeer keygen /etc/enipeer/peer.key
same "key file mode" "600" "$(stat -c '%a' /etc/enipeer/peer.key)"
check "check of the shipped example with a key exits 0" enipeer check -c /etc/enipeer/enipeer.toml

if command -v systemd-analyze >/dev/null; then
  # verify only warns (exit 0) about many mistakes, such as an unknown key or a bad value, so
  # any output at all fails the test.
  if out=$(systemd-analyze verify /lib/systemd/system/enipeer.service 2>&1) && [[ -z "$out" ]]; then
    pass "systemd-analyze verify accepts the unit without a warning"
  else
    fail "systemd-analyze verify accepts the unit without a warning" "$out"
  fi
else
  skip "systemd-analyze verify (not installed)"
fi

# The lab runs the installed binary: a failover and a yield through the Elastic IP, with the
# package's /usr/bin/enipeer on both instances (the e2e test binary is already built by make test).
if [[ $(id -u) -eq 0 ]] && command -v nginx >/dev/null; then
  if ENIPEER_LAB_BIN=/usr/bin/enipeer cargo test --quiet --test e2e demo -- --ignored --nocapture \
      >"$work/lab.log" 2>&1; then
    pass "lab demo with the installed /usr/bin/enipeer"
  else
    fail "lab demo with the installed /usr/bin/enipeer" "$(tail -n 40 "$work/lab.log")"
  fi
else
  skip "lab demo with the installed package (needs root and nginx)"
fi

# Reinstall (dpkg runs the upgrade path: $2 is set): an edited conffile is kept without a prompt.
printf '# edited by the package test\n' >>/etc/enipeer/enipeer.toml
if "${dpkg_i[@]}" "$deb" >"$work/reinstall.log" 2>&1 </dev/null; then
  pass "reinstall (upgrade path)"
else
  fail "reinstall (upgrade path)" "$(cat "$work/reinstall.log")"
fi
check "reinstall keeps the edited conffile" grep -q 'edited by the package test' /etc/enipeer/enipeer.toml
if grep -q 'not started' "$work/reinstall.log"; then
  fail "reinstall does not repeat the first-install message" "$(cat "$work/reinstall.log")"
else
  pass "reinstall does not repeat the first-install message"
fi

if dpkg -r enipeer >"$work/remove.log" 2>&1; then pass "dpkg -r"; else fail "dpkg -r" "$(cat "$work/remove.log")"; fi
check "remove deletes the binary" test ! -e /usr/bin/enipeer
check "remove keeps /etc/enipeer/enipeer.toml" test -f /etc/enipeer/enipeer.toml
check "remove keeps the key" test -f /etc/enipeer/peer.key
check "remove masks the unit until a reinstall" test -L /etc/systemd/system/enipeer.service

# Reinstall after remove: the admin's config and enablement come back, the mask goes.
if "${dpkg_i[@]}" "$deb" >"$work/reinstall2.log" 2>&1 </dev/null; then
  pass "reinstall after remove"
else
  fail "reinstall after remove" "$(cat "$work/reinstall2.log")"
fi
check "reinstall after remove unmasks the unit" test ! -L /etc/systemd/system/enipeer.service
check "reinstall after remove keeps it enabled" test -L /etc/systemd/system/multi-user.target.wants/enipeer.service
check "reinstall after remove keeps the edited conffile" grep -q 'edited by the package test' /etc/enipeer/enipeer.toml

if dpkg -P enipeer >"$work/purge.log" 2>&1; then pass "dpkg -P"; else fail "dpkg -P" "$(cat "$work/purge.log")"; fi
rm -f "$marker"
check "purge deletes /etc/enipeer/enipeer.toml" test ! -e /etc/enipeer/enipeer.toml
check "purge deletes /etc/enipeer" test ! -e /etc/enipeer
check "purge removes the enablement symlink" test ! -L /etc/systemd/system/multi-user.target.wants/enipeer.service
check "purge leaves no mask behind" test ! -L /etc/systemd/system/enipeer.service
if installed; then fail "the package is gone after purge" "$(dpkg -s enipeer)"; else pass "the package is gone after purge"; fi

finish
