import os
import sys

# Offline unless the user says otherwise (HF_HUB_OFFLINE=0, HF_DATASETS_OFFLINE=0): a hub id is read from the Hugging
# Face cache, and what is not there fails at once instead of waiting on the network. Set before huggingface_hub is
# imported (it reads them once).
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")

from torch.distributed.elastic.multiprocessing.errors import record  # noqa: E402

from .tools.cli import main  # noqa: E402

# record: under torchrun, a rank's exception (with its traceback) goes into torchrun's failure report
sys.exit(record(main)())
