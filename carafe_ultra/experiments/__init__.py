"""The experiment tooling: the generated shapes data set, the baselines, the ablation and its report, and the
benchmarks. It builds on the core (``carafe_ultra``); the core never imports it."""
