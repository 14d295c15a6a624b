# Each line says whether one way out of this deployment reached its target. The targets come from
# the test, as env vars: P_DATA (the platform's data directory), P_DB (its database file), P_OTHER
# (another deployment's folder), P_PID (a process of the platform), P_REDIS_PORT and P_WEB_PORT (ports
# the platform listens on), P_OTHER_REDIS_PORT (another deployment's add-on), P_UDP_PORT (a UDP
# service of the machine) and P_FREE_UDP_PORT (a UDP port nobody holds, to take); 169.254.169.254:80
# stands for a cloud's metadata service.
where=$1
if [ "$where" = build ] && [ -n "$P_SLOW_BUILD" ]; then sleep "$P_SLOW_BUILD"; fi
check() {
  name=$1; shift
  if "$@" >/dev/null 2>&1; then echo "$where $name: reached"; else echo "$where $name: refused"; fi
}
check secret_key cat "$P_DATA/secret_key"
check encryption_key cat "$P_DATA/encryption_key"
check database cat "$P_DB"
check list_deployments sh -c 'ls "$P_DATA/deployments" | grep -qx "$(basename "$P_OTHER")"'
check other_deployment ls "$P_OTHER"
check other_run_file cat "$P_OTHER/run/web.json"
check other_storage ls "$P_OTHER/storage/redis"
check platform_environ cat "/proc/$P_PID/environ"
check platform_signal kill -0 "$P_PID"
check write_outside touch "$P_DATA/pwned-$where"
check host_shadow cat /etc/shadow
check supervisor_socket sh -c 'ls /tmp/diploi-*.sock'
tcp() { python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()' "$1" "$2"; }
check platform_redis tcp 127.0.0.1 "$P_REDIS_PORT"
check platform_web tcp 127.0.0.1 "$P_WEB_PORT"
check other_addon tcp 127.0.0.1 "$P_OTHER_REDIS_PORT"
check cloud_metadata tcp 169.254.169.254 80
check udp python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"ping", ("127.0.0.1", int(sys.argv[1])))
sys.exit(0 if s.recv(16) == b"pong" else 1)' "$P_UDP_PORT"
check udp_bind python3 -c '
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("0.0.0.0", int(sys.argv[1])))' "$P_FREE_UDP_PORT"
# its own add-on, through the address it was given: this one must answer (once it has started; a
# first build runs before the add-ons do)
own_port=$(echo "$REDIS_URL" | sed 's/.*:\([0-9]*\)\/.*/\1/')
[ "$where" = build ] || check own_addon python3 -c '
import socket, sys, time
for _ in range(40):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)' "$own_port"
echo "$where done"
