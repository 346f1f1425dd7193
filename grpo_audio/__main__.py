import sys

from grpo_audio.cli import main

sys.exit(main())
