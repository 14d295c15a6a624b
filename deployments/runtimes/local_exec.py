"""What supervisord runs for each local service: prepare, then exec the service's command.

Reads the service's run file (JSON, mode 0600, written by local.py) so that env values never pass
through supervisord's config syntax. For releases it first makes a fresh scratch copy, so every
start begins from the immutable release; then it runs the `before` commands and execs the command.
"""

import json
import os
import shutil
import subprocess
import sys


def main(run_file: str) -> None:
    with open(run_file) as f:
        run = json.load(f)
    env = run["env"]
    if run.get("fresh_from"):
        shutil.rmtree(run["scratch"], ignore_errors=True)
        shutil.copytree(run["fresh_from"], run["scratch"], symlinks=True)
    os.makedirs(run["cwd"], exist_ok=True)
    for command in run.get("before", []):
        result = subprocess.run(["/bin/sh", "-c", command], cwd=run["cwd"], env=env)
        if result.returncode != 0:
            print(f"diploi: preparation step failed with exit code {result.returncode}: {command}", flush=True)
            sys.exit(result.returncode)
    os.chdir(run["cwd"])
    os.execve("/bin/sh", ["/bin/sh", "-c", run["command"]], env)


if __name__ == "__main__":
    main(sys.argv[1])
