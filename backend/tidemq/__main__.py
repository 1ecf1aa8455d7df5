import sys

from tidemq.cli.main import main

sys.exit(main())
