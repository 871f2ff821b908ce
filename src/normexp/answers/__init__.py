"""`make answers`: every question's preset on Fashion-MNIST over 5 seeds or more, the claim it tests and the
verdict the data gives, and the stable-learning-rate search for none, bn, ln and gn. Writes docs/answers.md
whole (one section per question, the figures beside it in docs/answers/) and rewrites README's summary table
(between the two markers below), one row per question linking to its section; table and page come from the
same verdicts, so they always agree.

    python -m normexp.answers                                 # all presets and the search (make answers)
    python -m normexp.answers --only convergence --set trainer.max_epochs=2 --set dataset=digits
    python -m normexp.answers --from-runs                     # judge the stored sweeps again, train nothing

Seeds: each preset runs --seeds seeds (5); when its verdict is inconclusive and the observed spread says that
at most --max-seeds (20) would decide, it runs the seeds up to that number once more and is judged once, on
all of them (the second sweep's parent run has tag EXTENDS). Seeds are added after all first rounds, the
cheapest first, while their estimated time fits in --budget minutes (120). The verdicts are
normexp.analysis.verdicts.

questions.py: the questions and each one's answer from its stored sweeps; run.py: the command (its sweeps,
the seeds added, the budget); page.py: docs/answers.md and README's summary table.
"""
