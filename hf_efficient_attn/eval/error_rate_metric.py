"""An `evaluate` metric script: corpus-level word and character error rates, loadable offline.

``evaluate.load("wer")`` fetches its script from the Hugging Face Hub. This file is a script of the
same kind shipped inside the package, so ``evaluate.load(<path of this file>)`` works without a
network (`error_rates.error_rates` does that). Both rates are corpus-level, computed by ``jiwer``: the
edits (substitutions + deletions + insertions) of all pairs over the total length of the references,
in words for WER and in characters, spaces included, for CER.
"""

import datasets
import evaluate
import jiwer


class ErrorRates(evaluate.Metric):
    """WER and CER of predicted transcripts against reference transcripts."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: list of transcripts; references: list of reference transcripts.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"wer": jiwer.wer(references, predictions), "cer": jiwer.cer(references, predictions)}
