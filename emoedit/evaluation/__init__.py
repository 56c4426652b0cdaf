"""The evaluation harness (issue 7, METHOD.md §6): every method and ablation on the synthetic world.

- :mod:`.splits` — the evaluation sets (seen subjects = Table 1, unseen subjects, unseen views);
- :mod:`.methods` — the registry: ours, the ablations, the baselines, the references;
- :mod:`.scoring` — per-item metrics (the paper's four + the world's exact ones);
- :mod:`.harness` — :func:`~emoedit.evaluation.harness.run_evaluation`: resumable loop, aggregation;
- :mod:`.tables` — markdown tables shaped like Tables 1 and 2 with the ordering check;
- :mod:`.config` / :mod:`.command` — ``EvaluateConfig`` and ``emoedit evaluate``.
"""
