"""The experiment tooling: the generated shapes data set, the baselines, the ablation with its grid and report, the
benchmarks and the kernels' static budget, the GPU check, and the figures of what an upsampler learned. It builds on
the core (``carafe_ultra``); the core never imports it."""
