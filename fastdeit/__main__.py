import sys

from fastdeit.cli import main

sys.exit(main())
