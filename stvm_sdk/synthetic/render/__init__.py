"""Procedural street-scene generator behind :mod:`stvm_sdk.synthetic.dataset`.

Modules, in the order a frame is made: ``styles`` (what differs between domains), ``camera``
(pinhole projection onto the ground plane), ``canvas`` (painter's-algorithm drawing of material
indices, so image and label come from the same shapes), ``objects`` and ``scene`` (what is drawn
where), ``shading`` (materials and textures to RGB) and ``effects`` (lighting, weather and the
sensor). ``labels`` holds the Cityscapes id tables.
"""
