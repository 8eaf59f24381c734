#!/bin/sh
# Alertmanager stand-in (Debian's 0.25). Alertmanager 0.26+ reads a webhook URL
# from a file (`url_file:`); 0.25 does not know that field. Like the official
# image, this runs alertmanager with the given flags, but first writes a copy
# of the configuration in which each `url_file: PATH` is replaced by
# `url: <content of PATH>`, and points --config.file at the copy.
set -e
config=/etc/alertmanager/alertmanager.yml
for arg in "$@"; do
    case "$arg" in --config.file=*) config="${arg#--config.file=}" ;; esac
done
copy="${TMPDIR:-/tmp}/alertmanager.yml"
python3 - "$config" "$copy" <<'PY'
import json, re, sys
src, dst = sys.argv[1], sys.argv[2]
def url(m):
    value = open(m.group(2)).read().strip()
    return f"{m.group(1)}url: {json.dumps(value)}"
text = re.sub(r"^(\s*(?:-\s+)?)url_file:\s*(\S+)\s*$", url, open(src).read(), flags=re.M)
with open(dst, "w") as f:
    f.write(text)
PY
chmod 600 "$copy"
args=""
for arg in "$@"; do
    case "$arg" in --config.file=*) ;; *) args="$args $(printf '%s' "$arg" | sed "s/'/'\\\\''/g; s/^/'/; s/\$/'/")" ;; esac
done
eval "set -- $args"
exec /usr/bin/prometheus-alertmanager --config.file="$copy" "$@"
