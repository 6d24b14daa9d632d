"""One module per DVC stage, named after it (``finch.pipeline.<stage>``, its work in ``run``);
:mod:`~finch.pipeline.table` lists them, :mod:`~finch.pipeline.entry` starts them,
:mod:`~finch.pipeline.paths` says where they read and write, and
:mod:`~finch.pipeline.training` is what the training stages share."""
