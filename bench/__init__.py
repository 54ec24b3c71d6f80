"""sluice's benchmark suite (issue 10): ``python -m bench [--quick]``.

Every number it prints is measured against baselines taken in the same run, on the same
broker and the same pre-loaded topic, because the machine (2 cores, shared with other
engineers' tests) is too noisy for absolute numbers to mean much across runs. Variants run
interleaved (A1 B1 C1 ... A2 B2 C2 ...) so that a burst of outside load hits all of them
alike, and medians are reported with the min-max range next to them.
"""
