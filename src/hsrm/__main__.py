import sys

from hsrm.cli import main

sys.exit(main())
