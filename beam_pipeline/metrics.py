"""The namespace of the pipeline's Beam metrics (counters such as ``images_read``,
``images_captioned``, ``rows_committed``), shared by every DoFn that counts and by
``pipeline.run``, which reads them back."""

NAMESPACE = "captioning"
