import sys

from etlora.cli import main

sys.exit(main())
