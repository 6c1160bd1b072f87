import sys

from torch.distributed.elastic.multiprocessing.errors import record

from .tools.cli import main

# record: under torchrun, a rank's exception (with its traceback) goes into torchrun's failure report
sys.exit(record(main)())
