"""The figures behind the web dashboards, one module per page, free of any web framework.

Each builds the plain dict a page shows (and answers as JSON) from the rollups, the review
queue, the guards and the eval log; the web layer only parses the query and renders the dict.
"""
