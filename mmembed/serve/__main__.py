import sys

from mmembed.commands.serve import main

sys.exit(main())
