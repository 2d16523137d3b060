"""The input boundary: every check of what a user hands the SDK, in one package, for every command.

- :mod:`.sniff`: what a file *is* (checkpoint, TorchScript, pickle, ONNX, ...) from its first bytes,
  before anything parses or unpickles it;
- :mod:`.frames`: which image files are usable frames (limits on size, reasons for skipping);
- :mod:`.labels`: label ids against the model's classes;
- :mod:`.outputs`: where the SDK may write (folders it made, never over an input) and atomic writes;
- :mod:`.names`: the names of per-frame output files (one per frame, never shared);
- :mod:`.fingerprint`: content fingerprints of a run's inputs, so a resume can check them;
- :mod:`.args`: devices, ``HxW`` sizes and named choices;
- :mod:`.fields`: the fields of every file the SDK reads (types, ranges, finiteness, lengths).

A problem the user can fix raises a :class:`~stvm_sdk.errors.StvmError` whose message is one line
that says what to fix; a frame that cannot be used is skipped and counted with its reason instead.
"""
