"""The native-sizes benchmark (`benchmarks/native.py`): its rows and models, the measuring of a cell
(forward rows in interleaved rounds, decoding rates from the steps of a generation), and the report
(targets, Markdown table, merge of runs)."""
