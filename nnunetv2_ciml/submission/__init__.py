"""Challenge submissions that are algorithm containers rather than folders of masks (autoPET III)."""
