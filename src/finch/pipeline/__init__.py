"""One module per DVC stage; see finch.pipeline.common for what they share."""
