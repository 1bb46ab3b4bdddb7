"""Input data: dataset builders, the synthetic ReID generator, sampling and the grain pipeline."""
