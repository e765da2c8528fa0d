"""`python -m deeptalk_eval` is the `deeptalk-eval` command."""
import sys

from deeptalk_eval.cli import main

sys.exit(main())
