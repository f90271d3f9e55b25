#!/bin/sh
# Forms the Redis Cluster of the container demo's opt-in `cluster` profile, once: the one-shot
# service redis-cluster-init of docker-compose.yml runs it after every node answers.
#
#   cluster-init.sh HOST:PORT...     (six nodes: the first three become the masters)
#
# Run again (a second `docker compose up`), it changes nothing on a cluster that is formed. Nodes
# that already belong to a cluster (their nodes.conf is on their volume) are introduced to each
# other again at their current addresses instead of being created anew: a `down` then `up` may
# give the containers other addresses than the ones the nodes remember, and a node cannot look
# up a host name on the cluster bus. Either way it waits until every node reports
# `cluster_state:ok` with all 16384 slots served and is linked to every other node, and fails,
# saying why, if that does not happen within a minute.
set -eu

SETTLE_WITHIN_S=60

if [ "$#" -lt 6 ]; then
    echo "usage: $0 HOST:PORT... (six nodes)" >&2
    exit 2
fi

# The nodes' addresses: CLUSTER MEET and `redis-cli --cluster create` take IP addresses only.
addresses=""
for node in "$@"; do
    host=${node%:*}
    port=${node##*:}
    ip=$(getent hosts "$host" | awk '{ print $1; exit }')
    if [ -z "$ip" ]; then
        echo "cluster-init: cannot resolve $host" >&2
        exit 1
    fi
    addresses="$addresses $ip:$port"
done

# `field NODE NAME`: the value of NAME in the node's CLUSTER INFO.
field() {
    redis-cli -h "${1%:*}" -p "${1##*:}" CLUSTER INFO | tr -d '\r' | sed -n "s/^$2://p"
}

fresh=yes
for node in "$@"; do
    known=$(field "$node" cluster_known_nodes)
    assigned=$(field "$node" cluster_slots_assigned)
    if [ -z "$known" ]; then
        echo "cluster-init: $node does not answer CLUSTER INFO (is cluster-enabled set?)" >&2
        exit 1
    fi
    if [ "$known" != 1 ] || [ "$assigned" != 0 ]; then
        fresh=no
    fi
done

if [ "$fresh" = yes ]; then
    echo "cluster-init: creating the cluster of$addresses"
    # shellcheck disable=SC2086 # one word per node
    timeout "$SETTLE_WITHIN_S" redis-cli --cluster create $addresses \
        --cluster-replicas 1 --cluster-yes
fi

# Every node meets every node at its current address; a node that knows the other by its id
# takes the new address. Each node does, not one for all: gossip corrects only the address of a
# node that is failing, and a node that found another node answering at an old address drops
# that address (`noaddr`), which stops it from ever failing.
meet_all() {
    for from in "$@"; do
        for address in $addresses; do
            redis-cli -h "${from%:*}" -p "${from##*:}" CLUSTER MEET "${address%:*}" "${address##*:}" >/dev/null || true
        done
    done
}

if [ "$fresh" = no ]; then
    echo "cluster-init: the nodes already form a cluster; introducing them again at$addresses"
    meet_all "$@"
fi

# `settled NODE`: the node serves every slot and is linked to every other node at an address: a
# node it still looks for at an old address is failing, or without an address (`noaddr`) once
# another node answered there.
settled() {
    [ "$(field "$1" cluster_state)" = ok ] && [ "$(field "$1" cluster_slots_ok)" = 16384 ] &&
        redis-cli -h "${1%:*}" -p "${1##*:}" CLUSTER NODES |
        awk '$3 ~ /fail|noaddr|handshake/ || $8 != "connected" { bad = 1 } END { exit bad }'
}

deadline=$(($(date +%s) + SETTLE_WITHIN_S))
for node in "$@"; do
    until settled "$node"; do
        # Again while waiting: a MEET can go unanswered while a node still sorts out its links to
        # old addresses.
        if [ "$fresh" = no ]; then
            meet_all "$@"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "cluster-init: $node does not serve every slot or is not linked to every node after ${SETTLE_WITHIN_S} s:" >&2
            redis-cli -h "${node%:*}" -p "${node##*:}" CLUSTER NODES >&2 || true
            echo "cluster-init: nodes left half-formed start over with \`docker compose down -v\`" >&2
            exit 1
        fi
        sleep 1
    done
done
echo "cluster-init: every node serves all slots and is linked to the others"
redis-cli -h "${1%:*}" -p "${1##*:}" CLUSTER NODES
