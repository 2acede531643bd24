#!/usr/bin/env bash
# The team's MLflow tracking server: PostgreSQL backend store, proxied artifact store, basic auth.
#
#   deploy/team-tracking.sh init      # once: PostgreSQL cluster, databases, secrets, auth config
#   deploy/team-tracking.sh start     # PostgreSQL, then `mlflow server --app-name basic-auth`
#   deploy/team-tracking.sh stop
#   deploy/team-tracking.sh upgrade   # after upgrading mlflow: `mlflow db upgrade` (server stopped)
#   deploy/team-tracking.sh add-user NAME   # reads the new user's password from stdin
#   deploy/team-tracking.sh status
#
# Settings (environment, with defaults):
#   CAD_TEAM_HOME   /var/lib/cad-tracking  everything the server keeps: pgdata/, artifacts/,
#                                          secrets/ (0700), auth.ini, logs/
#   CAD_TEAM_HOST   127.0.0.1              where the HTTP server listens (put TLS in front of it)
#   CAD_TEAM_PORT   5000                   HTTP port of the tracking server
#   CAD_TEAM_PG_PORT 5433                  PostgreSQL port (loopback only)
#   CAD_TEAM_MLFLOW mlflow next to this repo's .venv/bin, else `mlflow` on PATH
#
# Secrets never appear on a command line, in a config file of cad or in a log: the database
# password is in secrets/pgpass (libpq reads it through PGPASSFILE), the admin password in
# secrets/admin_password (given to mlflow as MLFLOW_AUTH_ADMIN_PASSWORD on first start), the
# auth app's CSRF key in secrets/flask_key (MLFLOW_FLASK_SERVER_SECRET_KEY).
# Researchers point cad at the server with MLFLOW_TRACKING_URI=http://HOST:PORT and their
# credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

HOME_DIR=${CAD_TEAM_HOME:-/var/lib/cad-tracking}
HOST=${CAD_TEAM_HOST:-127.0.0.1}
PORT=${CAD_TEAM_PORT:-5000}
PG_PORT=${CAD_TEAM_PG_PORT:-5433}
HERE=$(cd "$(dirname "$0")/.." && pwd)
MLFLOW=${CAD_TEAM_MLFLOW:-$( [ -x "$HERE/.venv/bin/mlflow" ] && echo "$HERE/.venv/bin/mlflow" || command -v mlflow )}
PG_BIN=${CAD_TEAM_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
PGDATA="$HOME_DIR/pgdata"
SECRETS="$HOME_DIR/secrets"
DB_URI="postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow"
AUTH_URI="postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow_auth"

die() { echo "team-tracking: $*" >&2; exit 2; }

as_pg() {  # PostgreSQL refuses to run as root: run its tools as the postgres user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

new_secret() {  # 32 random bytes, hex, into a 0600 file written atomically
  local path=$1 tmp
  tmp=$(mktemp "$path.XXXXXX")
  chmod 600 "$tmp"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp"
  mv "$tmp" "$path"
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status > /dev/null 2>&1; }

start_pg() {
  pg_running && return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$HOME_DIR/logs/postgres.log" -w \
    -o "-p $PG_PORT -k $HOME_DIR/run -c listen_addresses=127.0.0.1" start > /dev/null
}

psql_admin() { as_pg "$PG_BIN/psql" -h "$HOME_DIR/run" -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -q "$@"; }

cmd_init() {
  [ -n "$PG_BIN" ] || die "PostgreSQL is not installed (Debian: apt-get install postgresql)"
  [ -e "$PGDATA/PG_VERSION" ] && die "$PGDATA already holds a cluster; use start"
  mkdir -p "$HOME_DIR"/{artifacts,logs,run} "$SECRETS"
  chmod 700 "$SECRETS"
  [ -s "$SECRETS/db_password" ] || new_secret "$SECRETS/db_password"
  [ -s "$SECRETS/admin_password" ] || new_secret "$SECRETS/admin_password"
  [ -s "$SECRETS/flask_key" ] || new_secret "$SECRETS/flask_key"  # CSRF tokens of the auth app
  install -m 600 /dev/null "$SECRETS/pgpass"
  echo "127.0.0.1:$PG_PORT:*:mlflow:$(cat "$SECRETS/db_password")" > "$SECRETS/pgpass"
  if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    chown postgres "$HOME_DIR/run" "$HOME_DIR/logs"
  else
    install -d -m 700 "$PGDATA"
  fi
  # the socket (maintenance, as the postgres OS user) by peer; TCP always with a password
  as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer \
    --auth-host=scram-sha-256 > /dev/null
  start_pg
  # SQL on stdin, so the password is never in a process's argv
  psql_admin -f - > /dev/null <<EOF
CREATE ROLE mlflow LOGIN PASSWORD '$(cat "$SECRETS/db_password")';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
EOF
  cat > "$HOME_DIR/auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $AUTH_URI
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
  echo "initialised $HOME_DIR (admin password in $SECRETS/admin_password)"
}

server_env() {
  export PGPASSFILE="$SECRETS/pgpass" MLFLOW_AUTH_CONFIG_PATH="$HOME_DIR/auth.ini"
  export MLFLOW_DISABLE_TELEMETRY=true
  MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$SECRETS/admin_password")
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$SECRETS/flask_key")
  export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
}

cmd_start() {
  [ -e "$PGDATA/PG_VERSION" ] || die "no cluster in $PGDATA; run init first"
  start_pg
  server_env
  nohup "$MLFLOW" server --backend-store-uri "$DB_URI" \
    --artifacts-destination "file://$HOME_DIR/artifacts" --serve-artifacts \
    --app-name basic-auth --host "$HOST" --port "$PORT" --workers 1 \
    > "$HOME_DIR/logs/mlflow.log" 2>&1 &
  echo $! > "$HOME_DIR/run/mlflow.pid"
  for _ in $(seq 1 240); do
    if curl -fs "http://$HOST:$PORT/health" > /dev/null 2>&1; then
      echo "MLflow at http://$HOST:$PORT (pid $(cat "$HOME_DIR/run/mlflow.pid"))"
      return 0
    fi
    kill -0 "$(cat "$HOME_DIR/run/mlflow.pid")" 2> /dev/null || break
    sleep 0.5
  done
  die "the tracking server did not come up; see $HOME_DIR/logs/mlflow.log"
}

cmd_stop() {
  if [ -s "$HOME_DIR/run/mlflow.pid" ]; then
    pkill -TERM -P "$(cat "$HOME_DIR/run/mlflow.pid")" 2> /dev/null || true
    kill "$(cat "$HOME_DIR/run/mlflow.pid")" 2> /dev/null || true
    rm -f "$HOME_DIR/run/mlflow.pid"
  fi
  if pg_running; then as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop > /dev/null; fi
}

cmd_upgrade() {
  start_pg
  server_env
  "$MLFLOW" db upgrade "$DB_URI"
}

cmd_add_user() {
  local name=${1:?usage: add-user NAME (password on stdin)} password
  IFS= read -r password
  [ ${#password} -ge 12 ] || die "choose a password of at least 12 characters"
  server_env
  # the auth app's REST API, authenticated as admin; passwords travel in the body, not argv
  NAME=$name PASSWORD=$password URL="http://$HOST:$PORT" "$(dirname "$MLFLOW")/python" - <<'PY'
import os
from mlflow.server.auth.client import AuthServiceClient
os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
os.environ["MLFLOW_TRACKING_PASSWORD"] = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
AuthServiceClient(os.environ["URL"]).create_user(os.environ["NAME"], os.environ["PASSWORD"])
print(f"user {os.environ['NAME']} created")
PY
}

cmd_status() {
  pg_running && echo "PostgreSQL: running on 127.0.0.1:$PG_PORT" || echo "PostgreSQL: stopped"
  curl -fs "http://$HOST:$PORT/health" > /dev/null 2>&1 && echo "MLflow: http://$HOST:$PORT" || echo "MLflow: down"
}

case "${1:-}" in
  init) cmd_init ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  upgrade) cmd_upgrade ;;
  add-user) shift; cmd_add_user "$@" ;;
  status) cmd_status ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
