"""The data side of the ``vascular_age`` regression task.

ECG features + demographics (+ risk factors for the synthetic cohort) -> vascular age in
years. Modules:

* :mod:`clinlm.vascular.framingham` -- Framingham 2008 general CVD risk and vascular age;
* :mod:`clinlm.vascular.ecg` -- the one 12-lead ECG feature extractor (real and simulated);
* :mod:`clinlm.vascular.synthetic` -- the offline default cohort with simulated ECGs;
* :mod:`clinlm.vascular.ptbxl` -- PTB-XL loader (real recordings, age as target);
* :mod:`clinlm.vascular.csvsource` -- a user's own CSV of ECG features and a target;
* :mod:`clinlm.vascular.statements` -- the method table (``id, group, statement, label,
  f_*``);
* :mod:`clinlm.vascular.render` -- fast ECG-paper images for vision-language models.
* :mod:`clinlm.vascular.task` -- the task behind the generic stages (``VascularAgeTask``,
  its download/statements config models, ``render_images``).

Submodules are imported lazily by their users (neurokit2 is slow to import).
"""
