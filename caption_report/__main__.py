"""``python -m caption_report``: see :mod:`caption_report.cli`."""

import sys

from caption_report.cli import main

sys.exit(main())
