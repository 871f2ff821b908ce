"""`python -m normexp.answers` (make answers)."""

import sys

from normexp.answers.run import main

main(sys.argv[1:])
