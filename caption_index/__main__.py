import sys

from caption_index.cli import main

sys.exit(main())
