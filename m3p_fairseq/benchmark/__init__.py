"""Speed and memory of m3p_transformer against fairseq's own ``transformer``, side by side
(``python scripts/benchmark.py``; docs/benchmarks.md has the method and the results).

- :mod:`.configs`: what is measured (the table's rows, the settings, the tiny setting for tests);
- :mod:`.measuring`: clocks, resident memory and profiles;
- :mod:`.worker`: one round of runs in a fresh process (training, generation, feature reading);
- :mod:`.harness`: the data, the plan of rounds and the worker processes;
- :mod:`.report`: ratios, the Markdown tables and the plot;
- :mod:`.cli`: the command line of scripts/benchmark.py;
- :mod:`.image_dedup`: a micro-benchmark of the CVLM encoder on batches with repeated images
  (``python -m m3p_fairseq.benchmark.image_dedup``).
"""
