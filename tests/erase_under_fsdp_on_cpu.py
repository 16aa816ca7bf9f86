"""The erase command (``scripts/erase_concept.py``'s options) under FSDP on CPU processes, for tests/test_fsdp.py.

accelerate 1.16 selects FSDP for GPU processes only: a CPU process joins a launch as MULTI_CPU (gloo) and prepares
models with DDP, whatever the config says. torch's FSDP2 runs on CPU over gloo all the same, so this switches the
launch's accelerate state to FSDP, with the plugin that the launcher's environment describes (the config file's
``fsdp_config``), which is the state a GPU process of the same launch starts in; then it runs the command.

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 \\
        --mixed_precision no tests/erase_under_fsdp_on_cpu.py --pretrained_model_name_or_path ... --concept ...
"""

import sys

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from sfr_diffusion.commands.erase import cli

if __name__ == "__main__":
    if not Accelerator().use_distributed:  # joins the launch's processes over gloo
        sys.exit("Launch this with accelerate launch --num_processes 2 or more and ACCELERATE_USE_CPU=true.")
    AcceleratorState._shared_state.update(
        distributed_type=DistributedType.FSDP, fsdp_plugin=FullyShardedDataParallelPlugin()
    )
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    sys.exit(cli())
