"""Building blocks the adaptation methods share (pure torch: no I/O, no printing, no host syncs).

- :mod:`.pseudo`: reliability of pseudo-labels against proxies, label counts, class balance;
- :mod:`.metric`: the metric network M, its proxies and the proxy losses (decisions 2-4);
- :mod:`.mixing`: MOCM, metric-guided online ClassMix (decision 7);
- :mod:`.augment`: strong photometric augmentation of the student's input (decision 7);
- :mod:`.ema`: the teacher as an EMA of the student (decision 8);
- :mod:`.norm`: BatchNorm re-estimation (decision 0, AdaBN) and tent's parameters;
- :mod:`.collective`: what a step needs from other data-parallel processes.
"""
