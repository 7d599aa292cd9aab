#!/usr/bin/env bash
# Slim the working tree that travels to a lent GPU machine, and put it back afterwards.
#
# The device tool copies tracked and untracked-not-ignored files, and only under 64 MiB; this
# repository's tracked files are ~160 MB (work-in-progress weights in models/, benchmark
# pictures, the 65 MB shipped model). `slim` takes the named paths out of the index and ignores them
# locally (.git/info/exclude), so they stay on disk but do not travel; `restore` puts the index
# back from HEAD and drops those ignore lines. Nothing is committed or deleted.
#
#   scripts/device_tree.sh slim [PATH ...]   # default: models benchmarks/results docs/images
#   scripts/device_tree.sh size              # bytes that would travel (carried paths not counted)
#   scripts/device_tree.sh restore
#
# Run `restore` before committing: a commit made while slim would record the paths as deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=.git/info/exclude
STATE=.git/device_tree_paths  # the paths slimmed, one per line, for restore
cmd=${1:-}
[ $# -gt 0 ] && shift
size() {
  git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1
}
case "$cmd" in
  slim)
    paths=("$@")
    [ ${#paths[@]} -gt 0 ] || paths=(models benchmarks/results docs/images)
    for p in "${paths[@]}"; do
      p=${p%/}
      git rm -r -q --cached --ignore-unmatch -- "$p"
      echo "/$p/" >>"$EXCLUDE"
      echo "$p" >>"$STATE"
    done
    echo "slim: $(size) bytes would travel (limit 67108864, carried paths on top)"
    ;;
  size)
    echo "$(size) bytes would travel"
    ;;
  restore)
    if [ -f "$STATE" ]; then
      while read -r p; do
        git reset -q -- "$p"
        grep -v -x -F "/$p/" "$EXCLUDE" >"$EXCLUDE.tmp" || true
        mv "$EXCLUDE.tmp" "$EXCLUDE"
      done <"$STATE"
      rm "$STATE"
    fi
    echo "restored: $(size) bytes tracked and untracked"
    ;;
  -h | --help | "")
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = "" ] && exit 2 || exit 0
    ;;
  *)
    echo "device_tree.sh: unknown command '$cmd' (slim, size, restore)" >&2
    exit 2
    ;;
esac
