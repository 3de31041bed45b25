"""
Print the dependency floors of setup.cfg as pip constraints, one a line:
C{twisted[tls,http2] >= 26.10.0, < 27} becomes C{twisted==26.10.0} (pip
constraints take no extras).  .ci/run installs them in a second virtualenv
and runs the tests there, so that every floor is one CI has run.
"""

import configparser
import re
import sys

_FLOOR = re.compile(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([^,\s;#]+)")


def main() -> int:
    config = configparser.ConfigParser()
    config.read("setup.cfg")
    floors = []
    for line in config["options"]["install_requires"].splitlines():
        requirement = line.split("#", 1)[0].strip()
        match = _FLOOR.match(requirement)
        if match:
            floors.append(f"{match.group(1)}=={match.group(2)}")
    if not floors:
        print("no floors found in setup.cfg", file=sys.stderr)
        return 1
    print("\n".join(floors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
