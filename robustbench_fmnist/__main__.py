import sys

from robustbench_fmnist.cli import main

sys.exit(main())
