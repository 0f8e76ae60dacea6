"""Train PPO or SAC with continual backprop on a non-stationary MuJoCo task (see ``python train.py --help``)."""

import sys

from agents.training import main

if __name__ == "__main__":
    sys.exit(main())
