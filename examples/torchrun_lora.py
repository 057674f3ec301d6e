"""Data-parallel LoRA training: the same fit code, launched on several processes.

    torchrun --nproc_per_node=2 examples/torchrun_lora.py        # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 examples/torchrun_lora.py        # 8 GPUs on one machine (nccl)
    accelerate launch examples/torchrun_lora.py                  # with an accelerate config

Only rank 0 writes the saved adapter.
"""

import os

from _common import FAST, encoder, sentiment_data

import promptkit as pk

train, _ = sentiment_data(train=512)
task = pk.Task.classification(["negative", "positive"], template="sentiment")
lora = pk.create_adapter("lora", model=encoder(), task=task, epochs=5 if FAST else 1,
                         batch_size=16, max_length=64, learning_rate=5e-4 if not FAST else 1e-2)
result = lora.fit(train)
lora.save("runs/torchrun-lora")
print(f"rank {os.environ.get('RANK', '0')}: loss {result.initial_loss:.3f} -> "
      f"{result.train_loss:.3f}")
