"""The top of the run: suites loaded and configured (suites), their units run and cached and their tables written
(runner), checkpoint sweeps expanded and tabled (sweeps). Above the evaluators (harness.evals), which it calls;
nothing below imports it."""
