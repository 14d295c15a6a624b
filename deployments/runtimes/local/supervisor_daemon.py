"""supervisord itself, with one change: its HTTP channel writes up to 1 MiB at a time instead of 4 KiB.

Each pass of supervisord's loop looks at every process's pipes, and its answer to getAllProcessInfo is about
1 KiB per process: sent 4 KiB per pass, the answer cost passes × processes — quadratic. With 1,000
processes one call took 2 s of supervisord's CPU; with this, 0.05 s (bench/provision.py, docs/benchmarks.md).

Run as `python supervisor_daemon.py <supervisord's own arguments>` (see `supervisord_command`).
"""

import sys

from supervisor import http, supervisord

http.deferring_http_channel.ac_out_buffer_size = 1 << 20

if __name__ == "__main__":
    sys.exit(supervisord.main())
