"""The import side: verify images while they flow through a pipeline.

* :mod:`~imgsign.glance.pipeline`: library calls for any import pipeline (verify staged data in
  constant memory, re-sign converted data); needs no Glance;
* :mod:`~imgsign.glance.plugin`: Glance's image-import plugins ``imgsign_verify`` and
  ``imgsign_resign``; imported only inside glance-api (it needs Glance and taskflow).
"""
