"""
C{python -m lbproxy}: the C{lbproxy} console script (L{lbproxy.cli}).
"""

import sys

from lbproxy.cli import main

sys.exit(main())
