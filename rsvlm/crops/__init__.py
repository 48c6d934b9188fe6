"""Image + query → crops and back: MagCrop (GeoMag).

:mod:`rsvlm.crops.tmra` composes the image at the task's granularity (Eq. 2–3) keeping its
geometry; :mod:`rsvlm.crops.attention` makes the VLM's gradient-weighted attention map (PSC,
Eq. 4) and :mod:`rsvlm.crops.box_search` finds the crop boxes in it; :class:`rsvlm.crops.magcrop.MagCrop`
puts them together as the vision-language model's ``cropper``.
"""
