"""Print uv's flags for the package sources pip is configured with (pip.conf and PIP_* variables).

`make install` installs with uv (18 s here against pip's 110 s for the same ~215 packages) but must see the same
indexes, local wheel folders and constraints as pip does on the machine (an air-gapped mirror, a proxy index):
uv does not read pip's configuration, so this translates it. Anything it cannot translate makes the Makefile fall
back to plain pip."""

import shlex
import subprocess
import sys

# pip's setting -> uv's flag; pip's values may hold several entries separated by spaces
FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint", "trusted-host": None, "cert": None, "timeout": None, "default-timeout": None,
         "disable-pip-version-check": None, "no-cache-dir": None, "progress-bar": None}


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    args: list[str] = []
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in FLAGS:
            print(f"uv_args: pip setting {key!r} has no uv equivalent here", file=sys.stderr)
            return 1
        if FLAGS[name]:
            for entry in shlex.split(value)[0].split():
                args += [FLAGS[name], entry]
    # several indexes: pick the best version across all of them, as pip does (uv's default stops at the first)
    args += ["--index-strategy", "unsafe-best-match"]
    print(shlex.join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
