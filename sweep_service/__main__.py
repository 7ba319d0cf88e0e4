import sys

from sweep_service.cli import main

sys.exit(main())
