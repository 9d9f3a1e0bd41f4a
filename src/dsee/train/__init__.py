"""Data loading, task definitions and metrics for fine-tuning runs.

* :mod:`dsee.train.tasks` -- the table of GLUE tasks (files, columns, labels, metrics).
* :mod:`dsee.train.data` -- reading GLUE and user files, tokenisation and batching.
* :mod:`dsee.train.metrics` -- evaluation metrics (scikit-learn / scipy).
"""
