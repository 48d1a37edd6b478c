"""A folder of your own videos: the end-to-end preparation and the QA report."""
