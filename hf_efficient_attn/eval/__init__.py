"""Evaluation of a model against its patched versions: perplexity, WER/CER, top-1 accuracy.

One module per job:

- `perplexity`: strided and whole-document perplexity of causal language models.
- `error_rates` (with the `evaluate` metric script `error_rate_metric`): WER and CER after Whisper's
  English normalizer and raw.
- `audio`, `speech`: reading and checking audio; transcription with Whisper's ``generate()``.
- `vision`: top-1 accuracy of image classifiers.
- `data`: local files and folders (or a Hub dataset) as a `datasets.Dataset` of a known layout;
  `sources` tells a local path from a Hub name.
- `models`: a checkpoint, its task and its tokenizer / feature extractor / image processor.
- `tasks`: the evaluation function of a task, ready to run on any patched version of a model.
- `compare`: the unpatched model against variant configurations, timed and memory-measured.
- `report`: a comparison as JSON, Markdown and a quality-against-speed plot.
- `defaults`: the default model and data of each task, from the package's assets.
- `cli`: the ``hf-efficient-attn eval`` command.
- `results` (`Score`) and `errors` (`EvalInputError`): what evaluations return and raise.

Heavy dependencies (``datasets``, ``evaluate``, ``soundfile``, ``matplotlib``) are imported by the
modules that need them, so importing this package, as the command line does, stays light.
"""
