"""The synthetic benchmark: a procedural domain-shift dataset, its cached assets, and ``stvm demo``.

Apart from the code that reads users' frames (:mod:`stvm_sdk.data`): a user adapting their own
model never needs this package, but the demo, the benchmarks and the tests do.

- :mod:`.render`: the street-scene renderer (domains differ in style, lighting, weather, sensor);
- :mod:`.dataset`: frames and labels written in the Cityscapes layout (``stvm synth``);
- :mod:`.cache`: generated domains and trained source/oracle models, cached for reuse;
- :mod:`.demo`: ``stvm demo``, every stage of the SDK on this benchmark.
"""
