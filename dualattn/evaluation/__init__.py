"""Evaluation: the evaluator (features and scores of a model, one distance matrix each), the
protocol's metrics and their ``Scores``, re-ranking, the baselines, figures and the report."""
