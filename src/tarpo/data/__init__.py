"""Datasets: the synthetic reasoning task, the prompt template and the benchmark registry."""
