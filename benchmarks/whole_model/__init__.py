"""The whole-model benchmark (`benchmarks/end_to_end.py`), one module per job:

- `rows`: the configurations compared (the tables' rows) and the options of ours on each model;
- `family`, `llama`, `whisper`, `vit`: each model, built at a length with random weights, fed and scored;
- `switching`: a model switched to a row (an attention implementation, a patch), training mode, fp32 runs;
- `checks`: every row's output against an fp32 run of its reference, before anything is timed;
- `budget`: the run's clock, and the runs skipped because they could not finish in it;
- `prefill_train`: a prefill or training step timed at one length;
- `generation`: greedy decoding, tokens/s, cache size and peak memory per stretch;
- `warmup`: kernels compiled in child processes first;
- `merging`, `report`, `plots`: partial runs merged, the Markdown, the PNG curves;
- `cli`: the command line.
"""

from __future__ import annotations

from benchmarks.whole_model.family import Family
from benchmarks.whole_model.llama import Llama
from benchmarks.whole_model.vit import ViT
from benchmarks.whole_model.whisper import Whisper

FAMILIES: dict[str, type[Family]] = {"llama": Llama, "whisper": Whisper, "vit": ViT}
"""The models, by the name ``--models`` takes."""
