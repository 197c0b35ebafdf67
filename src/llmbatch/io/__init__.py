"""Files: input line formats, the results journal, the response cache."""
