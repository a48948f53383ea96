import sys

from openvtp.cli import main

sys.exit(main())
