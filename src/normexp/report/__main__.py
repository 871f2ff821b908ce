"""`python -m normexp.report`."""

import sys

from normexp.report.command import main

main(sys.argv[1:])
