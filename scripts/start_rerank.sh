#!/bin/sh
# Start, stop and inspect a rerank-kit vLLM server. A thin wrapper around the rerank-kit CLI:
# every vLLM flag comes from rerank-kit's recipes, none is written here.
#
#   scripts/start_rerank.sh start [extra rerank-kit up options]   MODEL=... PORT=... to choose
#   scripts/start_rerank.sh stop | restart | status | tail
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
if [ -n "${RERANK_KIT:-}" ]; then
    rk=$RERANK_KIT
elif [ -x "$here/../.venv/bin/rerank-kit" ]; then
    rk=$here/../.venv/bin/rerank-kit
else
    rk=rerank-kit
fi
port=${PORT:-8000}
model=${MODEL:-}

usage() {
    echo "usage: $0 {start|stop|restart|status|tail} [rerank-kit up options]" >&2
    echo "  environment: MODEL (default: chosen for this machine), PORT (default 8000), RERANK_KIT" >&2
}

[ $# -ge 1 ] || { usage; exit 2; }
action=$1
shift

start() {
    if [ -n "$model" ]; then
        "$rk" up "$model" --port "$port" "$@"
    else
        "$rk" up --port "$port" "$@"
    fi
}

case $action in
    start) start "$@" ;;
    stop) "$rk" down --port "$port" ;;
    restart)
        "$rk" down --port "$port" 2>/dev/null || true
        start "$@"
        ;;
    status) "$rk" status --port "$port" ;;
    tail) "$rk" logs --port "$port" --follow ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac
