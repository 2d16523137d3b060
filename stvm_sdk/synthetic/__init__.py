"""The synthetic benchmark's data: a procedural domain-shift dataset and its cached assets.

Apart from the code that reads users' frames (:mod:`stvm_sdk.data`): a user adapting their own
model never needs this package; the demo (:mod:`stvm_sdk.demo`), the benchmarks, the tests and
export's default verification frames do.

- :mod:`.render`: the street-scene renderer (domains differ in style, lighting, weather, sensor);
- :mod:`.dataset`: frames and labels written in the Cityscapes layout (``stvm synth``);
- :mod:`.cache`: generated domains and trained source/oracle models, cached for reuse.

``stvm demo`` lives in :mod:`stvm_sdk.demo`, above this package: it drives adaptation, export and
the benchmark, while export reads rendered frames from here (a package cannot be both below export
and above it).
"""
