"""What every benchmark script shares, one module per job:

- `environment`: the device's name, the versions and the date a run records, and its command line;
- `timing`: one run timed with CUDA events (the wall clock on the CPU), a warm call's median time;
- `attention_calls`: an attention call's forward (and backward) timed as a table cell, or why not;
- `memory`: peak memory during a block (CUDA's allocator; on the CPU the resident set, or none);
- `checks`: errors against a reference (float32 math, the unpatched model) and exceptions as table cells;
- `budget`: a run's time budget, after which entries are skipped and say so;
- `store`: results as JSON, and merging an earlier run's results entry by entry;
- `markdown`: tables, the versions line, and the marks that name the run of each merged entry;
- `plots`: curves on log axes into PNG files (matplotlib without pyplot's global state);
- `compiling`: kernels compiled in parallel child processes before timing, and dynamo's recompile limits.
"""
