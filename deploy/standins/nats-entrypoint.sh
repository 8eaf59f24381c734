#!/bin/sh
# As the official nats image's entrypoint: flags alone run nats-server with them.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- nats-server "$@"
fi
exec "$@"
