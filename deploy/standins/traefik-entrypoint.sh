#!/bin/sh
# As the official traefik image's entrypoint: flags alone run traefik with them.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- traefik "$@"
fi
exec "$@"
