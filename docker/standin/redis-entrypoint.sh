#!/bin/sh
# The official Redis image's entrypoint contract, for the Debian stand-in: arguments that start
# with `-` or name a .conf file are given to redis-server, and redis-server runs as `redis` after
# taking ownership of its data directory.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
