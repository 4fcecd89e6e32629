"""On-disk face formats, one module each, all built on :mod:`jaxforget.data.source`.

* :mod:`~jaxforget.data.formats.files`: the base of the image-file formats (``FileSource``).
* :mod:`~jaxforget.data.formats.celeba`: CelebA aligned images with identities and landmarks.
* :mod:`~jaxforget.data.formats.folder`: one sub-folder per identity (ORL, LFW) or a flat folder.
* :mod:`~jaxforget.data.formats.vggface2`: VGGFace2 with loose landmarks / boxes.
* :mod:`~jaxforget.data.formats.celeba_wild`: trees of faces already aligned to the 112x112
  template (CelebA-wild's ``aligned_112/<identity>/<image>`` with ``identities.txt``).
* :mod:`~jaxforget.data.formats.cfp`: CFP frontal / profile images, their five-point landmarks
  and the ``Protocol/`` verification folds.
* :mod:`~jaxforget.data.formats.verification_bin`: InsightFace verification ``.bin`` packs.
* :mod:`~jaxforget.data.formats.recordio`: MXNet RecordIO ``.rec`` / ``.idx`` training packs.

Formats know nothing of each other; :mod:`jaxforget.data.factory` is the one place that names
them all. Layouts are described in ``docs/FORMATS.md``.
"""
