#!/bin/sh
# What the container sees: its stage, its database, and whether a port of this machine answers.
printf 'Content-Type: text/plain\r\n\r\n'
echo "stage=$STAGE"
echo "port=$PORT"
echo "database_address=$POSTGRES_HOST:$POSTGRES_PORT"
if nc -w 3 "$POSTGRES_HOST" "$POSTGRES_PORT" </dev/null; then echo "database=reachable"; else echo "database=unreachable"; fi
